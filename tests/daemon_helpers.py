"""Helpers for the end-to-end daemon tests: a tiny home, real daemon processes, store queries.

Shared by test_daemon.py, test_faults.py, test_hostile_input.py and bench/faults.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tweetgen.store import Store

REPO = Path(__file__).resolve().parents[1]

TINY = """
gru_sizes = [16, 16]
embedding_dim = 8
batch_size = 8
initial_steps = {initial_steps}
checkpoint_every = {checkpoint_every}
log_every = 5
finetune_interval_minutes = 60
generate_interval_minutes = 0.05
ingest_check_seconds = 1
min_new_lines = 3
heartbeat_seconds = 1
samples_per_seed = 1
temperatures = [1.0]
finetune_min_steps = 5
finetune_max_steps = 10
vocab_grow_min_count = 3
seeds = ["the", ""]
idle_training = false
"""

WORDS = "the cat dog sat ran on a mat log fast slow big red".split()


def corpus_lines(count: int, offset: int = 0) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(2 + i % 6))
            for i in range(offset, offset + count)]


def make_home(tmp_path: Path, initial_steps: int = 30, checkpoint_every: int = 10,
              extra: str = "", **settings: Any) -> Path:
    """A home with a 200-line corpus and the tiny config, plus `extra` TOML lines; keyword
    arguments replace settings of the tiny config (values written as TOML)."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "corpus.txt").write_text("\n".join(corpus_lines(200)) + "\n")
    lines = TINY.format(initial_steps=initial_steps, checkpoint_every=checkpoint_every).splitlines()
    lines = [line for line in lines if line.split(" =")[0] not in settings]
    lines += [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
    (home / "tweetgen.toml").write_text("\n".join(lines) + "\n" + extra)
    return home


def start_daemon(home: Path, log_name: str = "daemon.log", env: dict[str, str] | None = None,
                 log_through_pipe: bool = False) -> subprocess.Popen:
    """The daemon as a subprocess logging to home/log_name. With log_through_pipe the test copies
    its output into the file, so limits on the daemon's file sizes do not apply to its log."""
    log = open(home / log_name, "ab")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    out = subprocess.PIPE if log_through_pipe else log
    proc = subprocess.Popen([sys.executable, "run_daemon.py", "--home", str(home)], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT, env=full_env)
    if log_through_pipe:
        def copy() -> None:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                log.write(chunk)
                log.flush()
            log.close()

        threading.Thread(target=copy, daemon=True).start()
    else:
        log.close()  # the child has its own copy
    return proc


def tweetgen(home: Path, *args: str, check: bool = True, input: str | bytes | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
    text = not isinstance(input, bytes)
    result = subprocess.run([sys.executable, "-m", "tweetgen.cli", "--home", str(home), *args],
                            capture_output=True, text=text, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"tweetgen {args} failed: {result.stderr}")
    return result


def wait_for(predicate: Callable[[], Any], timeout: float = 90, what: str = "condition",
             proc: subprocess.Popen | None = None, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode} while waiting for {what}")
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def query(home: Path, sql: str, params: Any = ()) -> list[dict]:
    with Store(home / "db" / "tweetgen.db") as store:
        return list(store.db.query(sql, list(params)))


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    """Send `sig` and wait for the exit code; a daemon that does not stop in time is killed
    (never left running behind a failed test) and the test fails."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"daemon {proc.pid} did not exit within {timeout} s of signal {sig}") from None


def log_text(home: Path, log_name: str = "daemon.log") -> str:
    path = home / log_name
    return path.read_text(errors="replace") if path.exists() else ""


# ---------------------------------------------------------------- invariants after a fault


def integrity_ok(db: Path) -> bool:
    """PRAGMA integrity_check on a plain connection (not through the Store, which might repair)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def complete_lines_end(path: Path) -> int:
    data = path.read_bytes()
    return data.rfind(b"\n") + 1


def ingest_gaps(home: Path) -> list[str]:
    """What is wrong with the ingests' byte ranges: each must start where the previous ended
    (from 0), end after a newline, and lines + rejected must be the newlines in the range."""
    data = (home / "data" / "corpus.txt").read_bytes()
    problems, expected_start = [], 0
    for row in query(home, "select * from ingests order by id"):
        start, end = row["start_offset"], row["end_offset"]
        if start != expected_start:
            problems.append(f"ingest {row['id']} starts at {start}, expected {expected_start}")
        if end <= start or data[end - 1:end] != b"\n":
            problems.append(f"ingest {row['id']} ends at {end}, not after a newline")
        held = data.count(b"\n", start, end)
        if row["lines"] + row["rejected"] != held:
            problems.append(f"ingest {row['id']} counts {row['lines']}+{row['rejected']} lines, "
                            f"the range holds {held}")
        expected_start = end
    return problems


def ingested_through(home: Path) -> int:
    """The store's cursor: where the latest ingest ended (0 before the first)."""
    rows = query(home, "select end_offset from ingests order by id desc limit 1")
    return rows[0]["end_offset"] if rows else 0


def loadable_checkpoint(home: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that loads, and the names of newer ones that did not."""
    from tweetgen.checkpoints import CheckpointError, CheckpointManager, load_checkpoint

    failed = []
    for path in reversed(CheckpointManager(home / "checkpoints").paths()):
        try:
            load_checkpoint(path)
            return path, failed
        except CheckpointError:
            failed.append(path.name)
    return None, failed


def samples_snapshot(home: Path) -> dict[int, str]:
    if not (home / "db" / "tweetgen.db").exists():
        return {}
    return {r["id"]: r["text"] for r in query(home, "select id, text from samples")}
