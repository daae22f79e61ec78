"""The ingest + fine-tune job: train on the lines appended since the last run, with replay.

The latest checkpoint is the truth about what the model has learned: its `trained_through`
byte offset is where new lines start. A job writes its checkpoint first and then records the
ingest, so a crash (or a database error) in between is repaired at the next start or the next
job (`recover`); a job stopped part-way is saved in its checkpoint and resumed, so each line is
trained as new once.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass

from . import corpus, faults
from .checkpoints import CheckpointManager, checkpoint_name
from .config import Settings
from .engine import (
    StoreRecorder,
    TrainerCache,
    checkpoint_manager,
    latest_trainer,
    run_plan,
    sync_checkpoint_flags,
)
from .promotion import (
    DRIFT_KEY,
    Decision,
    Figures,
    ServedModel,
    decide,
    known,
    promote,
    read_drift,
    with_drift,
)
from .store import Store
from .trainer import RunResult, TrainData, Trainer, TrainJob, build_data, finetune_steps, fresh_of
from .vocab import Vocab

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
    identity: dict  # the file's identity at `end`, taken when the lines were read


def scan_range(settings: Settings, trainer: Trainer, start: int, end: int) -> IngestScan:
    """Stream the range in batches (memory bounded by a batch, whatever the append's size).
    The file's identity is taken first, at scan time: a corpus replaced while the job trains
    must not be recorded as the one its lines came from."""
    identity = corpus.file_identity(settings.corpus_file, end)
    rejected, unknown = Counter(), Counter()
    lines = 0
    for batch in corpus.iter_batches(settings.corpus_file, start, end):
        lines += len(batch.lines)
        rejected.update(batch.rejected)
        for line in batch.lines:
            unknown.update(trainer.vocab.unknown_chars(corpus.plain_text(line)))
    return IngestScan(start, end, lines, rejected, sum(unknown.values()), unknown, identity)


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
    """Add characters seen at least vocab_grow_min_count times (counted across ingests). The
    counts are stored with the ingest (`record`), so a job that dies does not count them twice."""
    pending = _pending_chars(store)
    pending.update(scan.unknown)
    due = sorted(c for c, n in pending.items() if n >= settings.vocab_grow_min_count)
    if due:
        trainer.grow_vocab(due)
    return "".join(due)


def run_finetune(settings: Settings, store: Store, should_stop=lambda: False,
                 trainers: TrainerCache | None = None) -> dict | None:
    """One fine-tune: resume an unfinished one, or start on the new lines. None if none wait.
    `trainers` keeps the trainer from job to job (the daemon's); without it, each job loads one."""
    path = settings.corpus_file
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "missing"
        raise corpus.CorpusError(f"corpus {path} is {what}: put the corpus file back (or "
                                 "`tweetgen append` lines to start a new one); fine-tunes wait for it")
    manager = checkpoint_manager(settings)
    trainers = trainers or TrainerCache()
    loaded = trainers.latest(settings, manager)
    if loaded is None:
        log.warning("no usable checkpoint: fine-tune skipped until the initial training has run")
        return None
    try:
        return _run(settings, store, should_stop, trainers, manager, *loaded)
    except BaseException:
        trainers.forget()  # its vocabulary or weights may be ahead of every checkpoint now
        raise


def _run(settings: Settings, store: Store, should_stop, trainers: TrainerCache,
         manager: CheckpointManager, trainer: Trainer, meta: dict) -> dict | None:
    path = settings.corpus_file
    recover(settings, store, manager, trainer, meta)
    job = TrainJob.from_dict(meta["job"])
    if job.kind == "finetune" and not job.done:
        log.info("resuming the fine-tune on bytes %d-%d at step %d of %d", job.corpus_start,
                 job.corpus_end, trainer.step, job.target_step)
        scan = scan_range(settings, trainer, job.corpus_start, job.corpus_end)
    else:
        start = new_range_start(settings, meta, store)
        end = corpus.complete_end(path)
        if end <= start:
            return None
        scan = scan_range(settings, trainer, start, end)
        grown = grow_vocab_if_due(settings, trainer, store, scan)
        job = TrainJob("finetune", settings.random_seed + trainer.step, start, end, trainer.step,
                       settings.finetune_learning_rate, settings.replay_ratio, new_chars=grown,
                       validation_base=meta.get("validation_lines") if start else [],
                       corpus_identity=scan.identity, fresh_from=fresh_of(meta["job"]))
    data = build_data(settings, trainer.vocab, job)
    resumes = job.run_id
    if resumes is None:
        job.target_step = trainer.step + (finetune_steps(settings, len(data.train)) if data.train else 0)
        served = trainers.served.figures_on(manager, trainer.vocab, data.validation, data.new_validation)
        job.baseline_bpc, job.baseline_new_bpc = (served.old_bpc, served.new_bpc) if served else (None, None)
    # A resumed job gets a run of its own: the stopped one keeps its status (interrupted, crashed).
    job.run_id = store.start_run("finetune", os.getpid(), start_step=trainer.step,
                                 new_lines=data.new_lines, replay_lines=data.replay_lines,
                                 new_val_lines=len(data.new_validation),
                                 val_bpc_before=known(job.baseline_bpc),
                                 val_new_bpc_before=known(job.baseline_new_bpc),
                                 config={**run_plan(job.target_step),
                                         **({"resumes_run": resumes} if resumes else {})})
    log.info("fine-tune run %d: %d new lines (%d rejected, %d held out to judge it), %d replayed, "
             "%d steps; the served model: validation %s, new lines %s bits/char", job.run_id,
             scan.lines, sum(scan.rejected.values()), len(data.new_validation), data.replay_lines,
             job.target_step - trainer.step, _bpc(job.baseline_bpc), _bpc(job.baseline_new_bpc))
    faults.crash_point("ingest-started")
    recorder = StoreRecorder(store, job.run_id, manager)
    first_step = trainer.step
    try:
        result = trainer.run(job, data, manager, should_stop=should_stop, on_log=recorder.on_log,
                             on_checkpoint=recorder.on_checkpoint)
    except Exception as exc:
        store.finish_run(job.run_id, "failed", error=f"{type(exc).__name__}: {exc}",
                         steps=trainer.step - first_step, bad_steps=trainer.bad_steps)
        raise
    trainers.keep(trainer, result.checkpoint)
    if result.status == "interrupted":
        store.finish_run(job.run_id, "interrupted", steps=result.steps, bad_steps=result.bad_steps,
                         checkpoint_id=recorder.last_checkpoint_id)
        return {"run": job.run_id, "status": "interrupted"}
    return finish(settings, store, manager, job, scan, trainer, result, data, trainers.served)


def judge(settings: Settings, store: Store, manager: CheckpointManager, served: ServedModel,
          trainer: Trainer, data: TrainData, candidate: Figures) -> Decision:
    """A finished fine-tune's checkpoint against the served model, on the same lines."""
    figures = served.figures_on(manager, trainer.vocab, data.validation, data.new_validation)
    figures = with_drift(figures, read_drift(store.get_meta(DRIFT_KEY)))
    return decide("finetune", figures, candidate, settings.promote_tolerance_bpc)


def finish(settings: Settings, store: Store, manager: CheckpointManager, job: TrainJob,
           scan: IngestScan, trainer: Trainer, result: RunResult, data: TrainData,
           served: ServedModel) -> dict:
    checkpoint = result.checkpoint
    decision = judge(settings, store, manager, served, trainer, data,
                     Figures(result.val_bpc, result.val_new_bpc))
    if decision.promote:
        promote(store, manager, checkpoint, decision)
    sync_checkpoint_flags(store, manager)
    faults.crash_point("ingest-record")
    record(settings, store, scan, job, trainer.vocab)
    row = store.get_checkpoint(str(checkpoint))
    store.finish_run(job.run_id, "completed", steps=result.steps, val_bpc_after=known(result.val_bpc),
                     val_new_bpc_after=known(result.val_new_bpc), promoted=int(decision.promote),
                     promotion=decision.reason, checkpoint_id=row["id"] if row else None,
                     bad_steps=result.bad_steps)
    log.info("fine-tune run %d done: validation %s -> %s, new lines %s -> %s bits/char; %s (%s)",
             job.run_id, _bpc(job.baseline_bpc), _bpc(result.val_bpc), _bpc(job.baseline_new_bpc),
             _bpc(result.val_new_bpc), "promoted" if decision.promote else "NOT promoted", decision.reason)
    return {"run": job.run_id, "status": "completed", "promoted": decision.promote,
            "reason": decision.reason, "before": job.baseline_bpc, "after": result.val_bpc,
            "new_before": job.baseline_new_bpc, "new_after": result.val_new_bpc}


def record(settings: Settings, store: Store, scan: IngestScan, job: TrainJob, vocab: Vocab) -> None:
    """The ingest row, and the unknown-character counts it adds, in one transaction."""
    pending = _pending_chars(store)
    pending.update(scan.unknown)
    left = {c: n for c, n in sorted(pending.items()) if c not in vocab}
    store.record_ingest(str(settings.corpus_file), scan.start, scan.end, scan.lines,
                        sum(scan.rejected.values()), scan.unknown_chars, job.new_chars, job.run_id,
                        job.corpus_identity if job.corpus_end == scan.end and job.corpus_identity
                        else scan.identity, dict(scan.rejected),
                        meta={PENDING_CHARS_KEY: json.dumps(left, ensure_ascii=True)})


def _pending_chars(store: Store) -> Counter:
    return Counter(json.loads(store.get_meta(PENDING_CHARS_KEY) or "{}"))


def reconcile_ingests(settings: Settings, store: Store) -> None:
    """At start-up: finish what a crash left half-recorded (see `recover`)."""
    manager = checkpoint_manager(settings)
    loaded = latest_trainer(settings, manager)
    if loaded is not None:
        recover(settings, store, manager, *loaded)


def recover(settings: Settings, store: Store, manager: CheckpointManager, trainer: Trainer,
            meta: dict) -> None:
    """Record the lines the latest checkpoint trained but no ingest records: a crash (or a
    database error) came after the checkpoint was written and before its ingest was recorded.
    A finished fine-tune also gets the promotion decision it did not get to make."""
    path = settings.corpus_file
    trained = int(meta["trained_through"])
    cursor = store.cursor(str(path))
    recorded = cursor["offset"] if cursor else 0
    if trained < recorded:
        log.warning("the latest usable checkpoint trained through byte %d but the store recorded %d "
                    "(a newer checkpoint was lost): those lines are trained again", trained, recorded)
    job = TrainJob.from_dict(meta["job"])
    if trained <= recorded or not path.is_file():
        if job.kind == "finetune" and job.done and _run_left_open(store, job.run_id):
            _decide_unfinished(settings, store, manager, trainer, meta, job)
        return
    start = max(job.corpus_start if job.kind == "finetune" else 0, recorded)
    scan = scan_range(settings, trainer, start, trained)
    if job.kind == "finetune" and job.done:
        _decide_unfinished(settings, store, manager, trainer, meta, job)
    record(settings, store, scan, job, trainer.vocab)
    log.info("recorded the ingest of bytes %d-%d (trained into the latest checkpoint)", start, trained)


def _run_left_open(store: Store, run_id: int | None) -> bool:
    """A finished fine-tune whose run the store never closed as completed (its last write met a
    locked database, so the daemon closed it as failed, or the process died)."""
    run = store.get_run(run_id) if run_id is not None else None
    return run is not None and run["status"] != "completed"


def _decide_unfinished(settings: Settings, store: Store, manager: CheckpointManager, trainer: Trainer,
                       meta: dict, job: TrainJob) -> None:
    """The promotion decision of a fine-tune that finished its checkpoint and died before it
    decided (or before the store took the decision: its run then says failed or crashed)."""
    checkpoint = manager.directory / checkpoint_name(int(meta["step"]))
    promoted = manager.promoted_path()
    if promoted is not None and promoted.name == checkpoint.name:
        decision = Decision(True, "promoted before the process died")
    else:
        data = build_data(settings, trainer.vocab, job)
        decision = judge(settings, store, manager, ServedModel(), trainer, data,
                         Figures(meta.get("val_bpc"), meta.get("val_new_bpc")))
        if decision.promote:
            promote(store, manager, checkpoint, decision)
    sync_checkpoint_flags(store, manager)
    row = store.get_checkpoint(str(checkpoint))
    if job.run_id is not None and store.get_run(job.run_id) is not None:
        store.update_run(job.run_id, status="completed", promoted=int(decision.promote),
                         promotion=decision.reason, val_bpc_after=known(meta.get("val_bpc")),
                         val_new_bpc_after=known(meta.get("val_new_bpc")),
                         checkpoint_id=row["id"] if row else None)
    log.info("fine-tune run %s had finished its checkpoint %s before it died: %s (%s)", job.run_id,
             checkpoint.name, "promoted" if decision.promote else "not promoted", decision.reason)


def _bpc(value: float | None) -> str:
    return f"{value:.4f}" if known(value) is not None else "-"
