"""The ingest + fine-tune job: train on the lines appended since the last run, with replay.

The latest checkpoint is the truth about what the model has learned: its `trained_through`
byte offset is where new lines start. A job writes its checkpoint first and then records the
ingest, so a crash in between is repaired at the next start (`reconcile_ingests`); a job
stopped part-way is saved in its checkpoint and resumed, so each line is trained as new once.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass

from . import corpus
from .checkpoints import CheckpointError, CheckpointManager, load_checkpoint
from .config import Settings
from .engine import StoreRecorder, checkpoint_manager, sync_checkpoint_flags
from .store import Store
from .trainer import Trainer, TrainJob, build_data, finetune_steps

log = logging.getLogger(__name__)

PENDING_CHARS_KEY = "pending_new_chars"


@dataclass
class IngestScan:
    """What a byte range of the corpus holds."""

    start: int
    end: int
    lines: int
    rejected: Counter
    unknown_chars: int
    unknown: Counter  # characters not in the vocabulary, with counts


def scan_range(settings: Settings, trainer: Trainer, start: int, end: int) -> IngestScan:
    """Stream the range in batches (memory bounded by a batch, whatever the append's size)."""
    rejected, unknown = Counter(), Counter()
    lines = 0
    for batch in corpus.iter_batches(settings.corpus_file, start, end):
        lines += len(batch.lines)
        rejected.update(batch.rejected)
        for line in batch.lines:
            unknown.update(trainer.vocab.unknown_chars(line))
    return IngestScan(start, end, lines, rejected, sum(unknown.values()), unknown)


def latest_trainer(settings: Settings, manager: CheckpointManager) -> tuple[Trainer, dict] | None:
    for path in reversed(manager.paths()):
        try:
            ckpt = load_checkpoint(path)
            return Trainer.from_checkpoint(settings, ckpt), ckpt.meta
        except (CheckpointError, ValueError, KeyError) as exc:
            log.error("checkpoint %s unusable (%s); falling back to the previous one", path.name, exc)
    return None


def new_range_start(settings: Settings, meta: dict, store: Store) -> int:
    """Where new lines start; a truncated or replaced corpus is logged and read from 0."""
    start = int(meta["trained_through"])
    identity = meta.get("corpus_identity")
    path = settings.corpus_file
    if identity is None or start == 0:
        return start
    change = corpus.check_identity(path, start, identity)
    if change is None:
        return start
    log.warning("corpus %s was %s since the last fine-tune: its current lines are all treated as "
                "new (the model keeps what it learned; nothing is retrained from zero)", path, change)
    store.record_job_event("finetune", "error", f"corpus {path} {change}; re-read from offset 0")
    return 0


def grow_vocab_if_due(settings: Settings, trainer: Trainer, store: Store, scan: IngestScan) -> str:
    """Add characters seen at least vocab_grow_min_count times (counted across ingests)."""
    pending = Counter(json.loads(store.get_meta(PENDING_CHARS_KEY) or "{}"))
    pending.update(scan.unknown)
    due = sorted(c for c, n in pending.items() if n >= settings.vocab_grow_min_count)
    if due:
        trainer.grow_vocab(due)
        for c in due:
            del pending[c]
    store.set_meta(PENDING_CHARS_KEY, json.dumps(dict(pending), ensure_ascii=True))
    return "".join(due)


def run_finetune(settings: Settings, store: Store, should_stop=lambda: False) -> dict | None:
    """One fine-tune: resume an unfinished one, or start on the new lines. None if none wait."""
    manager = checkpoint_manager(settings)
    loaded = latest_trainer(settings, manager)
    if loaded is None:
        log.warning("no usable checkpoint: fine-tune skipped until the initial training has run")
        return None
    trainer, meta = loaded
    job = TrainJob.from_dict(meta["job"])
    grown = ""
    if job.kind == "finetune" and not job.done:
        log.info("resuming the fine-tune on bytes %d-%d at step %d of %d", job.corpus_start,
                 job.corpus_end, trainer.step, job.target_step)
        scan = scan_range(settings, trainer, job.corpus_start, job.corpus_end)
    else:
        start = new_range_start(settings, meta, store)
        end = corpus.complete_end(settings.corpus_file)
        if end <= start:
            return None
        scan = scan_range(settings, trainer, start, end)
        grown = grow_vocab_if_due(settings, trainer, store, scan)
        job = TrainJob("finetune", settings.random_seed + trainer.step, start, end, trainer.step,
                       settings.finetune_learning_rate, settings.replay_ratio)
    data = build_data(settings, trainer.vocab, job)
    resumes = job.run_id
    if resumes is None:
        job.target_step = trainer.step + (finetune_steps(settings, len(data.train)) if data.train else 0)
        job.baseline_bpc = trainer.validation_bpc(data)
    # A resumed job gets a run of its own: the stopped one keeps its status (interrupted, crashed).
    job.run_id = store.start_run("finetune", os.getpid(), start_step=trainer.step,
                                 new_lines=data.new_lines, replay_lines=data.replay_lines,
                                 val_bpc_before=_finite(job.baseline_bpc),
                                 config={"resumes_run": resumes} if resumes else None)
    log.info("fine-tune run %d: %d new lines (%d rejected), %d replayed, %d steps, validation "
             "%.4f bits/char before", job.run_id, scan.lines, sum(scan.rejected.values()),
             data.replay_lines, job.target_step - trainer.step, job.baseline_bpc or float("nan"))
    recorder = StoreRecorder(store, job.run_id, manager)
    try:
        result = trainer.run(job, data, manager, should_stop=should_stop, on_log=recorder.on_log,
                             on_checkpoint=recorder.on_checkpoint)
    except Exception as exc:
        store.finish_run(job.run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if result.status == "interrupted":
        store.finish_run(job.run_id, "interrupted", steps=result.steps,
                         checkpoint_id=recorder.last_checkpoint_id)
        return {"run": job.run_id, "status": "interrupted"}
    return finish(settings, store, manager, job, scan, result.val_bpc, recorder, grown, result.bad_steps)


def finish(settings: Settings, store: Store, manager: CheckpointManager, job: TrainJob,
           scan: IngestScan, after: float | None, recorder: StoreRecorder, grown: str,
           bad_steps: int) -> dict:
    before = job.baseline_bpc
    promote = not (_finite(before) is not None and _finite(after) is not None
                   and after > before + settings.promote_tolerance_bpc)
    checkpoint = manager.paths()[-1]
    if promote:
        manager.promote(checkpoint)
    sync_checkpoint_flags(store, manager)
    store.record_ingest(str(settings.corpus_file), scan.start, scan.end, scan.lines,
                        sum(scan.rejected.values()), scan.unknown_chars, grown, job.run_id,
                        corpus.file_identity(settings.corpus_file, scan.end), dict(scan.rejected))
    first_step = store.get_run(job.run_id).get("start_step") or 0
    row = store.get_checkpoint(str(checkpoint))
    store.finish_run(job.run_id, "completed", steps=job.target_step - first_step,
                     val_bpc_after=_finite(after), promoted=int(promote),
                     checkpoint_id=row["id"] if row else None, bad_steps=bad_steps)
    log.info("fine-tune run %d done: validation %.4f -> %.4f bits/char; %s", job.run_id,
             before or float("nan"), after or float("nan"),
             "promoted" if promote else f"NOT promoted (worse by more than {settings.promote_tolerance_bpc})")
    return {"run": job.run_id, "status": "completed", "promoted": promote, "before": before, "after": after}


def reconcile_ingests(settings: Settings, store: Store) -> None:
    """Record an ingest that a crash left unrecorded (its checkpoint was written, its row not)."""
    manager = checkpoint_manager(settings)
    loaded = latest_trainer(settings, manager)
    if loaded is None:
        return
    trainer, meta = loaded
    trained = int(meta["trained_through"])
    cursor = store.cursor(str(settings.corpus_file))
    recorded = cursor["offset"] if cursor else 0
    if trained > recorded and settings.corpus_file.is_file():
        job = meta["job"]
        start = job["corpus_start"] if job["kind"] == "finetune" else 0
        start = max(start, recorded) if job["kind"] == "finetune" else 0
        scan = scan_range(settings, trainer, start, trained)
        store.record_ingest(str(settings.corpus_file), start, trained, scan.lines,
                            sum(scan.rejected.values()), scan.unknown_chars, "", job.get("run_id"),
                            corpus.file_identity(settings.corpus_file, trained), dict(scan.rejected))
        log.info("recorded the ingest of bytes %d-%d (trained into the latest checkpoint)", start, trained)
    elif trained < recorded:
        log.warning("the latest usable checkpoint trained through byte %d but the store recorded %d "
                    "(a newer checkpoint was lost): those lines are trained again", trained, recorded)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
