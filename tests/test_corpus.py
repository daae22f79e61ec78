"""Reading, cleaning, splitting and appending the corpus; importing fortune files."""

from __future__ import annotations

import fcntl
import logging
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tweetgen import corpus
from tweetgen.corpus import (
    MAX_LINE_BYTES,
    CorpusError,
    append_lines,
    check_identity,
    clean_line,
    clean_pair_text,
    clean_text,
    complete_end,
    file_identity,
    fortune_entries,
    import_fortunes,
    is_validation,
    iter_batches,
    iter_complete_lines,
    read_lines,
    split_key,
    validate_lines,
)

# ---------------------------------------------------------------- cleaning


def test_clean_text_collapses_whitespace_and_control_characters() -> None:
    assert clean_text("  a \t b\x00c\x07  d  ") == "a b c d"
    assert clean_text("x\u2028y\u00a0z") == "x y z"
    assert clean_text("") == ""


def test_clean_line_reasons() -> None:
    assert clean_line(b"  hello   world ") == ("hello world", None)
    assert clean_line("héllo".encode()) == ("héllo", None)
    assert clean_line(b"abc\r") == ("abc", None)  # the \r of a CRLF line
    assert clean_line(b"   \t ") == (None, "empty")
    assert clean_line(b"") == (None, "empty")
    assert clean_line(b"\xff\xfeoops") == (None, "invalid utf-8")
    assert clean_line(b"a" * (MAX_LINE_BYTES + 1)) == (None, "too long")
    assert clean_line(b"a" * MAX_LINE_BYTES)[1] is None


# ---------------------------------------------------------------- reading


def test_only_complete_lines_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"one\ntwo\nthr")
    assert list(iter_complete_lines(path)) == [(4, b"one"), (8, b"two")]
    assert complete_end(path) == 8
    batch = read_lines(path)
    assert batch.lines == ["one", "two"] and batch.end == 8

    # The writer finishes its line: it is read from the cursor, once.
    with open(path, "ab") as handle:
        handle.write(b"ee\nfour\n")
    batch = read_lines(path, batch.end)
    assert batch.lines == ["three", "four"]
    assert batch.start == 8 and batch.end == path.stat().st_size
    assert read_lines(path, batch.end).lines == []


def test_bad_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"good one\r\n\n   \n\xc3\x28 bad utf8\nsecond\x00good\r\n\xe9t\xe9\nlast\n")
    batch = read_lines(path)
    assert batch.lines == ["good one", "second good", "last"]
    assert batch.rejected == {"empty": 2, "invalid utf-8": 2}
    assert batch.end == path.stat().st_size


def test_crlf_lines_read_like_lf_lines(tmp_path: Path) -> None:
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(b"a b\nc  d\n")
    crlf.write_bytes(b"a b\r\nc  d\r\n")
    assert read_lines(lf).lines == read_lines(crlf).lines == ["a b", "c d"]


def test_range_reads_stop_at_the_stop_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"aa\nbb\ncc\ndd\n")
    assert read_lines(path, 3, 9).lines == ["bb", "cc"]
    assert read_lines(path, 3, 8).lines == ["bb"]  # "cc\n" ends at 9, past the stop
    assert read_lines(path, 0, 0).lines == []


def test_overlong_lines_are_rejected_and_offsets_stay_exact(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    # One over-long complete line shorter than two read chunks, one much longer (streamed past).
    data = b"first\n" + b"x" * (MAX_LINE_BYTES + 10) + b"\nmid\n" + b"y" * (3 * MAX_LINE_BYTES) + b"\nok\n"
    path.write_bytes(data)
    offsets = [offset for offset, _ in iter_complete_lines(path)]
    expected, pos = [], 0
    for line in data.split(b"\n")[:-1]:
        pos += len(line) + 1
        expected.append(pos)
    assert offsets == expected
    batch = read_lines(path)
    assert batch.lines == ["first", "mid", "ok"]
    assert batch.rejected == {"too long": 2}
    assert batch.end == len(data)
    # A cursor at any line end continues exactly from there.
    assert read_lines(path, expected[2]).lines == ["ok"]


def test_batches_are_bounded_and_contiguous(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(25)) + b"\n")
    batches = list(iter_batches(path, size=10))
    assert [len(b.lines) + sum(b.rejected.values()) for b in batches] == [10, 10, 6]
    assert [b.start for b in batches[1:]] == [b.end for b in batches[:-1]]
    assert sum((b.lines for b in batches), []) == [f"line {i}" for i in range(25)]


def test_missing_corpus_and_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        read_lines(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="directory"):
        read_lines(tmp_path)
    with pytest.raises(CorpusError, match="directory"):
        append_lines(tmp_path, ["x"])


