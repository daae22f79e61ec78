"""Hostile input to the corpus reader, the daemon's ingest and the CLI: each gets a clear message
naming the input (and, for corpus lines, a count in `ingests`); none crashes or loses data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from daemon_helpers import (
    complete_lines_end,
    ingested_through,
    integrity_ok,
    log_text,
    make_home,
    query,
    samples_snapshot,
    start_daemon,
    stop,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tweetgen import cli, corpus
from tweetgen.vocab import Vocab

# (what, raw bytes appended to the corpus, the lines it must yield, the rejections it must count)
CORPUS_ROWS = [
    ("invalid UTF-8", b"bad \xff\xfe bytes\n", [], {"invalid utf-8": 1}),
    ("a UTF-8 encoded surrogate", b"half \xed\xa0\x80 a pair\n", [], {"invalid utf-8": 1}),
    ("overlong UTF-8", b"\xc0\xafslash\n", [], {"invalid utf-8": 1}),
    ("NUL bytes", b"nul\x00in\x00the middle\n", ["nul in the middle"], {}),
    ("a CRLF line end", b"windows line\r\n", ["windows line"], {}),
    ("a lone CR", b"old mac\rline\n", ["old mac line"], {}),
    ("only whitespace", b" \t  \x0b\x0c \n", [], {"empty": 1}),
    ("an empty line", b"\n", [], {"empty": 1}),
    ("control characters", b"bell\x07 esc\x1b[31m red\x7f\n", ["bell esc [31m red"], {}),
    ("emoji and combining marks", "snake 🐍 cafe\u0301 flag 🇫🇷\n".encode(),
     ["snake 🐍 cafe\u0301 flag 🇫🇷"], {}),
    ("right-to-left text", "שלום עולם مرحبا بالعالم\n".encode(), ["שלום עולם مرحبا بالعالم"], {}),
    ("a line separator U+2028", "one\u2028two\n".encode(), ["one two"], {}),
    ("a 2 MB line", b"y" * (2 << 20) + b"\n", [], {"too long": 1}),
]
TEN_MB_NO_NEWLINE = b"z" * (10 << 20)


@pytest.mark.parametrize("what, raw, lines, rejected", CORPUS_ROWS, ids=[r[0] for r in CORPUS_ROWS])
def test_corpus_reader_cleans_or_counts_each_hostile_line(tmp_path: Path, what, raw, lines,
                                                          rejected) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"before\n" + raw + b"after\n")
    batch = corpus.read_lines(path)
    assert batch.lines == ["before", *lines, "after"], what
    assert dict(batch.rejected) == rejected, what
    assert batch.end == path.stat().st_size


def test_a_10_mb_line_without_newline_waits_and_is_rejected_once_complete(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"one\n" + TEN_MB_NO_NEWLINE)
    assert corpus.complete_end(path) == 4
    assert corpus.read_lines(path).lines == ["one"]
    assert corpus.lines_waiting(path, {"offset": 4, "identity": corpus.file_identity(path, 4)}) == 0
    with open(path, "ab") as handle:
        handle.write(b"\ntwo\n")
    batch = corpus.read_lines(path, 4)
    assert (batch.lines, dict(batch.rejected)) == (["two"], {"too long": 1})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), start=st.integers(0, 700), stop=st.integers(0, 700),
       chars=st.text(max_size=30))
def test_reading_any_bytes_from_any_offset_and_encoding_them_never_raises(data: bytes, start: int,
                                                                          stop: int, chars: str) -> None:
    """The daemon's ingest path (complete lines from a cursor, cleaned, counted, encoded with a
    vocabulary, decoded again) on arbitrary bytes, from offsets that need not be line ends."""
    vocab = Vocab.build([chars])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.txt"
        path.write_bytes(data)
        # A cursor whose identity the file does not match: every line waits again.
        cursor = {"offset": start, "identity": {"head_sha256": "", "tail_sha256": ""}}
        assert corpus.lines_waiting(path, cursor) == data.count(b"\n")
        if start <= len(data):  # a cursor the file matches: the lines after it
            cursor = {"offset": start, "identity": corpus.file_identity(path, start)}
            assert corpus.lines_waiting(path, cursor) == data[start:].count(b"\n")
        for batch in corpus.iter_batches(path, start, max(start, stop) or None, size=7):
            assert start <= batch.start <= batch.end <= max(len(data), start)
            for line in batch.lines:
                ids, unknown = vocab.encode(line)
                assert unknown == sum(vocab.unknown_chars(line).values())
                assert len(vocab.decode(ids)) == len(line)
    kept, rejected = corpus.validate_lines(data.split(b"\n"))
    assert len(kept) + sum(rejected.values()) >= len(data.split(b"\n"))


# ---------------------------------------------------------------- the daemon and the CLI


def run_cli(home: Path, args: list[str], stdin: bytes | None = None, env: dict | None = None,
            capsys=None) -> tuple[int, str, str]:
    """A `tweetgen` command: as a process when it reads stdin or needs its own environment,
    else in this process (the generate rows would each pay TensorFlow's start-up otherwise)."""
    argv = ["--home", str(home), *args]
    if stdin is not None or env is not None:
        result = subprocess.run([sys.executable, "-m", "tweetgen.cli", *argv], input=stdin,
                                capture_output=True, timeout=120, env=dict(os.environ, **(env or {})))
        return result.returncode, result.stdout.decode(), result.stderr.decode()
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_hostile_corpus_and_cli_input_against_a_live_daemon(tmp_path: Path, capsys) -> None:
    home = make_home(tmp_path, initial_steps=20, checkpoint_every=10, vocab_grow_min_count=100)
    path = home / "data" / "corpus.txt"
    daemon = start_daemon(home)
    try:
        wait_for(lambda: (home / "db" / "tweetgen.db").exists() and samples_snapshot(home),
                 proc=daemon, what="the first tweets")

        # 1. Every hostile corpus line at once, then a 10 MB line with no newline yet.
        start = path.stat().st_size
        with open(path, "ab") as handle:
            handle.write(b"".join(raw for _, raw, _, _ in CORPUS_ROWS) + TEN_MB_NO_NEWLINE)
        end = complete_lines_end(path)
        wait_for(lambda: ingested_through(home) == end, proc=daemon, what="the hostile lines")
        [ingest] = query(home, "select * from ingests where start_offset = ?", [start])
        assert ingest["end_offset"] == end  # the unfinished line waits
        assert ingest["lines"] == sum(len(lines) for _, _, lines, _ in CORPUS_ROWS)
        expected = sum((Counter(r) for _, _, _, r in CORPUS_ROWS), Counter())
        assert json.loads(ingest["rejected_reasons"]) == dict(expected)
        assert ingest["rejected"] == sum(expected.values())
        assert ingest["unknown_chars"] > 0  # emoji, Hebrew, Arabic: counted, trained as <unk>
        # Its newline arrives (with three more lines): rejected as too long, counted.
        with open(path, "ab") as handle:
            handle.write(b"\nthe cat sat\na dog ran\nthe end\n")
        wait_for(lambda: ingested_through(home) == path.stat().st_size, proc=daemon,
                 what="the completed 10 MB line")
        last = query(home, "select * from ingests order by id desc limit 1")[0]
        assert (last["lines"], json.loads(last["rejected_reasons"])) == (3, {"too long": 1})
        tweets = samples_snapshot(home)

        # 2. The corpus removed: logged once, the daemon waits; a new corpus is read from 0.
        shutil.move(path, tmp_path / "corpus.saved")
        wait_for(lambda: f"corpus {path} is missing" in log_text(home), proc=daemon,
                 what="the missing corpus to be noticed")
        code, out, err = run_cli(home, ["append", "a new corpus", "has three", "short lines"],
                                 capsys=capsys)
        assert code == 0 and "added 3 lines" in out
        wait_for(lambda: query(home, "select * from ingests where start_offset = 0 and "
                                     "end_offset = ?", [path.stat().st_size]),
                 proc=daemon, what="the new corpus to be read from its start")
        assert "was truncated" in log_text(home)

        # 3. The corpus replaced by a directory: the daemon waits, `append` refuses clearly.
        shutil.move(path, tmp_path / "corpus.new")
        path.mkdir()
        wait_for(lambda: f"corpus {path} is a directory" in log_text(home), proc=daemon,
                 what="the directory to be noticed")
        code, _, err = run_cli(home, ["append", "text"], capsys=capsys)
        assert code == 2 and f"corpus {path} is a directory, not a file; move it away" in err
        path.rmdir()
        shutil.move(tmp_path / "corpus.new", path)
        run_cli(home, ["append", "back again", "and going on", "as before"], capsys=capsys)
        wait_for(lambda: ingested_through(home) == path.stat().st_size, proc=daemon,
                 what="lines after the corpus came back")

        # 4. The CLI table.
        check_cli_rows(home, tmp_path, capsys)
        assert daemon.poll() is None
    finally:
        code = stop(daemon)
    assert code == 0
    now = samples_snapshot(home)
    assert all(now.get(i) == text for i, text in tweets.items())
    assert integrity_ok(home / "db" / "tweetgen.db")


def check_cli_rows(home: Path, tmp_path: Path, capsys) -> None:
    configs = {"wrong type": 'batch_size = "big"\n', "unknown key": "bogus = 1\n",
               "not TOML": "batch_size = = 3\n", "zero interval": "checkpoint_every = 0\n",
               "not UTF-8": b"seeds = ['\xff']\n"}
    for name, text in configs.items():
        file = tmp_path / f"{name}.toml"
        file.write_bytes(text if isinstance(text, bytes) else text.encode())
    lines_file = tmp_path / "lines.txt"
    lines_file.write_bytes(b"from a file\n\xff not utf-8\n")
    long_seed = "s" * 141
    # (what, argv, stdin, env, exit code, text that must be in stderr or stdout)
    rows = [
        ("mixed lines on stdin", ["append", "-"],
         b"ok one\n\xff\xfe bad\nnul\x00byte\r\n   \n\xe2\x80\xaertl override\n", None, 0,
         "added 3 lines, rejected 2 (1 empty, 1 invalid utf-8)"),
        ("a 10 MB line on stdin", ["append", "--file", "-"], TEN_MB_NO_NEWLINE, None, 0,
         "added 0 lines, rejected 1 (1 too long)"),
        ("a file with a bad line", ["append", "--file", str(lines_file)], None, None, 0,
         "added 1 lines, rejected 1 (1 invalid utf-8)"),
        ("a missing file", ["append", "--file", str(tmp_path / "missing.txt")], None, None, 2,
         "missing.txt: No such file or directory"),
        ("a directory as the file", ["append", "--file", str(tmp_path)], None, None, 2,
         "Is a directory"),
        ("an empty argument", ["append", ""], None, None, 0, "added 0 lines, rejected 1 (1 empty)"),
        ("config: wrong type", ["--config", str(tmp_path / "wrong type.toml"), "tweets"], None, None,
         2, "setting 'batch_size' must be int, got 'big'"),
        ("config: unknown key", ["--config", str(tmp_path / "unknown key.toml"), "status"], None,
         None, 2, "unknown setting 'bogus'"),
        ("config: not TOML", ["--config", str(tmp_path / "not TOML.toml"), "status"], None, None, 2,
         "is not valid TOML"),
        ("config: not UTF-8", ["--config", str(tmp_path / "not UTF-8.toml"), "status"], None, None,
         2, "is not valid TOML"),
        ("config: zero", ["--config", str(tmp_path / "zero interval.toml"), "status"], None, None, 2,
         "checkpoint_every must be at least 1, got 0"),
        ("config: a directory", ["--config", str(tmp_path), "status"], None, None, 2,
         "cannot be read (Is a directory)"),
        ("env: wrong type", ["status"], None, {"TWEETGEN_BATCH_SIZE": "abc"}, 2,
         "environment: setting 'batch_size' must be int, got 'abc'"),
        ("--since garbage", ["tweets", "--since", "garbage"], None, None, 2,
         "--since 'garbage' is not an ISO 8601 time"),
        ("--limit negative", ["tweets", "--limit", "-5"], None, None, 2,
         "--limit must be at least 1, got -5"),
        ("search syntax", ["tweets", "--search", '"*NOT( OR'], None, None, 0, ""),
        ("unknown tweet id", ["review", "99999999", "--approve"], None, None, 1, "1 ids not found"),
        ("-n negative", ["generate", "-n", "-3"], None, None, 2, "-n must be between 1 and 1024, got -3"),
        ("-n huge", ["generate", "-n", "100000000"], None, None, 2, "-n must be between 1 and 1024"),
        ("--temperature 0", ["generate", "--temperature", "0"], None, None, 2,
         "--temperature must be at least"),
        ("--temperature nan", ["generate", "--temperature", "nan"], None, None, 2,
         "--temperature must be at least"),
        ("a seed over 140 characters", ["generate", "--seed", long_seed], None, None, 2,
         "is 141 characters; it must be under 140"),
        ("an unknown checkpoint", ["generate", "--checkpoint", "ckpt-99999999.npz"], None, None, 2,
         "ckpt-99999999.npz not found"),
        ("eval of a directory", ["eval", str(tmp_path)], None, None, 2, "is a directory"),
    ]
    corpus_before = (home / "data" / "corpus.txt").read_bytes()
    tweets_before = samples_snapshot(home)
    for what, args, stdin, env, want_code, want_text in rows:
        code, out, err = run_cli(home, args, stdin, env, capsys)
        assert code == want_code, f"{what}: exit {code}, stderr {err[-500:]}"
        assert want_text in err + out, f"{what}: {want_text!r} not in {(err + out)[-500:]!r}"
        assert "Traceback" not in err, f"{what}: {err[-2000:]}"
        if want_code == 2:
            assert err.count("\n") == 1 and err.startswith("tweetgen: error: "), f"{what}: {err!r}"
    # Seeds made of characters the model never saw: generated, the unknown ones counted.
    code, out, err = run_cli(home, ["generate", "--seed", "☃☃ ✈", "-n", "2", "--json", "--no-store", "--raw"],
                             capsys=capsys)
    assert code == 0, err
    assert [row["unknown_seed_chars"] for row in json.loads(out)] == [3, 3]
    # Only the appends above changed the corpus, and only at its end; no tweet was lost.
    assert (home / "data" / "corpus.txt").read_bytes().startswith(corpus_before)
    now = samples_snapshot(home)
    assert all(now.get(i) == text for i, text in tweets_before.items())
