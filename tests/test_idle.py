"""Idle training: in-process slices (patience, yielding, promotion) and the real daemon."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
from pathlib import Path

import pytest
from conftest import varied_lines, write_corpus
from daemon_helpers import make_home, query, start_daemon, stop, wait_for


def test_recent_lines_are_weighted_up_reproducibly() -> None:
    from tweetgen.trainer import with_recent_weighted

    lines = [f"l{i}" for i in range(10)]
    out = with_recent_weighted(lines, 4, 2.5, random.Random(1))
    assert out[:10] == lines
    extra = out[10:]
    assert len(extra) == 4 + 2 and set(extra) <= {"l6", "l7", "l8", "l9"}
    assert out == with_recent_weighted(lines, 4, 2.5, random.Random(1))
    assert with_recent_weighted(lines, 4, 1.0, random.Random(1)) == lines


def test_idle_training_weights_up_only_lines_appended_since_the_whole_corpus_training(
        make_settings, tmp_path) -> None:
    """Recent lines are the ones new to the model: none right after the initial training (drawing
    the corpus's last lines more often would only overfit them), the fine-tuned ones after it."""
    from tweetgen import corpus
    from tweetgen.checkpoints import read_meta
    from tweetgen.engine import TrainerCache, checkpoint_manager
    from tweetgen.finetune import run_finetune
    from tweetgen.idle import next_idle_job
    from tweetgen.trainer import build_data, fresh_of, fresh_training_lines, split_lines

    settings, store = _home(make_settings, tmp_path, idle_recent_weight=3.0, min_new_lines=1)
    initial_end = corpus.complete_end(settings.corpus_file)
    trainers = TrainerCache()

    def idle_job():
        trainer, meta = trainers.latest(settings, checkpoint_manager(settings))
        return trainer, next_idle_job(settings, trainer, meta)

    trainer, job = idle_job()
    assert job.fresh_from == initial_end
    lines = corpus.read_lines(settings.corpus_file).lines
    trained, _ = split_lines(lines, settings.validation_fraction)
    assert fresh_training_lines(settings, job, lines) == 0
    assert len(build_data(settings, trainer.vocab, job).train) == len(trained)  # no line drawn twice

    new = [f"fresh line {i} about the zeppelin" for i in range(30)]
    corpus.append_lines(settings.corpus_file, new)
    assert run_finetune(settings, store, trainers=trainers) is not None
    assert read_meta(checkpoint_manager(settings).paths()[-1])["job"]["fresh_from"] == initial_end
    trainer, job = idle_job()
    assert job.fresh_from == initial_end and job.corpus_end > initial_end
    lines = corpus.read_lines(settings.corpus_file).lines
    fresh = [line for line in new if not corpus.is_validation(line, settings.validation_fraction)]
    assert fresh_training_lines(settings, job, lines) == len(fresh) > 20
    trained, _ = split_lines(lines, settings.validation_fraction)
    assert len(build_data(settings, trainer.vocab, job).train) == len(trained) + 2 * len(fresh)
    # A checkpoint written before fresh_from was recorded: every line counts as new, as before.
    assert fresh_of({"kind": "idle", "corpus_end": 5}) is None
    job.fresh_from = None
    assert fresh_training_lines(settings, job, lines) == len(trained)
    store.close()


def _home(make_settings, tmp_path, **overrides):
    from tweetgen import engine
    from tweetgen.store import Store

    settings = make_settings(tmp_path, checkpoint_every=10, idle_cycle_steps=30, idle_patience=2,
                             idle_learning_rate=3e-3, validation_fraction=0.15, **overrides)
    write_corpus(settings.corpus_file, varied_lines(120))
    store = Store(settings.db_file)
    outcome = engine.train(settings, 20, store=store)
    engine.checkpoint_manager(settings).promote(outcome.result.checkpoint)
    return settings, store


def test_idle_training_improves_promotes_and_stops_by_itself(make_settings, tmp_path) -> None:
    from tweetgen.checkpoints import read_meta
    from tweetgen.engine import TrainerCache, checkpoint_manager
    from tweetgen.idle import STATE_KEY, run_idle

    settings, store = _home(make_settings, tmp_path)
    manager = checkpoint_manager(settings)
    first_served = read_meta(manager.promoted_path())["val_bpc"]
    trainers, slices = TrainerCache(), []
    for _ in range(40):  # bounded: it must stop by itself well before
        done = run_idle(settings, store, trainers, preempted=lambda: False, stopping=lambda: False)
        if done is None:
            break
        slices.append(done)
    assert slices and slices[-1].ended == "exhausted"
    assert all(s.ended == "cycle" for s in slices[:-1])
    runs = store.list_runs(100)
    idle_runs = [r for r in runs if r["kind"] == "idle"]
    assert len(idle_runs) == len(slices) and all(r["status"] == "completed" for r in idle_runs)
    assert store.losses(idle_runs[0]["id"])  # its losses are recorded
    served = read_meta(manager.promoted_path())
    assert served["val_bpc"] < first_served  # it got better and the better model is served
    # The best checkpoint of the stretch is the served one, and is kept by rotation.
    assert manager.best() == manager.promoted_path()
    state = json.loads(store.get_meta(STATE_KEY))
    assert state["state"] == "stopped" and "new lines" in state["reason"]
    # Once exhausted it waits: nothing to do until new lines come.
    assert run_idle(settings, store, trainers, lambda: False, lambda: False) is None
    store.close()


def test_idle_training_yields_at_the_next_step_and_continues_the_same_job(make_settings, tmp_path) -> None:
    from tweetgen.checkpoints import read_meta
    from tweetgen.engine import TrainerCache, checkpoint_manager
    from tweetgen.idle import run_idle

    settings, store = _home(make_settings, tmp_path)
    trainers = TrainerCache()
    calls = []

    def preempted() -> bool:
        calls.append(1)
        return len(calls) > 4  # asked once before the run starts, then before each step: 3 steps

    done = run_idle(settings, store, trainers, preempted, lambda: False)
    assert done.ended == "yielded" and done.steps == 3
    latest = read_meta(checkpoint_manager(settings).paths()[-1])
    assert latest["job"]["kind"] == "idle" and not latest["job"]["done"]
    again = run_idle(settings, store, trainers, lambda: False, lambda: False)
    assert again.steps == settings.idle_cycle_steps - 3  # the same plan, continued
    store.close()


def test_idle_training_preempted_before_its_first_step_keeps_the_trainer(make_settings, tmp_path) -> None:
    """The soak found the daemon's memory stepping up when an idle slice yielded before its
    first step: the cache dropped the trainer and the next job built and traced it again."""
    from tweetgen.engine import TrainerCache
    from tweetgen.idle import run_idle

    settings, store = _home(make_settings, tmp_path)
    trainers = TrainerCache()
    calls = []

    def preempted() -> bool:
        calls.append(1)
        return len(calls) > 1  # a job falls due right after the slice starts: no step taken

    done = run_idle(settings, store, trainers, preempted, lambda: False)
    assert done.ended == "yielded" and done.steps == 0
    kept = trainers.trainer
    assert kept is not None
    again = run_idle(settings, store, trainers, lambda: False, lambda: False)
    assert again.steps > 0 and trainers.trainer is kept  # the same trainer: nothing rebuilt
    store.close()


def test_idle_training_is_off_or_paused_by_settings(make_settings, tmp_path) -> None:
    from tweetgen.engine import TrainerCache
    from tweetgen.idle import STATE_KEY, add_seconds_used, run_idle

    settings, store = _home(make_settings, tmp_path, idle_training=False)
    assert run_idle(settings, store, TrainerCache(), lambda: False, lambda: False) is None
    budgeted = dataclasses.replace(settings, idle_training=True, idle_max_hours_per_day=0.001)
    add_seconds_used(store, 3.6)
    assert run_idle(budgeted, store, TrainerCache(), lambda: False, lambda: False) is None
    assert json.loads(store.get_meta(STATE_KEY))["state"] == "paused"
    store.close()


@pytest.mark.slow
def test_daemon_idle_trains_between_jobs_without_delaying_them(tmp_path: Path) -> None:
    """The real daemon: idle runs fill the time between generate jobs, every generate job starts
    within 2 s of its time, SIGTERM interrupts idle training cleanly and kill -9 resumes it."""
    home = make_home(tmp_path, idle_training=True, idle_check_seconds=1, idle_cycle_steps=400,
                     idle_patience=1000, generate_interval_minutes=0.05)
    daemon = start_daemon(home)
    try:
        wait_for(lambda: len(query(home, "select * from job_events where job_id='generate' and "
                                         "delay_s is not null and created > (select min(started) from "
                                         "runs where kind='idle')")) >= 3, what="generate jobs", proc=daemon,
                 timeout=120)
    finally:
        assert stop(daemon) == 0
    # Generate jobs due while idle training ran (not those queued behind the initial training).
    first_idle = query(home, "select min(started) t from runs where kind='idle'")[0]["t"]
    delays = [r["delay_s"] for r in query(home, "select delay_s from job_events where job_id='generate' "
                                                "and delay_s is not null and created > ?", [first_idle])]
    assert delays and max(delays) < 2.0, delays
    idle = query(home, "select * from runs where kind='idle' order by id")
    assert any(json.loads(r["config"])["ended"] == "yielded" for r in idle if r["config"])
    assert query(home, "select count(*) n from losses where run_id = ?", [idle[0]["id"]])[0]["n"] > 0

    # With no job due for an hour, idle training runs on until a signal stops it.
    toml = home / "tweetgen.toml"
    toml.write_text(toml.read_text().replace("generate_interval_minutes = 0.05",
                                             "generate_interval_minutes = 60"))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        daemon = start_daemon(home)
        try:
            [running] = wait_for(lambda: query(home, "select id from runs where kind='idle' and "
                                                     "status='running' and steps is null"),
                                 what="an idle run", proc=daemon, timeout=120)
        finally:
            code = stop(daemon, sig)
        if sig == signal.SIGTERM:
            assert code == 0
            assert query(home, "select status from runs where id = ?", [running["id"]])[0]["status"] \
                == "interrupted"
    daemon = start_daemon(home)
    try:
        wait_for(lambda: query(home, "select status from runs where id = ?", [running["id"]])[0]["status"]
                 == "crashed", what="the killed idle run marked crashed", proc=daemon)
        wait_for(lambda: query(home, "select * from runs where kind='idle' and id > ?", [running["id"]]),
                 what="idle training after kill -9", proc=daemon, timeout=120)
    finally:
        assert stop(daemon) == 0
