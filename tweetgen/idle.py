"""The idle-training job: when no other job is due, keep training the latest model.

A daemon left for weeks would otherwise serve a model of its first minutes. Idle training
continues the latest checkpoint on the whole corpus the model has ingested (the newest
`idle_recent_lines` of the lines appended since its last whole-corpus training drawn
`idle_recent_weight` times as often: see tweetgen.trainer.fresh_training_lines), in runs of
`idle_cycle_steps` steps, and yields at the very next step when another job is submitted (the daemon's
`preempted`), on a stop signal, or when the day's `idle_max_hours_per_day` is spent. A yielded
run is continued by the next idle slice from its checkpoint, on the same batches.

Each checkpoint is validated; a checkpoint better than the served model is promoted
(tweetgen.promotion), rotation keeps the best. After `idle_patience` checkpoints without a
better validation the stretch stops by itself (a small corpus overfits), and stays stopped
until a fine-tune brings new lines. Its state is in the checkpoint's job, so restarts keep it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .config import Settings
from .engine import StoreRecorder, TrainerCache, checkpoint_manager, run_plan, sync_checkpoint_flags
from .promotion import DRIFT_KEY, Figures, decide, known, promote, read_drift, with_drift
from .status import IDLE_STATE_KEY
from .store import Store
from .trainer import TrainData, Trainer, TrainJob, build_data, fresh_of

log = logging.getLogger(__name__)

STATE_KEY = IDLE_STATE_KEY  # meta: what idle training is doing, for status and the review page

USED_KEY = "idle_seconds_used"  # meta: {"day": "YYYY-MM-DD", "seconds": float}
IMPROVEMENT = 1e-4  # bits/char: a smaller gain does not count as better


@dataclass
class Slice:
    """What one idle slice did."""

    run_id: int | None
    steps: int
    ended: str  # "yielded", "exhausted", "budget", "cycle", "interrupted"


def next_idle_job(settings: Settings, trainer: Trainer, meta: dict) -> TrainJob | None:
    """The idle job to run from the latest checkpoint, or None when idle training must wait
    (a fine-tune is unfinished, or the stretch ran out of patience and no new lines came)."""
    job = TrainJob.from_dict(meta["job"])
    if job.kind == "finetune" and not job.done:
        return None
    if job.kind == "idle" and not job.done:
        return job
    if job.kind == "idle" and exhausted(settings, job):
        return None
    cursor = int(meta["trained_through"])
    carried = job if job.kind == "idle" else None  # a finished cycle: the stretch goes on
    return TrainJob("idle", settings.random_seed + trainer.step, cursor, cursor,
                    trainer.step + settings.idle_cycle_steps, settings.idle_learning_rate,
                    corpus_identity=meta.get("corpus_identity"),
                    best_bpc=carried.best_bpc if carried else None,
                    stale_checkpoints=carried.stale_checkpoints if carried else 0,
                    fresh_from=fresh_of(meta["job"]))


def exhausted(settings: Settings, job: TrainJob) -> bool:
    return job.stale_checkpoints >= settings.idle_patience


def seconds_left_today(settings: Settings, store: Store) -> float:
    used = json.loads(store.get_meta(USED_KEY) or "{}")
    spent = used.get("seconds", 0.0) if used.get("day") == _today() else 0.0
    return settings.idle_max_hours_per_day * 3600 - spent


def add_seconds_used(store: Store, seconds: float) -> None:
    used = json.loads(store.get_meta(USED_KEY) or "{}")
    spent = used.get("seconds", 0.0) if used.get("day") == _today() else 0.0
    store.set_meta(USED_KEY, json.dumps({"day": _today(), "seconds": spent + seconds}))


def set_state(store: Store, state: str, **details: object) -> None:
    store.set_meta(STATE_KEY, json.dumps({"state": state, "since": datetime.now(UTC).isoformat(),
                                          **details}))


def run_idle(settings: Settings, store: Store, trainers: TrainerCache,
             preempted: Callable[[], bool], stopping: Callable[[], bool]) -> Slice | None:
    """One idle slice; None when there is nothing to do (off, waiting, no budget, no model)."""
    if not settings.idle_training or preempted():
        return None
    manager = checkpoint_manager(settings)
    loaded = trainers.latest(settings, manager)
    if loaded is None:
        return None
    trainer, meta = loaded
    job = next_idle_job(settings, trainer, meta)
    if job is None:
        return None
    budget = seconds_left_today(settings, store)
    if budget <= 0:
        set_state(store, "paused", reason=f"idle_max_hours_per_day ({settings.idle_max_hours_per_day}) "
                                          "spent today")
        return None
    data = build_data(settings, trainer.vocab, job)
    if not data.train:
        return None
    run_id = store.start_run("idle", os.getpid(), start_step=trainer.step,
                             val_bpc_before=known(job.best_bpc), config=run_plan(job.target_step))
    set_state(store, "training", run=run_id, step=trainer.step, target_step=job.target_step,
              best_bpc=known(job.best_bpc))
    started = time.monotonic()
    first_step = trainer.step
    recorder = StoreRecorder(store, run_id, manager)
    why: list[str] = []

    def should_stop() -> bool:
        if stopping():
            why.append("interrupted")
        elif preempted():
            why.append("yielded")
        elif time.monotonic() - started >= budget:
            why.append("budget")
        return bool(why)

    def on_validated(bpc: float) -> None:
        # Before the job is written into the checkpoint, so a restart keeps the count.
        if trainer.step % settings.checkpoint_every == 0 or trainer.step >= job.target_step:
            count_patience(job, bpc)  # a checkpoint written because a job was due does not count
        if exhausted(settings, job):  # end the run here: the loop stops, the job is done
            job.target_step = trainer.step

    def on_checkpoint(path: Path, checkpoint_meta: dict) -> None:
        recorder.on_checkpoint(path, checkpoint_meta)
        _promote_if_better(settings, store, trainers, trainer, data, path, checkpoint_meta)
        set_state(store, "training", run=run_id, step=trainer.step, target_step=job.target_step,
                  best_bpc=known(job.best_bpc), last_bpc=known(checkpoint_meta.get("val_bpc")),
                  stale_checkpoints=job.stale_checkpoints, patience=settings.idle_patience)

    try:
        result = trainer.run(job, data, manager, should_stop=should_stop, on_log=recorder.on_log,
                             on_checkpoint=on_checkpoint, on_validated=on_validated)
    except Exception as exc:
        store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}",
                         steps=trainer.step - first_step, bad_steps=trainer.bad_steps)
        trainers.forget()
        raise
    finally:
        add_seconds_used(store, time.monotonic() - started)
    if result.checkpoint is not None:
        trainers.keep(trainer, result.checkpoint)
    # else no step was taken (preempted before the first one): the trainer is still the newest
    # checkpoint's state, which the cache holds. Forgetting it made the next job build the model
    # and trace its steps again: seconds of a late job, and memory TensorFlow never gives back
    # (bench/soak.py's steps of +12 to +50 MB).
    ended = why[0] if why else ("exhausted" if exhausted(settings, job) else "cycle")
    store.finish_run(run_id, "interrupted" if ended == "interrupted" else "completed",
                     steps=result.steps, val_bpc_after=known(job.best_bpc), bad_steps=result.bad_steps,
                     checkpoint_id=recorder.last_checkpoint_id,
                     config={**run_plan(job.target_step), "ended": ended})
    _record_state(settings, store, job, run_id, ended)
    log.info("idle training run %d: %d steps, %s; best validation %s bits/char", run_id, result.steps,
             ended, f"{job.best_bpc:.4f}" if known(job.best_bpc) else "-")
    return Slice(run_id, result.steps, ended)


def count_patience(job: TrainJob, bpc: float | None) -> None:
    """A better validation resets the count of checkpoints since the best one."""
    bpc = known(bpc)
    if bpc is not None and (job.best_bpc is None or bpc < job.best_bpc - IMPROVEMENT):
        job.best_bpc, job.stale_checkpoints = bpc, 0
    else:
        job.stale_checkpoints += 1


def _promote_if_better(settings: Settings, store: Store, trainers: TrainerCache, trainer: Trainer,
                       data: TrainData, path: Path, meta: dict) -> None:
    manager = checkpoint_manager(settings)
    served = with_drift(trainers.served.figures_on(manager, trainer.vocab, data.validation),
                        read_drift(store.get_meta(DRIFT_KEY)))
    decision = decide("idle", served, Figures(meta.get("val_bpc")), settings.promote_tolerance_bpc)
    if decision.promote:
        promote(store, manager, path, decision)
        sync_checkpoint_flags(store, manager)
        log.info("idle training: checkpoint %s promoted (%s)", path.name, decision.reason)


def _record_state(settings: Settings, store: Store, job: TrainJob, run_id: int, ended: str) -> None:
    if ended == "exhausted":
        set_state(store, "stopped", run=run_id, best_bpc=known(job.best_bpc),
                  reason=f"no better validation in {settings.idle_patience} checkpoints; "
                         "new lines start it again")
    elif ended == "budget":
        set_state(store, "paused", run=run_id, reason="the day's idle_max_hours_per_day is spent")
    else:
        set_state(store, "waiting", run=run_id, best_bpc=known(job.best_bpc),
                  reason="yielded to a job" if ended == "yielded" else ended)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()
