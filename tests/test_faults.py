"""Faults done for real to a real daemon: kill -9, damaged checkpoints, NaN losses, a full disk,
a locked database, concurrent writers and readers. Nothing stored may be lost, nothing stuck."""

from __future__ import annotations

import hashlib
import json
import re
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    REPO,
    complete_lines_end,
    corpus_lines,
    ingest_gaps,
    ingested_through,
    integrity_ok,
    log_text,
    make_home,
    query,
    samples_snapshot,
    start_daemon,
    stop,
    tweetgen,
    wait_for,
)
from fault_campaign import PHASES, run_campaign

from tweetgen import corpus
from tweetgen.checkpoints import CheckpointManager, load_checkpoint
from tweetgen.faults import NAN_ENV
from tweetgen.store import Store

pytestmark = pytest.mark.slow

KILL_SEED = 20261201


def test_twenty_kill9s_lose_nothing(tmp_path: Path) -> None:
    report = run_campaign(tmp_path, KILL_SEED, kills=20)
    print(report)
    assert sum(report.kills.values()) == 20
    assert {kind.split(":")[0] for kind in report.kills} == set(PHASES)
    assert report.failures == []
    assert report.samples_lost == 0 and report.samples_after > report.samples_before > 0
    assert report.lines_ingested == report.lines_appended > 200
    assert report.failed_appends_intact == report.failed_appends > 0
    assert report.fallbacks <= 2  # nearly every crash point was reached where it was meant to be


def checkpoint_hashes(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (home / "checkpoints").glob("ckpt-*.npz")}


def first_tweets(home: Path, daemon: subprocess.Popen) -> None:
    wait_for(lambda: (home / "db" / "tweetgen.db").exists() and samples_snapshot(home), proc=daemon,
             what="the first tweets")


def append(home: Path, count: int, offset: int) -> int:
    """Append `count` new lines; returns the corpus's end after them."""
    return corpus.append_lines(home / "data" / "corpus.txt", corpus_lines(count, offset)).end


def test_damaged_checkpoints_are_moved_aside_and_the_daemon_keeps_going(tmp_path: Path) -> None:
    home = make_home(tmp_path, initial_steps=30, checkpoint_every=10)
    daemon = start_daemon(home)
    try:
        first_tweets(home, daemon)
    finally:
        assert stop(daemon) == 0
    ckpts = home / "checkpoints"
    assert sorted(checkpoint_hashes(home)) == [f"ckpt-000000{n}.npz" for n in (10, 20, 30)]
    newest, middle = ckpts / "ckpt-00000030.npz", ckpts / "ckpt-00000020.npz"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    middle.write_bytes(b"\x00garbage" * 500)  # overwritten
    # Garbage named like a later step, which no training here reaches: it must never be
    # taken for the newest checkpoint (nor promoted) by a job that saves an earlier step.
    (ckpts / "ckpt-00000090.npz").write_bytes(b"PK\x03\x04 not really a zip")
    tweets = samples_snapshot(home)

    daemon = start_daemon(home)
    try:
        wait_for(lambda: "resuming the initial training at step 10" in log_text(home), proc=daemon,
                 what="the fall-back to step 10")
        text = log_text(home)
        for step in (90, 30, 20):
            assert f"ckpt-000000{step}.npz is unusable" in text
            assert (ckpts / f"ckpt-000000{step}.npz.corrupt").exists()
        # It trains back to step 30, tweets from the new checkpoint and fine-tunes new lines.
        wait_for(lambda: len(samples_snapshot(home)) > len(tweets) and
                 (ckpts / "ckpt-00000030.npz").exists(), proc=daemon, what="tweets after the fall-back")
        end = append(home, 5, 1000)
        wait_for(lambda: ingested_through(home) == end, proc=daemon, what="the fine-tune")
    finally:
        assert stop(daemon) == 0
    load_checkpoint(ckpts / "ckpt-00000030.npz")
    promoted = CheckpointManager(ckpts).promoted_path()
    assert promoted is not None and promoted.name != "ckpt-00000090.npz"
    load_checkpoint(promoted)
    assert ingest_gaps(home) == []
    now = samples_snapshot(home)
    assert all(now[i] == text for i, text in tweets.items())
    runs = query(home, "select kind, status from runs order by id")
    assert [r["status"] for r in runs] == ["completed"] * len(runs)
    assert [r["kind"] for r in runs][-1] == "finetune"


