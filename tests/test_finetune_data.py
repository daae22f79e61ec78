"""A fine-tune's data comes from its own new lines, streamed, plus random reads of older ones:
its cost and memory follow the append, not the corpus, and a resumed job gets the same data."""

from __future__ import annotations

import random
from pathlib import Path

from conftest import varied_lines, write_corpus

from tweetgen import corpus
from tweetgen.trainer import TrainJob, build_data, split_lines, validation_subset
from tweetgen.vocab import Vocab


def test_sample_lines_draws_complete_clean_lines_before_the_end(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    lines = [f"line {i} {'x' * (i % 7)}".strip() for i in range(50)]
    path.write_bytes(("\n".join(lines[:40]) + "\n").encode() + b"\xff bad\n   \n"
                     + ("\n".join(lines[40:]) + "\n").encode() + b"partial")
    end = len(("\n".join(lines[:40]) + "\n").encode()) + len(b"\xff bad\n   \n")
    drawn = corpus.sample_lines(path, end, 200, random.Random(1))
    assert len(drawn) == 200
    assert set(drawn) <= set(lines[:40])  # never a rejected line, nor one at or after `end`
    assert len(set(drawn)) > 30  # spread over the lines, not stuck on a few
    assert drawn == corpus.sample_lines(path, end, 200, random.Random(1))
    odd = corpus.sample_lines(path, end, 20, random.Random(2), keep=lambda t: t.endswith("x"))
    assert odd and all(t.endswith("x") for t in odd)
    assert corpus.sample_lines(path, 0, 5, random.Random(3)) == []
    assert corpus.count_lines(path, 0, end) == 42


def _texts(data) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in seq) for seq in data.train]


def test_finetune_data_is_streamed_bounded_and_rebuilt_identically(make_settings, tmp_path) -> None:
    settings = make_settings(tmp_path, finetune_max_steps=3, batch_size=4, max_validation_lines=15,
                             validation_fraction=0.2)
    lines = varied_lines(400)
    write_corpus(settings.corpus_file, lines[:300])
    first = corpus.complete_end(settings.corpus_file)
    corpus.append_lines(settings.corpus_file, lines[300:])
    end = corpus.complete_end(settings.corpus_file)
    vocab = Vocab.build(lines)

    initial = build_data(settings, vocab, TrainJob("train", 1, 0, first, 10))
    job = TrainJob("finetune", 5, first, end, 20, replay_ratio=2.0,
                   validation_base=initial.validation_lines)
    data = build_data(settings, vocab, job)
    # At most finetune_max_steps x batch_size new lines are trained, a sample of the new ones.
    new_train, _ = split_lines(lines[300:], settings.validation_fraction)
    assert data.new_lines == 12 < len(new_train)
    assert data.replay_lines == 24
    train_texts = [vocab.decode(seq) for seq in data.train]
    assert set(train_texts[:12]) <= set(new_train)
    old_train, _ = split_lines(lines[:300], settings.validation_fraction)
    assert set(train_texts[12:]) <= set(old_train)  # replay: older training lines only
    # The validation subset is the one a full read of the corpus picks.
    _, all_val = split_lines(lines, settings.validation_fraction)
    assert data.validation_lines == validation_subset(all_val, 15)
    # A resumed job rebuilds the same data; without a carried subset it reads the old lines.
    assert _texts(build_data(settings, vocab, job)) == _texts(data)
    job.validation_base = None
    assert build_data(settings, vocab, job).validation_lines == data.validation_lines


def test_the_replay_share_counts_only_lines_appended_since_the_last_fine_tune(
        make_settings, tmp_path, monkeypatch) -> None:
    """Every fine-tune needs the number of lines before its new ones; it used to count them
    from byte 0 each time. Counted ranges are noted; the real count runs."""
    counted: list[tuple[int, int]] = []
    real = corpus.count_lines
    monkeypatch.setattr(corpus, "count_lines",
                        lambda path, start, stop: counted.append((start, stop)) or real(path, start, stop))
    settings = make_settings(tmp_path, finetune_max_steps=3, batch_size=4)
    lines = varied_lines(300)
    write_corpus(settings.corpus_file, lines[:100])
    vocab = Vocab.build(lines)
    ends = [corpus.complete_end(settings.corpus_file)]
    for chunk in (lines[100:200], lines[200:]):
        corpus.append_lines(settings.corpus_file, chunk)
        ends.append(corpus.complete_end(settings.corpus_file))
    for start, end in zip(ends, ends[1:]):
        data = build_data(settings, vocab, TrainJob("finetune", 5, start, end, 20, replay_ratio=1.0,
                                                    validation_base=[]))
        assert data.replay_lines > 0
    assert counted == [(0, ends[0]), (ends[0], ends[1])]
    assert corpus.lines_before(settings.corpus_file, ends[1]) == 200


def test_lines_waiting_without_a_cursor_counts_from_the_last_count(tmp_path, monkeypatch) -> None:
    """A /metrics scrape or status before the first ingest: counted from byte 0 once, then only
    what was appended; a replaced file is counted again from 0."""
    path = write_corpus(tmp_path / "c.txt", varied_lines(50))
    read: list[tuple[int, int]] = []
    real = corpus.count_lines
    monkeypatch.setattr(corpus, "count_lines",
                        lambda p, start, stop: read.append((start, stop)) or real(p, start, stop))
    size = path.stat().st_size
    assert corpus.lines_waiting(path, None) == 50
    corpus.append_lines(path, ["one more", "and another"])
    assert corpus.lines_waiting(path, None) == 52
    assert read == [(0, size), (size, path.stat().st_size)]
    write_corpus(path, varied_lines(60)[10:])  # replaced: the same size or not, counted again
    assert corpus.lines_waiting(path, None) == 50
