"""The generators' corpus index (novelty + default seeds): memory, and the cost of following appends.

    .venv/bin/python -m bench.corpus_index [--lines 100000] [--append 100]   (about 20 s)

Builds a corpus of `--lines` varied lines in a temp folder, indexes it once (what a daemon's
first generate job does), then appends `--append` lines and updates the index (what each later
generate job does). Baseline, measured in the same run: what each generate job did before
(default seeds counted over the whole corpus, and the appended n-grams merged by copying and
sorting the whole n-gram array). Prints the index's memory: with `daemon --http` one index is
shared by the daemon's generate job and the server's generator, so it is paid once per process.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[0:0] = [str(REPO)]

from tweetgen import corpus  # noqa: E402
from tweetgen.corpus_index import CorpusIndex  # noqa: E402
from tweetgen.novelty import ngram_hashes  # noqa: E402

WORDS = ("the a cat dog sat ran on in over under big small red blue fast slow quick brown fox jumps "
         "lazy hen mat log sun rain sea city night day old new man woman child tree house road").split()


def lines(count: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + f" {i}"
            for i in range(count)]


def timed(func) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def old_generate_job_work(path: Path, ngrams: np.ndarray, appended: list[str], n: int) -> None:
    """The baseline: seeds from a read of the whole corpus, then the old novelty add (every
    n-gram array copied and sorted again with the new ones)."""
    stream = (line for batch in corpus.iter_batches(path) for line in batch.lines)
    corpus.common_first_words(stream, 4)
    new = np.sort(np.concatenate([ngram_hashes(line, n) for line in appended]))
    merged = np.sort(np.concatenate([ngrams, new]), kind="stable")
    keep = np.empty(merged.size, bool)
    keep[:1] = True
    np.not_equal(merged[1:], merged[:-1], out=keep[1:])
    merged[keep]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--append", type=int, default=100)
    parser.add_argument("--ngram", type=int, default=20)
    parser.add_argument("--trace-memory", action="store_true",
                        help="also the memory the index holds (tracemalloc: ~6x slower)")
    args = parser.parse_args(argv)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="bench-corpus-index-") as tmp:
        path = Path(tmp) / "corpus.txt"
        corpus.append_lines(path, lines(args.lines, rng))
        size_mb = path.stat().st_size / 1e6
        index = CorpusIndex(path, args.ngram)
        before = rss_bytes()
        if args.trace_memory:
            tracemalloc.start()
        first = timed(index.update)
        held = rss_bytes() - before
        traced = tracemalloc.get_traced_memory()[0] if args.trace_memory else None
        tracemalloc.stop()
        ngrams = np.concatenate(index.novelty._runs)  # the old index: one sorted array
        appended = lines(args.append, rng)
        corpus.append_lines(path, appended)
        old = timed(lambda: old_generate_job_work(path, ngrams, appended, args.ngram))
        follow = timed(index.update) + timed(lambda: index.common_first_words(4))
        distinct = index.novelty.nbytes // 8
    print(f"corpus: {args.lines:,} lines, {size_mb:.1f} MB; n-gram size {args.ngram}")
    print(f"index memory, one per process (RSS growth)     {held / 1e6:8.1f} MB "
          f"({distinct:,} n-grams: {index.novelty.nbytes / 1e6:.1f} MB; the rest line hashes, first words)")
    if traced is not None:
        print(f"index memory, held (tracemalloc)              {traced / 1e6:8.1f} MB")
    print(f"first index (a daemon's first generate job)   {first:8.2f} s")
    print(f"each later generate job after a {args.append}-line append:")
    print(f"  now: read the append, merge small runs      {follow * 1000:8.1f} ms")
    print(f"  before: whole corpus read, whole index sort {old * 1000:8.1f} ms")
    print(f"  ratio (before / now)                        {old / max(follow, 1e-9):8.0f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