def test_nan_losses_are_skipped_recorded_and_stop_the_run(tmp_path: Path) -> None:
    # Training-step attempts (counted over the daemon's life) whose loss is NaN: 1-4 stop the
    # initial training; its retry (30 steps, attempts 5-36) skips 7 and 9; the first fine-tune
    # applies attempt 37 and stops at 38-41; its retry stops at 42-45; the next one works.
    home = make_home(tmp_path, initial_steps=30, checkpoint_every=10, max_bad_steps=4)
    daemon = start_daemon(home, env={NAN_ENV: "1-4,7,9,38-45"})
    try:
        first_tweets(home, daemon)
        failed, initial = query(home, "select * from runs")
        assert (failed["status"], failed["bad_steps"], failed["steps"]) == ("failed", 4, 0)
        assert "4 steps with a non-finite loss" in failed["error"]
        assert (initial["status"], initial["steps"], initial["bad_steps"]) == ("completed", 30, 2)
        promoted = CheckpointManager(home / "checkpoints").promoted_path()
        hashes = checkpoint_hashes(home)
        before = ingested_through(home)
        end = append(home, 5, 1000)

        def failed() -> list[dict]:
            return query(home, "select * from runs where kind = 'finetune' and status = 'failed'")

        wait_for(failed, proc=daemon, what="a failed fine-tune")
        # Its retry runs now, and fails too: nothing of either can be saved or recorded.
        assert CheckpointManager(home / "checkpoints").promoted_path() == promoted
        assert checkpoint_hashes(home) == hashes
        assert ingested_through(home) == before  # the lines wait for a run that works
        runs = wait_for(lambda: failed()[1:] and failed(), proc=daemon, what="the failed retry")
        assert all(r["bad_steps"] == 4 and "non-finite loss" in r["error"] for r in runs)
        assert "not applied" in log_text(home)
        # The NaNs end: the third run ingests the lines, once.
        wait_for(lambda: ingested_through(home) == end, proc=daemon, what="the fine-tune")
    finally:
        assert stop(daemon) == 0
    assert ingest_gaps(home) == []
    assert query(home, "select * from runs where kind = 'finetune' and status = 'completed'")


def test_disk_full_fails_the_job_clearly_and_the_next_run_retries(tmp_path: Path) -> None:
    # A bigger model, so its checkpoint (about 1.9 MB) is much larger than the database.
    home = make_home(tmp_path, initial_steps=10, checkpoint_every=10, gru_sizes=[128, 128])
    daemon = start_daemon(home, log_through_pipe=True)
    db = home / "db" / "tweetgen.db"
    unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        first_tweets(home, daemon)
        hashes = checkpoint_hashes(home)
        promoted = CheckpointManager(home / "checkpoints").promoted_path()
        size = max(p.stat().st_size for p in (home / "checkpoints").glob("ckpt-*.npz"))
        tweets = samples_snapshot(home)
        # 1. The checkpoint does not fit (as if the disk filled up while it was written).
        limit = size // 2
        with sqlite3.connect(db) as conn:  # start the write-ahead log from empty
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.stat().st_size < limit // 2
        resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (limit, unlimited[1]))
        end = append(home, 5, 1000)
        failed = wait_for(lambda: query(home, "select * from runs where status = 'failed'"),
                          proc=daemon, what="a fine-tune that could not write its checkpoint")
        assert "could not write checkpoint" in failed[0]["error"]
        assert "File too large" in failed[0]["error"]
        assert "could not write checkpoint" in log_text(home)
        assert checkpoint_hashes(home) == hashes
        assert CheckpointManager(home / "checkpoints").promoted_path() == promoted
        assert not [p for p in (home / "checkpoints").iterdir() if ".tmp-" in p.name]
        # 2. Not even the database can grow.
        resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (1, unlimited[1]))
        mark = len(log_text(home))
        wait_for(lambda: "free disk space" in log_text(home)[mark:] and
                 "cannot write" in log_text(home)[mark:], proc=daemon, what="database write errors")
        time.sleep(2)
        assert daemon.poll() is None
        # 3. Space again: the next run retries and ingests the lines, once.
        resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, unlimited)
        wait_for(lambda: ingested_through(home) == end, proc=daemon, what="the retried fine-tune")
        wait_for(lambda: not query(home, "select id from runs where status = 'running'"),
                 proc=daemon, what="runs to be closed")
    finally:
        assert stop(daemon) == 0
    assert integrity_ok(db)
    assert ingest_gaps(home) == []
    now = samples_snapshot(home)
    assert all(now[i] == text for i, text in tweets.items())
    completed = query(home, "select * from runs where kind = 'finetune' and status = 'completed'")
    assert len(completed) == 1
    load_checkpoint(CheckpointManager(home / "checkpoints").promoted_path())


