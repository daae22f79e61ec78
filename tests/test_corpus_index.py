"""The corpus index of the generators: novelty and default seeds, read incrementally, shared."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_corpus

from tweetgen import corpus, engine
from tweetgen.corpus_index import shared_index


@pytest.fixture
def batch_starts(monkeypatch) -> list[int]:
    """The byte offsets the corpus is read from (the real reader runs; its starts are noted)."""
    starts: list[int] = []
    real = corpus.iter_batches

    def noting(path, start=0, *args, **kwargs):
        starts.append(start)
        return real(path, start, *args, **kwargs)

    monkeypatch.setattr(corpus, "iter_batches", noting)
    return starts


def test_default_seeds_read_only_what_was_appended(make_settings, tmp_path: Path, batch_starts) -> None:
    settings = make_settings(tmp_path)
    write_corpus(settings.corpus_file, ["cat one", "dog two", "cat three", "eel four"])
    held = engine.GeneratorCache(settings)  # the daemon holds one for its generate job
    assert engine.default_seeds(settings) == ["cat", "dog", "eel", ""]
    first_end = settings.corpus_file.stat().st_size
    corpus.append_lines(settings.corpus_file, ["eel five", "eel six", "fox seven"])
    assert engine.default_seeds(settings) == ["eel", "cat", "dog", "fox", ""]
    assert batch_starts == [0, first_end]  # not the whole corpus again at every generate job
    assert held.corpus_index.indexed_to == settings.corpus_file.stat().st_size


def test_a_replaced_corpus_is_indexed_again(make_settings, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, novelty_ngram=5)
    write_corpus(settings.corpus_file, ["old words here", "old again"])
    index = shared_index(settings.corpus_file, settings.novelty_ngram)
    index.update()
    assert index.novelty.score("old words here")[0] is True
    write_corpus(settings.corpus_file, ["new text now", "new lines too", "more"])
    index.update()
    assert index.common_first_words(2) == ["new", "more"]
    assert index.novelty.score("old words here") == (False, 1.0)
    assert index.novelty.score("new lines too") == (True, 0.0)


def test_generators_of_one_process_share_one_index(make_settings, tmp_path: Path) -> None:
    """`daemon --http`: the daemon's generate job and the server's generator hold the corpus
    in memory once."""
    settings = make_settings(tmp_path)
    write_corpus(settings.corpus_file, ["a line"])
    daemon_side, server_side = engine.GeneratorCache(settings), engine.GeneratorCache(settings)
    assert daemon_side.corpus_index is server_side.corpus_index
    other = engine.GeneratorCache(make_settings(tmp_path / "other"))
    assert other.corpus_index is not daemon_side.corpus_index
