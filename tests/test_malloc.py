"""The daemon's malloc arena limit: counted with glibc's own malloc_stats in a fresh process."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from tweetgen.malloc import limit_malloc_arenas

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# Eight threads alive at once, each allocating: glibc gives each its own arena up to the limit.
COUNT_ARENAS = textwrap.dedent("""
    import ctypes, sys, threading
    from tweetgen.malloc import limit_malloc_arenas
    print(limit_malloc_arenas() if sys.argv[1] == "limit" else "-", flush=True)
    ready = threading.Barrier(8)
    def allocate():
        kept = [bytearray(1000) for _ in range(10)]
        ready.wait()
    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    ctypes.CDLL("libc.so.6").malloc_stats()
""")


def arenas_used(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run([sys.executable, "-c", COUNT_ARENAS, mode], capture_output=True,
                          text=True, env=environ, check=True)
    return done.stdout.strip(), sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_the_limit_caps_the_arenas_of_threads_started_after_it():
    assert arenas_used("limit") == ("True", 2)
    said, unlimited = arenas_used("none")
    assert unlimited > 2  # without it every thread gets its own arena: the count above means it


def test_a_users_malloc_arena_max_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
    assert arenas_used("limit", MALLOC_ARENA_MAX="4") == ("False", 4)


# One thread allocates 200 MB in small pieces and keeps every hundredth: the rest is free, yet
# held in its arena's heap, until malloc_trim hands the free pages back.
FRAGMENT = textwrap.dedent("""
    import sys, threading
    from tweetgen.malloc import release_free_memory
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    kept = []
    def allocate():
        pieces = [bytearray(1000) for _ in range(200000)]
        kept.extend(pieces[::100])
    thread = threading.Thread(target=allocate)
    thread.start(); thread.join()
    before = rss_mb()
    print(release_free_memory(), before, rss_mb())
""")


def test_release_free_memory_hands_freed_heap_pages_back():
    done = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True)
    released, before, after = done.stdout.split()
    assert released == "True"
    assert float(before) - float(after) > 100, (before, after)
