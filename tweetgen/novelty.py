"""How much of a generated text copies the corpus.

`copied`: the text equals a corpus line. `near_copy`: it equals one once case, spacing and
surrounding punctuation are ignored (`text_key`). `novelty`: the share of its n-character substrings
(n = 20 by default) that appear nowhere in the corpus. The index keeps a sorted array of 64-bit
hashes of every n-gram (8 bytes each), built with numpy, and line hashes for exact copies.
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
        self._ngrams = np.empty(0, np.uint64)
        self._lines: set[bytes] = set()
        self._keys: set[bytes] = set()  # _line_key of each line's text_key

    @classmethod
    def from_lines(cls, lines: Iterable[str], n: int = 20) -> NoveltyIndex:
        index = cls(n)
        index.add(lines)
        return index

    def add(self, lines: Iterable[str]) -> None:
        parts = [self._ngrams]
        for line in lines:
            self._lines.add(_line_key(line))
            self._keys.add(_line_key(text_key(line)))
            parts.append(ngram_hashes(line, self.n))
        # Sort the new hashes, merge them into the sorted index (a stable sort of two sorted runs
        # is a linear merge), drop repeats. np.unique would hash the whole index again at every
        # add: about 7 s for the 6M n-grams of 100k lines, paid at every daemon start.
        new = np.sort(np.concatenate(parts[1:])) if len(parts) > 1 else parts[0][:0]
        merged = np.sort(np.concatenate([self._ngrams, new]), kind="stable")
        keep = np.empty(merged.size, bool)
        keep[:1] = True
        np.not_equal(merged[1:], merged[:-1], out=keep[1:])
        self._ngrams = merged[keep]

    def score(self, text: str) -> tuple[bool, float]:
        """(copied, novelty). A text shorter than n is fully novel unless it is a copy."""
        copied = _line_key(text) in self._lines
        hashes = ngram_hashes(text, self.n)
        if hashes.size == 0:
            return copied, 0.0 if copied else 1.0
        found = np.searchsorted(self._ngrams, hashes)
        found = np.minimum(found, max(self._ngrams.size - 1, 0))
        seen = self._ngrams[found] == hashes if self._ngrams.size else np.zeros(hashes.size, bool)
        return copied, float(1.0 - seen.mean())

    def near_copy(self, text: str) -> bool:
        """Whether the text equals a corpus line but for case, spacing and outer punctuation."""
        return _line_key(text_key(text)) in self._keys
