"""What a newcomer reads (issue 16), end to end on real files: a wrong corpus path or setting name
is one clear line, status shows the running job with an ETA, reads create nothing, and generate
before the first checkpoint says when there will be one."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from daemon_helpers import log_text, make_home, start_daemon, stop, tweetgen, wait_for
from fastapi.testclient import TestClient

from tweetgen.config import load_settings


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tweetgen: error:")]


def test_a_corpus_path_the_user_set_must_exist(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "tweetgen.toml").write_text('corpus_path = "lines/mine.txt"\n')
    for command in (["train", "--steps", "1"], ["daemon"]):
        result = tweetgen(home, *command, check=False)
        assert result.returncode == 2, result.stderr
        [line] = error_lines(result.stderr)
        assert f"corpus {home / 'lines' / 'mine.txt'} does not exist" in line
        assert str(home / "tweetgen.toml") in line and "Traceback" not in result.stderr
        # No fortunes written there, and no folder made before the error.
        assert sorted(p.name for p in home.iterdir()) == ["tweetgen.toml"]


def test_a_misspelled_variable_is_warned_with_the_closest_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TWEETGEN_INITIAL_STEP", "5")
    result = tweetgen(tmp_path, "status")
    assert ("environment variable TWEETGEN_INITIAL_STEP is not a tweetgen setting and is ignored; "
            "did you mean TWEETGEN_INITIAL_STEPS?") in result.stderr


def test_read_only_commands_create_nothing(tmp_path: Path) -> None:
    assert "daemon: not running (state never started" in tweetgen(tmp_path, "status").stdout
    assert tweetgen(tmp_path, "runs").stdout.strip() == "no runs yet"
    assert tweetgen(tmp_path, "losses").stdout.strip() == "no losses yet"
    assert tweetgen(tmp_path, "tweets").stdout.strip() == "no tweets match"
    chat = tweetgen(tmp_path, "chat", check=False, input="hello\n")
    assert chat.returncode == 2 and "no daemon is running" in chat.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_and_generate_while_the_daemon_trains_the_first_checkpoint(tmp_path: Path) -> None:
    home = make_home(tmp_path, initial_steps=1_000_000, checkpoint_every=1_000_000)
    daemon = start_daemon(home)
    try:
        def running() -> dict | None:
            data = json.loads(tweetgen(home, "status", "--json").stdout)
            job = data["running"]
            return job if job and job["eta_seconds"] is not None and job["val_bpc"] is None \
                and job["train_bpc"] is not None else None

        job = wait_for(running, what="a running initial job with an ETA", proc=daemon)
        assert job["kind"] == "initial" and job["steps_total"] == 1_000_000
        assert 0 < job["steps_done"] < 1_000_000 and job["eta_seconds"] > 0
        assert isinstance(job["train_bpc"], float)  # exact in --json

        text = tweetgen(home, "status").stdout
        assert re.search(r"running: initial run #1: step \d+ of 1000000 \(\d+%\), ETA \S+ \(\d\d:\d\d UTC\); "
                         r"training loss \d+\.\d{4} bits/char, last validation -", text), text

        settings = load_settings(overrides={"home": str(home)}, environ={})
        from tweetgen.web.app import create_app

        with TestClient(create_app(settings), base_url="http://127.0.0.1") as http:
            api = http.get("/api/status").json()
        assert api["running"]["run"] == 1 and api["running"]["steps_total"] == 1_000_000

        result = tweetgen(home, "generate", "--seed", "the", check=False)
        assert result.returncode == 2
        [line] = error_lines(result.stderr)
        assert re.search(rf"no usable checkpoint in {home / 'checkpoints'} yet: the daemon \(pid "
                         rf"{daemon.pid}\) is training the first one, initial run #1: step \d+ of 1000000 "
                         r"\(\d+%\), ETA ", line), line
    finally:
        assert stop(daemon, signal.SIGTERM) == 0
    log = log_text(home)
    assert f"settings from defaults, then {home / 'tweetgen.toml'} (" in log
    assert re.search(r"step \d+/1000000: training loss \d\.\d{4} bits/char", log)
    assert log.count("oneDNN custom operations") <= 1


def test_a_run_for_people_shows_both_figures_rounded_and_the_promotion() -> None:
    from tweetgen.status import run_text

    row = {"id": 3, "kind": "finetune", "status": "completed", "started": "2026-12-04T15:01:10.123456+00:00",
           "steps": 40, "val_bpc_before": 2.747828812310394, "val_bpc_after": 2.70001, "promoted": 1,
           "error": None}
    assert run_text(row) == ("#3 finetune completed, started 2026-12-04T15:01:10, steps 40, "
                             "validation 2.7478 -> 2.7000 bits/char, promoted yes")
    rejected = {**row, "promoted": 0, "val_new_bpc_before": 3.1, "val_new_bpc_after": None,
                "promotion": "worse on the new lines"}
    assert run_text(rejected).endswith("validation 2.7478 -> 2.7000 bits/char, new lines 3.1000 -> - "
                                       "bits/char, promoted no (worse on the new lines)")
    initial = {**row, "kind": "initial", "val_bpc_before": None, "promoted": None, "steps": None}
    assert "steps -, validation - -> 2.7000 bits/char, promoted -" in run_text(initial)


def test_status_says_what_idle_training_is_doing(tmp_path: Path) -> None:
    """`tweetgen status` (and its JSON) shows the idle-training state the daemon records."""
    from tweetgen.idle import set_state
    from tweetgen.store import Store

    home = make_home(tmp_path, idle_training=True)
    with Store(home / "db" / "tweetgen.db") as store:
        set_state(store, "training", run=7, step=1200, target_step=4000, best_bpc=2.08761,
                  stale_checkpoints=2, patience=6)
    text = tweetgen(home, "status").stdout
    assert "idle training: training (step 1200 of the run to 4000), best validation 2.0876 bits/char, " \
           "2 of 6 checkpoints without a better one" in text
    data = json.loads(tweetgen(home, "status", "--json").stdout)
    assert data["idle_training"]["best_bpc"] == 2.08761 and data["idle_training"]["run"] == 7