def test_a_locked_database_makes_jobs_retry_and_drops_nothing(tmp_path: Path) -> None:
    # Long fine-tunes (100 steps, a loss row every 5), so the lock can start in the middle of one.
    home = make_home(tmp_path, initial_steps=20, checkpoint_every=1000, db_busy_timeout_seconds=0.5,
                     finetune_min_steps=100, finetune_max_steps=100)
    daemon = start_daemon(home)
    db = home / "db" / "tweetgen.db"
    try:
        first_tweets(home, daemon)
        tweets = samples_snapshot(home)
        mark = len(log_text(home))
        end = append(home, 5, 1000)
        wait_for(lambda: "fine-tune run 2:" in log_text(home)[mark:], proc=daemon, interval=0.02,
                 what="the fine-tune to start")
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock for 5 s
        locked_at = time.monotonic()
        try:
            wait_for(lambda: "kept in memory" in log_text(home)[mark:] and
                     "locked by another writer" in log_text(home)[mark:], timeout=8, proc=daemon,
                     what="a refused tweet write and a refused fine-tune")
            # Readers are not blocked by a writer.
            assert json.loads(tweetgen(home, "tweets", "--json", "--limit", "3").stdout)
            time.sleep(max(0.0, locked_at + 5 - time.monotonic()))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        wait_for(lambda: ingested_through(home) == end, proc=daemon, what="the retried fine-tune")
        wait_for(lambda: "kept from a run whose write failed" in log_text(home)[mark:], proc=daemon,
                 what="the kept tweets to be stored")
    finally:
        assert stop(daemon) == 0
    assert ingest_gaps(home) == []
    now = samples_snapshot(home)
    assert all(now[i] == text for i, text in tweets.items())
    errors = query(home, "select * from job_events where event = 'error'")
    assert any("locked by another writer" in e["error"] for e in errors)  # recorded once it could be
    # The run the lock broke could not record its end then: the daemon closed it as failed, and
    # the next job, finding its checkpoint finished, recorded its promotion decision and closed
    # it as completed (issue 13.9: it used to stay 'failed' for good).
    run = query(home, "select * from runs where id = 2")[0]
    assert run["status"] == "completed" and run["promoted"] is not None and run["promotion"]
    assert run["error"] is None or "locked by another writer" in run["error"]
    assert not query(home, "select id from runs where status = 'running'")
    assert integrity_ok(db)


WRITER = """
import json, subprocess, sys, urllib.request
home, writer, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for batch in range(4):
    lines = [f"writer {writer} line {batch * 250 + k} " + "x" * (k % 40) for k in range(250)]
    if url == "cli":  # `tweetgen append -`, one process per batch
        subprocess.run([sys.executable, "-m", "tweetgen.cli", "--home", home, "append", "-"],
                       input="".join(line + "\\n" for line in lines).encode(), check=True,
                       capture_output=True)
    else:  # POST /api/corpus to the daemon's HTTP API
        request = urllib.request.Request(url + "/api/corpus", json.dumps({"lines": lines}).encode(),
                                         {"Content-Type": "application/json"})
        assert json.load(urllib.request.urlopen(request, timeout=60))["added"] == 250
"""


def test_four_concurrent_writers_and_readers_while_the_daemon_ingests(tmp_path: Path) -> None:
    # Two writers use `tweetgen append`, two the daemon's HTTP API, all at once.
    home = make_home(tmp_path, initial_steps=20, checkpoint_every=10, min_new_lines=50,
                     http_address="127.0.0.1:0")
    daemon = start_daemon(home)
    db = home / "db" / "tweetgen.db"
    errors: list[str] = []
    done = threading.Event()

    def read() -> None:
        with Store(db) as store:
            while not done.is_set():
                try:
                    store.query_samples(limit=20)
                    store.count_samples(search="the")
                    store.list_ingests(5)
                except Exception as exc:  # any error a reader sees fails the test
                    errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)

    try:
        first_tweets(home, daemon)
        url = wait_for(lambda: re.search(r"on (http://127\.0\.0\.1:\d+)", log_text(home)),
                       proc=daemon, what="the HTTP address").group(1)
        readers = [threading.Thread(target=read) for _ in range(2)]
        for thread in readers:
            thread.start()
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(w),
                                     "cli" if w < 2 else url], cwd=REPO) for w in range(4)]
        for _ in range(3):
            result = tweetgen(home, "tweets", "--json", "--limit", "5", check=False)
            if result.returncode != 0:
                errors.append(result.stderr)
        assert [w.wait(180) for w in writers] == [0] * 4
        end = complete_lines_end(home / "data" / "corpus.txt")
        wait_for(lambda: ingested_through(home) == end, timeout=120, proc=daemon,
                 what="every appended line to be ingested")
        done.set()
        for thread in readers:
            thread.join()
    finally:
        done.set()
        assert stop(daemon) == 0
    assert errors == []
    lines = (home / "data" / "corpus.txt").read_text().splitlines()
    written = [line for line in lines if line.startswith("writer ")]
    assert len(written) == len(set(written)) == 4000  # every line whole, none twice
    for w in range(4):
        mine = [int(line.split()[3]) for line in written if line.split()[1] == str(w)]
        assert mine == list(range(1000))  # each writer's lines in its order
    assert ingest_gaps(home) == []
    assert len(query(home, "select id from ingests")) >= 2


def test_tensorflow_imported_first_leaves_full_text_search_working(tmp_path: Path) -> None:
    # TensorFlow's libraries carry an SQLite without FTS5; loaded before Python's sqlite3 they
    # broke every tweet insert (the samples' full-text index) in the commands that import it.
    script = ("import sys; import tweetgen.engine; from tweetgen.store import Store; "
              "store = Store(sys.argv[1]); store.add_samples([{'text': 'a cat'}]); "
              "print(store.count_samples(search='cat'))")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.db")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1"
