"""How much of a generated text copies the corpus.

`copied`: the text equals a corpus line. `near_copy`: it equals one once case, spacing and
surrounding punctuation are ignored (`text_key`). `novelty`: the share of its n-character
substrings (n = 20 by default) that appear nowhere in the corpus. The index keeps 64-bit hashes
of every n-gram (8 bytes each) in a few sorted runs, and line hashes for exact and near copies.

The runs make adding lines cheap as the corpus grows (a log-structured merge): new hashes are
one small sorted run, and runs of similar size are merged, so each run is at least twice the
size of the next and a hash is merged again only O(log n) times. Adding a few lines to an index
of millions of n-grams therefore never copies or sorts the whole index; a lookup searches each
of the at most log2(n) runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

BASE = np.uint64(1_000_003)


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Polynomial hashes (mod 2**64) of every n-character window of `text`."""
    if len(text) < n:
        return np.empty(0, np.uint64)
    codes = _codepoints(text) + np.uint64(1)
    powers = BASE ** np.arange(n - 1, -1, -1, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(codes, n)
    with np.errstate(over="ignore"):
        return (windows * powers).sum(axis=1, dtype=np.uint64)


def _line_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def text_key(text: str) -> str:
    """A text with case, runs of spaces and the punctuation around it ignored: 'Fix  typo.'
    and 'fix typo' share a key. Finds copies that differ only in such details."""
    return " ".join(text.casefold().split()).strip(PUNCTUATION_AROUND)


PUNCTUATION_AROUND = " .,;:!?'\"-_()[]{}<>*~`"


class NoveltyIndex:
    def __init__(self, n: int = 20) -> None:
        self.n = n
        self._runs: list[np.ndarray] = []  # sorted, without repeats; sizes at least halve
        self._lines: set[bytes] = set()
        self._keys: set[bytes] = set()  # _line_key of each line's text_key

    @classmethod
    def from_lines(cls, lines: Iterable[str], n: int = 20) -> NoveltyIndex:
        index = cls(n)
        index.add(lines)
        return index

    @property
    def nbytes(self) -> int:
        """Memory held by the n-gram hashes (the line set adds about 100 bytes a line)."""
        return sum(run.nbytes for run in self._runs)

    def add(self, lines: Iterable[str]) -> None:
        hashes = []
        for line in lines:
            self._lines.add(_line_key(line))
            self._keys.add(_line_key(text_key(line)))
            hashes.append(ngram_hashes(line, self.n))
        new = _unique_sorted(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64)
        if new.size == 0:
            return
        runs = [*self._runs, new]
        while len(runs) > 1 and runs[-2].size <= 2 * runs[-1].size:
            last = runs.pop()
            runs.append(_merge(runs.pop(), last))
        self._runs = runs  # one assignment: a score() in another thread sees old or new runs

    def score(self, text: str) -> tuple[bool, float]:
        """(copied, novelty). A text shorter than n is fully novel unless it is a copy."""
        copied = _line_key(text) in self._lines
        hashes = ngram_hashes(text, self.n)
        if hashes.size == 0:
            return copied, 0.0 if copied else 1.0
        seen = np.zeros(hashes.size, bool)
        for run in self._runs:
            found = np.minimum(np.searchsorted(run, hashes), run.size - 1)
            seen |= run[found] == hashes
        return copied, float(1.0 - seen.mean())

    def near_copy(self, text: str) -> bool:
        """Whether the text equals a corpus line but for case, spacing and outer punctuation."""
        return _line_key(text_key(text)) in self._keys

def _unique_sorted(hashes: np.ndarray) -> np.ndarray:
    hashes = np.sort(hashes)
    return _drop_repeats(hashes)


def _merge(older: np.ndarray, newer: np.ndarray) -> np.ndarray:
    """Two sorted runs as one, without repeats. A stable sort of two sorted runs is a linear
    merge (np.unique would hash everything again: about 7 s for the 6M n-grams of 100k lines)."""
    return _drop_repeats(np.sort(np.concatenate([older, newer]), kind="stable"))


def _drop_repeats(ordered: np.ndarray) -> np.ndarray:
    keep = np.empty(ordered.size, bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
