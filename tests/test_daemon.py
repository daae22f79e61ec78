"""The daemon end to end: real processes, real signals, real files in a temp folder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import make_home, query, start_daemon, stop, tweetgen, wait_for

pytestmark = pytest.mark.slow


def test_daemon_trains_tweets_ingests_and_stops_cleanly(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    corpus = home / "data" / "corpus.txt"
    daemon = start_daemon(home)
    try:
        db = home / "db" / "tweetgen.db"
        wait_for(lambda: db.exists() and query(home, "select count(*) n from samples")[0]["n"] > 0,
                 what="first tweets", proc=daemon)
        runs = query(home, "select * from runs")
        assert [r["kind"] for r in runs] == ["initial"] and runs[0]["status"] == "completed"
        assert query(home, "select count(*) n from losses where run_id = ?", [runs[0]["id"]])[0]["n"] >= 6
        initial_end = corpus.stat().st_size
        assert query(home, "select end_offset from ingests")[0]["end_offset"] == initial_end

        # A second daemon on the same home is refused with a clear message.
        second = subprocess.run([sys.executable, "run_daemon.py", "--home", str(home)],
                                cwd=Path(__file__).resolve().parents[1], capture_output=True,
                                text=True, timeout=60)
        assert second.returncode != 0
        assert "in use by another tweetgen daemon" in second.stderr

        status = json.loads(tweetgen(home, "status", "--json").stdout)
        assert status["daemon"]["alive"] is True and status["daemon"]["pid"] == daemon.pid

        # Append a line that is not UTF-8, then 3 valid lines (one with a new character seen 3
        # times) through the CLI, then a partial last line that must wait for its newline.
        with open(corpus, "ab") as handle:
            handle.write(b"bad \xff\xfe line\n")
        tweetgen(home, "append", "the cat sat on the mat", "ñaña ñu", "a dog ran fast")
        complete_end = corpus.stat().st_size
        with open(corpus, "ab") as handle:
            handle.write(b"the partial line")
        wait_for(lambda: query(home, "select * from runs where kind='finetune' and status='completed'"),
                 what="fine-tune run", proc=daemon)
        ingest = query(home, "select * from ingests order by id desc limit 1")[0]
        assert (ingest["start_offset"], ingest["end_offset"]) == (initial_end, complete_end)
        assert ingest["lines"] == 3 and ingest["rejected"] == 1
        assert json.loads(ingest["rejected_reasons"]) == {"invalid utf-8": 1}
        assert ingest["new_chars"] == "ñ"
        run = query(home, "select * from runs where kind='finetune'")[0]
        assert run["new_lines"] + run["replay_lines"] > 0 and run["val_bpc_after"] is not None
        assert query(home, "select count(*) n from losses where run_id = ?", [run["id"]])[0]["n"] > 0
        ckpt = query(home, "select * from checkpoints where id = ?", [run["checkpoint_id"]])[0]
        assert ckpt["corpus_cursor"] == complete_end and ckpt["is_latest"] == 1

        # Finishing the partial line makes it the next fine-tune's only new line.
        with open(corpus, "ab") as handle:
            handle.write(b" is done\nline two\nline three\n")
        wait_for(lambda: len(query(home, "select * from ingests")) == 3, what="second ingest", proc=daemon)
        last = query(home, "select * from ingests order by id desc limit 1")[0]
        assert last["start_offset"] == complete_end and last["lines"] == 3

        # The CLI reads and reviews the live database.
        rows = json.loads(tweetgen(home, "tweets", "--json", "--limit", "3").stdout)
        assert rows and all(len(r["text"]) <= 140 for r in rows)
        tweetgen(home, "review", str(rows[0]["id"]), "--approve")
        approved = json.loads(tweetgen(home, "tweets", "--status", "approved", "--json").stdout)
        assert [r["id"] for r in approved] == [rows[0]["id"]]
        csv_out = tweetgen(home, "tweets", "--format", "csv", "--limit", "2").stdout
        assert csv_out.splitlines()[0].startswith("id,")
    finally:
        code = stop(daemon)
    assert code == 0
    assert "daemon stopped" in (home / "daemon.log").read_text()
    assert query(home, "select state from daemon")[0]["state"] == "stopped"
    status = json.loads(tweetgen(home, "status", "--json").stdout)
    assert status["daemon"]["alive"] is False


def test_sigterm_mid_training_checkpoints_and_kill9_resumes(tmp_path: Path) -> None:
    home = make_home(tmp_path, initial_steps=1_000_000, checkpoint_every=25)
    ckpts = home / "checkpoints"
    daemon = start_daemon(home)
    try:
        wait_for(lambda: ckpts.is_dir() and list(ckpts.glob("ckpt-*.npz")), what="a checkpoint",
                 proc=daemon)
        # The 3 s generate job cannot start while the initial training runs: one run waits for
        # the worker, each later one is skipped and recorded as a job event, and only the first
        # skip is logged (at INFO, not APScheduler's WARNING).
        wait_for(lambda: query(home, "select count(*) n from job_events where job_id = 'generate' "
                                     "and event = 'skipped'")[0]["n"] >= 3,
                 timeout=40, what="skipped generate runs recorded", proc=daemon)
        time.sleep(0.5)
    finally:
        assert stop(daemon) == 0
    log = (home / "daemon.log").read_text()
    assert log.count("INFO tweetgen.daemon: job generate skipped: its previous run is still running") == 1
    assert "maximum number of running instances" not in log
    run = query(home, "select * from runs")[0]
    assert run["status"] == "interrupted"
    steps = sorted(int(p.stem.split("-")[1]) for p in ckpts.glob("ckpt-*.npz"))
    assert steps[-1] == run["steps"]  # the stop wrote a checkpoint at the very step it reached

    # Restart: the initial training resumes from that checkpoint; then kill -9 mid-training.
    daemon = start_daemon(home)
    try:
        wait_for(lambda: f"resuming the initial training at step {steps[-1]}"
                 in (home / "daemon.log").read_text(), what="resume", proc=daemon)
        wait_for(lambda: max(int(p.stem.split("-")[1]) for p in ckpts.glob("ckpt-*.npz")) > steps[-1],
                 what="a newer checkpoint", proc=daemon)
    finally:
        stop(daemon, signal.SIGKILL)
    assert query(home, "select status from runs order by id")[-1]["status"] == "running"
    latest = max(int(p.stem.split("-")[1]) for p in ckpts.glob("ckpt-*.npz"))

    # After kill -9: the run left running is marked crashed and training carries on.
    daemon = start_daemon(home)
    try:
        wait_for(lambda: f"resuming the initial training at step {latest}"
                 in (home / "daemon.log").read_text(), what="resume after kill -9", proc=daemon)
        statuses = [r["status"] for r in query(home, "select status from runs order by id")]
        assert statuses[:2] == ["interrupted", "crashed"]
        crashed = query(home, "select error from runs where status='crashed'")[0]
        assert "process died" in crashed["error"]
    finally:
        assert stop(daemon) == 0


def test_a_failing_start_up_is_retried_with_backoff_then_recovers(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    corpus = home / "data" / "corpus.txt"
    corpus.write_text("   \n\n")  # no usable line: the initial training cannot start
    daemon = start_daemon(home)
    try:
        # Jobs tick every second; the retries come after 1, 2, 4 then 8 s, not at every tick.
        wait_for(lambda: "the start-up failed 4 time(s) in a row: next try in 8 s" in
                 (home / "daemon.log").read_text(), timeout=60, what="a fourth failed start-up",
                 proc=daemon)
        log = (home / "daemon.log").read_text()
        for failures, delay in ((1, 1), (2, 2), (3, 4)):
            assert f"failed {failures} time(s) in a row: next try in {delay} s" in log
        errors = query(home, "select * from job_events where event = 'error'")
        assert len(errors) == 4 and all("no usable lines" in e["error"] for e in errors)
        tweetgen(home, "append", *[f"the cat sat on mat number {i}" for i in range(50)])
        wait_for(lambda: query(home, "select count(*) n from samples")[0]["n"] > 0, timeout=90,
                 what="tweets once the corpus has lines", proc=daemon)
    finally:
        assert stop(daemon) == 0


def test_one_generate_run_at_start_and_one_batch_per_run(tmp_path: Path) -> None:
    """The start-up no longer generates: the generate job, queued behind it, stores the first
    tweets, once (it used to be both, two batches within milliseconds)."""
    home = make_home(tmp_path, generate_interval_minutes=60, seeds=["The", "the ", "", "a"])
    daemon = start_daemon(home)
    try:
        wait_for(lambda: (home / "db" / "tweetgen.db").exists() and query(
            home, "select 1 from job_events where job_id = 'generate' and event = 'executed'"),
            what="the first generate run", proc=daemon)
        startup = query(home, "select created from job_events where job_id = 'startup'")
        batches = query(home, "select created, count(*) n from samples group by created")
        seeds = {r["seed"] for r in query(home, "select distinct seed from samples")}
    finally:
        code = stop(daemon)
    assert code == 0
    assert len(startup) == 1 and len(batches) == 1
    assert batches[0]["created"] > startup[0]["created"]
    assert seeds <= {"The", "", "a"}  # 'the ' is 'The' but for case and spacing
