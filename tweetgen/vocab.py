"""The character vocabulary: reserved ids, encode/decode, saved with every checkpoint.

The vocabulary is fixed when a model is first built. Unknown characters never change tensor
shapes: they map to <unk> and are counted. Growing it is an explicit operation (`grown`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PAD, EOS, UNK = 0, 1, 2
RESERVED = ("<pad>", "<eos>", "<unk>")


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]  # id = index + len(RESERVED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i + len(RESERVED) for i, c in enumerate(self.chars)})

    @classmethod
    def build(cls, lines: Iterable[str], min_count: int = 1) -> Vocab:
        """Characters seen at least `min_count` times, most frequent first (ties by code point)."""
        counts = count_chars(lines)
        kept = [c for c, n in counts.items() if n >= min_count]
        kept.sort(key=lambda c: (-counts[c], c))
        return cls(tuple(kept))

    @property
    def size(self) -> int:
        return len(RESERVED) + len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self._index

    def encode(self, text: str) -> tuple[np.ndarray, int]:
        """Ids for `text` and how many of its characters were unknown. Never raises."""
        index = self._index
        ids = np.fromiter((index.get(c, UNK) for c in text), dtype=np.int32, count=len(text))
        return ids, int(np.count_nonzero(ids == UNK))

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`; <unk> becomes U+FFFD, padding and end-of-text are dropped."""
        out = []
        offset = len(RESERVED)
        for i in ids:
            i = int(i)
            if i >= offset and i - offset < len(self.chars):
                out.append(self.chars[i - offset])
            elif i == UNK:
                out.append("\ufffd")
        return "".join(out)

    def unknown_chars(self, text: str) -> Counter:
        return Counter(c for c in text if c not in self._index)

    def grown(self, new_chars: Iterable[str]) -> Vocab:
        """A vocabulary with `new_chars` appended; every old id keeps its meaning."""
        extra = sorted({c for c in new_chars if c not in self._index and len(c) == 1})
        return Vocab(self.chars + tuple(extra))

    def to_json(self) -> str:
        return json.dumps({"reserved": list(RESERVED), "chars": list(self.chars)}, ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        if tuple(data.get("reserved", ())) != RESERVED:
            raise ValueError("vocabulary has different reserved tokens")
        return cls(tuple(data["chars"]))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def count_chars(lines: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for line in lines:
        counts.update(line)
    return counts