def test_file_identity_notices_truncation_and_replacement(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"alpha\nbeta\n")
    identity = file_identity(path, 11)
    with open(path, "ab") as handle:
        handle.write(b"gamma\n")
    assert check_identity(path, 11, identity) is None  # appends are fine
    path.write_bytes(b"ALPHA\nbeta\ngamma\n")
    assert "replaced" in check_identity(path, 11, identity)
    path.write_bytes(b"alpha\n")
    assert "truncated" in check_identity(path, 11, identity)


# ---------------------------------------------------------------- the split


def test_split_is_a_stable_hash_of_the_text() -> None:
    # A fixed value: changing the hash would silently move lines between train and validation.
    assert split_key("hello world") == pytest.approx(0.5293915071985242, abs=1e-15)
    assert 0 <= split_key("") < 1
    lines = [f"line number {i}" for i in range(4000)]
    validation = [line for line in lines if is_validation(line)]
    assert 0.035 < len(validation) / len(lines) < 0.065
    assert [line for line in lines if is_validation(line)] == validation
    assert all(is_validation(line, 0.05) == (split_key(line) < 0.05) for line in lines)


def test_split_does_not_move_lines_when_the_corpus_grows(tmp_path: Path) -> None:
    from tweetgen.trainer import split_lines

    old = [f"old line {i}" for i in range(300)]
    new = [f"new line {i}" for i in range(300)]
    train_before, val_before = split_lines(old, 0.05)
    train_after, val_after = split_lines(old + new, 0.05)
    assert set(val_before) <= set(val_after) and set(train_before) <= set(train_after)
    assert not set(val_after) & set(train_after)


# ---------------------------------------------------------------- writing


def test_append_lines_validates_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "data" / "corpus.txt"
    result = append_lines(path, ["first  line", "", b"\xff", "two\nlines", b"bytes line\r\n"])
    assert path.read_text() == "first line\ntwo\nlines\nbytes line\n"
    assert result.added == 4
    assert result.rejected == {"empty": 2, "invalid utf-8": 1}
    assert result.end == path.stat().st_size
    assert result.summary() == "added 4 lines, rejected 3 (2 empty, 1 invalid utf-8)"


def test_append_finishes_a_stray_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"done\npartial")
    append_lines(path, ["next"])
    assert path.read_bytes() == b"done\npartial\nnext\n"


def test_lone_surrogates_are_rejected_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    result = append_lines(path, ["ok", "\ud800bad", "bad\udcff"])
    assert result.added == 1 and result.rejected == {"invalid utf-8": 2}
    assert path.read_text() == "ok\n"


def test_append_waits_for_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"")
    finished = threading.Event()
    with open(path, "ab") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        thread = threading.Thread(target=lambda: (append_lines(path, ["late"]), finished.set()))
        thread.start()
        time.sleep(0.3)
        assert not finished.is_set(), "append_lines wrote while another writer held the lock"
        assert path.read_bytes() == b""
        fcntl.flock(holder, fcntl.LOCK_UN)
    thread.join(5)
    assert finished.is_set()
    assert path.read_bytes() == b"late\n"


WRITER = """
import sys
from pathlib import Path
from tweetgen.corpus import append_lines
path, tag = Path(sys.argv[1]), sys.argv[2]
for i in range(60):
    append_lines(path, [f"{tag}-{i}-{j} " + tag * 3000 for j in range(3)])
"""


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    tags = ["a", "b", "c", "d"]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag]) for tag in tags]
    for proc in procs:
        assert proc.wait(60) == 0
    lines = path.read_text().split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(lines) == len(tags) * 60 * 3
    for line in lines:
        head, body = line.split(" ")
        tag = head.split("-")[0]
        assert body == tag * 3000
    assert read_lines(path).rejected == {}


