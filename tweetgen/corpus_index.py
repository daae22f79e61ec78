"""The corpus as the generators see it, followed as it grows: the novelty index and how often
each first word starts a line (the default seeds).

Each update reads only the bytes appended since the last one, so a generate job costs what
was appended, not the whole corpus. A corpus replaced or truncated under it (its content before
the indexed offset changed) is indexed again from byte 0.

One index per corpus file and n-gram size per process, shared by whoever holds it: with
`daemon --http` the daemon's generate job and the server's generator use the same one, so the
corpus is held in memory once (about 8 bytes per distinct n-gram plus about 100 bytes per
line; see README, "Memory").
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from pathlib import Path

from . import corpus
from .novelty import NoveltyIndex

log = logging.getLogger(__name__)


class CorpusIndex:
    def __init__(self, path: Path, ngram: int) -> None:
        self.path, self.ngram = path, ngram
        self.novelty = NoveltyIndex(ngram)
        self.first_words: Counter = Counter()
        self.indexed_to = 0  # byte offset after the last complete line indexed
        self._identity: dict | None = None  # of the file up to indexed_to
        self._lock = threading.Lock()

    def update(self) -> None:
        """Index the complete lines appended since the last update."""
        with self._lock:
            try:
                if not self.path.is_file():
                    return
                if self.indexed_to and corpus.check_identity(self.path, self.indexed_to,
                                                             self._identity) is not None:
                    log.info("corpus %s was replaced: indexing it again from byte 0", self.path)
                    self._reset()
                start = self.indexed_to
                for batch in corpus.iter_batches(self.path, start):
                    lines = [corpus.plain_text(line) for line in batch.lines]
                    self.novelty.add(lines)
                    self.first_words.update(line.split(" ", 1)[0] for line in lines)
                    self.indexed_to = batch.end
                if self.indexed_to != start:
                    self._identity = corpus.file_identity(self.path, self.indexed_to)
            except (OSError, corpus.CorpusError) as exc:  # removed or replaced while read
                log.warning("corpus %s not indexed this time: %s", self.path, exc)

    def common_first_words(self, count: int) -> list[str]:
        with self._lock:
            return [word for word, _ in self.first_words.most_common(count)]

    def _reset(self) -> None:
        self.novelty = NoveltyIndex(self.ngram)
        self.first_words = Counter()
        self.indexed_to, self._identity = 0, None


_shared: weakref.WeakValueDictionary[tuple[Path, int], CorpusIndex] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared_index(path: Path, ngram: int) -> CorpusIndex:
    """The process's index of this corpus, made on first use; it lives while someone holds it."""
    key = (Path(path).absolute(), ngram)
    with _shared_lock:
        index = _shared.get(key)
        if index is None:
            index = _shared[key] = CorpusIndex(key[0], ngram)
        return index
