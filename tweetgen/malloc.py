"""glibc malloc in the long-running daemon: few arenas, and free memory given back.

glibc gives each thread that allocates its own malloc arena, up to eight per core. TensorFlow's
and the scheduler's threads then each keep freed memory in their own arena, and the daemon's RSS
grows over weeks: a 1,000-job soak (bench/soak.py) grew ~2 MB per 100 jobs plus steps of ~50 MB,
and with two arenas it grew 0.7 MB per 100 jobs. The daemon sets the limit itself, before
TensorFlow starts its threads, so a user need not know about it. Steps remained (one of +53 MB
after 224 jobs, then flat): memory freed inside an arena's heap that glibc keeps, which
`release_free_memory` (malloc_trim, on every heartbeat) hands back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

DAEMON_ARENAS = 2
M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas(arenas: int = DAEMON_ARENAS) -> bool:
    """Cap glibc malloc at `arenas` arenas for the threads that allocate from now on.

    Returns False (and changes nothing) where the C library is not glibc, or where the user set
    MALLOC_ARENA_MAX: glibc already applied theirs at start and it wins."""
    if os.environ.get("MALLOC_ARENA_MAX") or not _is_glibc():
        return False
    try:
        return bool(_glibc().mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError) as exc:
        log.warning("could not limit malloc arenas (%s): memory may grow slowly over weeks", exc)
        return False


def release_free_memory() -> bool:
    """Give the memory malloc holds free, in every arena, back to the system (glibc's
    malloc_trim(0): free pages inside the heaps too, not only at their tops). A few ms; False
    where the C library is not glibc."""
    if not _is_glibc():
        return False
    try:
        _glibc().malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


@functools.cache
def _is_glibc() -> bool:
    return platform.libc_ver()[0] == "glibc"  # reads the Python binary: once per process


@functools.cache
def _glibc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