LIMITED_APPEND = """
import resource, signal, sys
from pathlib import Path
from tweetgen.corpus import CorpusWriteError, append_lines
path, limit = Path(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    append_lines(path, [f"line {i} of a batch too big for the limit" for i in range(2000)])
except CorpusWriteError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("start", [b"done\n", b"done\npartial"])
def test_a_failed_append_leaves_the_corpus_byte_identical(tmp_path: Path, start: bytes) -> None:
    """Under a real file size limit the batch fails part way: the file is cut back to what it
    was, so a retry neither duplicates lines nor turns a fragment into a line."""
    path = tmp_path / "c.txt"
    path.write_bytes(start)
    limit = len(start) + 10_000
    result = subprocess.run([sys.executable, "-c", LIMITED_APPEND, str(path), str(limit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert path.read_bytes() == start
    assert "nothing was added" in result.stdout and str(path) in result.stdout
    append_lines(path, ["retry"])  # without the limit the same file takes the next batch whole
    assert path.read_bytes() == start + (b"" if start.endswith(b"\n") else b"\n") + b"retry\n"


def test_tweetgen_append_says_a_failed_batch_was_not_added(tmp_path: Path) -> None:
    corpus_file = tmp_path / "data" / "corpus.txt"
    corpus_file.parent.mkdir()
    corpus_file.write_bytes(b"already here\n")

    def limit_file_size() -> None:  # in the child, before it runs: SIGXFSZ ignored, a 5 kB limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (5_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    batch = "".join(f"appended line number {i}\n" for i in range(1000))
    result = subprocess.run([sys.executable, "-m", "tweetgen.cli", "--home", str(tmp_path), "append"],
                            input=batch, capture_output=True, text=True, timeout=60,
                            preexec_fn=limit_file_size)
    assert result.returncode == 2
    assert corpus_file.read_bytes() == b"already here\n"
    (message,) = result.stderr.strip().splitlines()
    assert message.startswith("tweetgen: error: could not append to corpus")
    assert "nothing was added" in message


# ---------------------------------------------------------------- fortunes

FORTUNES = "\n".join([
    "A short one.",
    "%",
    "Two lines",
    "\tof   text, indented.",
    "%",
    "%",
    "long " * 40,
    "%",
    "%   ",  # a separator with trailing spaces
    "x" * 140,
    "%",
    "Last entry, no final percent.",
])


def test_fortune_entries() -> None:
    entries, total = fortune_entries(FORTUNES)
    assert entries == ["A short one.", "Two lines of text, indented.", "x" * 140,
                       "Last entry, no final percent."]
    assert total == 5  # the 200-character entry counts but is dropped
    assert fortune_entries(FORTUNES, max_chars=12)[0] == ["A short one."]


def test_import_fortunes_appends_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "fortunes"
    source.write_text(FORTUNES)
    dest = tmp_path / "data" / "corpus.txt"
    with caplog.at_level(logging.INFO, logger="tweetgen.corpus"):
        result = import_fortunes(source, dest)
    assert result.added == 4
    assert read_lines(dest).lines == fortune_entries(FORTUNES)[0]
    assert "imported 4 of 5 fortune entries" in caplog.text
    with pytest.raises(CorpusError, match="cannot read fortune file"):
        import_fortunes(tmp_path / "missing", dest)


def test_ensure_corpus_writes_the_default_fortunes_once(tmp_path: Path) -> None:
    dest = tmp_path / "data" / "corpus.txt"
    corpus.ensure_corpus(dest)
    batch = read_lines(dest)
    assert len(batch.lines) > 1000
    assert max(len(line) for line in batch.lines) <= 140
    size = dest.stat().st_size
    corpus.ensure_corpus(dest)
    assert dest.stat().st_size == size


def test_common_first_words() -> None:
    assert corpus.common_first_words(["a b", "a c", "b d", "a", ""], 2) == ["a", "b"]


# ---------------------------------------------------------------- never raises (property tests)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
@example(raw=b"!\t!")  # a dialog pair: its one tab is kept (found by a random run)
def test_clean_line_never_raises(raw: bytes) -> None:
    text, reason = clean_line(raw)
    assert (text is None) != (reason is None)
    if text is not None:
        assert text == text.strip() and "  " not in text and "\n" not in text
        assert text.count("\t") <= 1 and clean_pair_text(text) == text
        assert clean_text(corpus.plain_text(text)) == corpus.plain_text(text)
        assert clean_line(text.encode("utf-8")) == (text, None)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.text(max_size=40), max_size=10))
def test_validate_lines_never_raises_on_any_text(lines: list[str]) -> None:
    kept, rejected = validate_lines(lines)
    assert all(clean_line(k.encode("utf-8")) == (k, None) for k in kept)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), start_frac=st.floats(0, 1))
def test_iter_complete_lines_never_raises(data: bytes, start_frac: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.txt"
        path.write_bytes(data)
        got = list(iter_complete_lines(path))
        pieces = data.split(b"\n")[:-1]
        assert [raw for _, raw in got] == pieces
        assert (got[-1][0] if got else 0) == complete_end(path)
        # Reading from any line end gives exactly the rest.
        if got:
            cut = got[int(start_frac * (len(got) - 1))][0]
            assert [raw for _, raw in iter_complete_lines(path, cut)] == data[cut:].split(b"\n")[:-1]
        batch = read_lines(path)
        assert len(batch.lines) + sum(batch.rejected.values()) == len(pieces)
