"""The daemon: APScheduler jobs, the single-instance lock, signals, resume.

A `BlockingScheduler` runs in the foreground. TensorFlow jobs (start-up, fine-tune, generate,
idle training) share one worker thread, so they never overlap; idle training yields at its next
step to any other job submitted there. The heartbeat has its own thread so `tweetgen status` sees
a live daemon even during a long training run, and so has the new-lines check (it only counts
lines; when enough wait it brings the fine-tune forward).
SIGTERM/SIGINT stop training at the next step, write a checkpoint, mark the run interrupted and
exit 0. The lock is an flock, which the kernel drops when a process dies, so `kill -9` never
leaves it stuck.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from . import corpus, malloc
from .checkpoints import CheckpointManager
from .config import ConfigError, Settings
from .errors import KNOWN_ERRORS, LockError
from .store import Store, StoreError

log = logging.getLogger(__name__)

LOCK_NAME = ".tweetgen.lock"
STARTUP_RETRY_CAP_SECONDS = 600.0  # a start-up that keeps failing is tried at least this often


class RetryBackoff:
    """When to try a failing thing again: after `first` seconds, then twice as long after each
    failure in a row, at most `cap`; a success starts over."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, max(first, cap)
        self.failures = 0
        self.due_at = 0.0  # time.monotonic() from which the next try may run

    def due(self, now: float) -> bool:
        return now >= self.due_at

    def failed(self, now: float) -> float:
        """Count a failure; the seconds until the next try."""
        self.failures += 1
        delay = min(self.cap, self.first * 2 ** (self.failures - 1))
        self.due_at = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.due_at = 0, 0.0


class SkippedRunFilter(logging.Filter):
    """Drops APScheduler's WARNING for a run skipped because the job's last run is still going:
    the daemon records every such skip and logs the first of each run at INFO instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "skipped: maximum number of running instances" not in str(record.msg)


SKIPPED_RUN_FILTER = SkippedRunFilter()


class InstanceLock:
    """Exclusive flocks on the checkpoint folder and the database: one writer per instance.
    Its holder is the one process that cleans the checkpoint folder of temp files a crash left."""

    def __init__(self, settings: Settings) -> None:
        db = settings.db_file
        self.checkpoints = settings.checkpoints
        self.paths = [settings.checkpoints / LOCK_NAME, db.with_name(db.name + ".lock")]
        self._handles: list[Any] = []

    def __enter__(self) -> InstanceLock:
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                self.release()
                raise LockError(f"{path.parent} is in use by another tweetgen daemon or trainer "
                                f"(pid {holder}); stop it first, or use another --home") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            self._handles.append(handle)
        CheckpointManager(self.checkpoints).remove_stale_temp_files()
        return self

    def release(self) -> None:
        for handle in self._handles:
            handle.close()  # closing drops the flock
        self._handles = []

    def __exit__(self, *exc: object) -> None:
        self.release()


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.work_lock = threading.Lock()  # held while a TensorFlow job runs
        self.store: Store | None = None
        self.scheduler: BlockingScheduler | None = None
        self.generator_cache: Any = None
        self.trainers: Any = None  # engine.TrainerCache, made with the first TensorFlow job
        self.started_at = time.monotonic()
        self.trained = False  # the start-up's training (or resume) is done; until then jobs retry it
        self.last_error: str | None = None  # the last job error, until the next job has run
        self.unrecorded_events: list[tuple] = []  # job events a database error kept from the store
        self.events_lock = threading.Lock()  # events come from the job threads and the listener
        self.corpus_problem: str | None = None
        # TensorFlow jobs submitted and not started yet, with their scheduled times: idle training
        # yields to them at its next step, and each job's delay is recorded. A job can start before
        # the scheduler's "submitted" event reaches us: `started_early` counts those.
        self.submitted: dict[str, deque[datetime]] = defaultdict(deque)
        self.started_early: Counter[str] = Counter()
        self.queue_lock = threading.Lock()
        self.current_job: str | None = None  # the TensorFlow job running now
        self.tensorflow_jobs: set[str] = set()  # ids of the jobs on the worker thread
        # The start-up is retried by the next job that runs once this backoff allows it.
        self.startup_retry = RetryBackoff(settings.ingest_check_seconds, STARTUP_RETRY_CAP_SECONDS)
        self.skips_logged: set[str] = set()  # jobs whose skip is logged, until their run ends
        # Skipped runs, noted in the scheduler's thread (which must never wait on the database)
        # and recorded by the next write of a job or of the heartbeat.
        self.skipped_runs: deque[tuple] = deque(maxlen=1000)

    # ---- life cycle

    def run(self) -> int:
        s = self.settings
        with InstanceLock(s):
            self.store = Store(s.db_file, s.db_busy_timeout_seconds)
            http = None
            try:
                http = self._start_http()
                return self._run_scheduler()
            finally:
                if http is not None:
                    http.stop()
                self._beat("stopped")
                self.store.close()

    def _start_http(self) -> Any:
        """The HTTP API in a background thread when `http_address` is set. It has its own
        generator and database connection, so its requests never wait for a job here."""
        if not self.settings.http_address:
            return None
        from .web.server import ServerThread

        return ServerThread.start(self.settings, self.settings.http_address)

    def _run_scheduler(self) -> int:
        s = self.settings
        crashed = self.store.mark_running_as_crashed()
        if crashed:
            log.warning("runs %s were left running by a process that died: marked crashed", crashed)
        corpus.ensure_corpus(s.corpus_file, s.max_tweet_chars, s.corpus_set_by)
        self.scheduler = self._make_scheduler()
        self._install_signal_handlers()
        now = datetime.now(UTC)
        self._add("startup", self.startup_job, "date", run_date=now)
        self._add("finetune", self.finetune_job, "interval", minutes=s.finetune_interval_minutes,
                  start_date=now + timedelta(minutes=s.finetune_interval_minutes))
        self.scheduler.add_job(self.new_lines_check, "interval", seconds=s.ingest_check_seconds,
                               id="new-lines", executor="checks",
                               start_date=now + timedelta(seconds=s.ingest_check_seconds))
        if s.idle_training:
            self._add("idle", self.idle_job, "interval", seconds=s.idle_check_seconds,
                      start_date=now + timedelta(seconds=s.idle_check_seconds))
        # The first tweets come right after the start-up: due a second after it, so the one worker
        # thread runs it next (equal times would order the jobs by id, "generate" first). The
        # start-up itself does not generate: it did, and when its training outlasted the interval
        # the queued generate run stored a second batch within milliseconds.
        self._add("generate", self.generate_job, "interval", minutes=s.generate_interval_minutes,
                  next_run_time=now + timedelta(seconds=1))
        if s.webhook_url:
            self.scheduler.add_job(self.outbox_job, "interval", seconds=s.webhook_poll_seconds,
                                   id="outbox", name="outbox", executor="outbox", next_run_time=now)
        maintenance_every = timedelta(hours=s.maintenance_interval_hours)
        self._add("maintenance", self.maintenance_job, "interval", hours=s.maintenance_interval_hours,
                  start_date=now + self._first_maintenance_delay(maintenance_every, now))
        self.scheduler.add_job(self._beat, "interval", seconds=s.heartbeat_seconds, id="heartbeat",
                               executor="light", next_run_time=now)
        log.info("daemon started (pid %d): corpus %s, checkpoints %s, database %s", os.getpid(),
                 s.corpus_file, s.checkpoints, s.db_file)
        log.info("settings from %s", s.describe_sources())
        if not self.stop_event.is_set():
            self.scheduler.start()  # blocks until a signal shuts it down
        # Let a job that is stopping (checkpoint, run marked interrupted) finish first.
        with self.work_lock:
            pass
        log.info("daemon stopped")
        return 0

    def _make_scheduler(self) -> BlockingScheduler:
        s = self.settings
        scheduler = BlockingScheduler(
            # TensorFlow jobs, the heartbeat, the new-lines check, the webhook outbox: each on its
            # own thread, so a check waiting on a busy database or a slow webhook never delays a
            # heartbeat.
            executors={"default": ThreadPoolExecutor(1), "light": ThreadPoolExecutor(1),
                       "checks": ThreadPoolExecutor(1), "outbox": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": s.misfire_grace_seconds},
            timezone=UTC,
        )
        scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED
                               | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_EXECUTED)
        logging.getLogger("apscheduler.scheduler").addFilter(SKIPPED_RUN_FILTER)  # added once
        scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        return scheduler

    def _add(self, job_id: str, func: Callable[[], bool | None], trigger: str, **kwargs: Any) -> None:
        """A TensorFlow job: on the one worker thread, guarded (see _guarded)."""
        self.tensorflow_jobs.add(job_id)
        self.scheduler.add_job(self._guarded(job_id, func), trigger, id=job_id, name=job_id, **kwargs)

    def _install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("received %s: stopping at the next training step", signal.Signals(signum).name)
            self.stop_event.set()
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.shutdown(wait=False)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    # ---- job plumbing

    def _guarded(self, job_id: str, func: Callable[[], bool | None]) -> Callable[[], None]:
        """Run a TensorFlow job alone, time it, record it; errors go to the listener.
        A job that returns False did nothing (idle training with nothing to do) and is not recorded."""

        def job() -> None:
            if self.stop_event.is_set():
                return
            with self.work_lock:
                delay = self._delay(job_id)  # only now: idle training yields until it runs
                if self.stop_event.is_set():  # a stop came while it waited for another job
                    return
                why = self.last_error
                self._close_runs_left_running()
                run = func
                if job_id == "idle" and not self.trained:
                    return  # the start-up is retried by the scheduled jobs, not by idle checks
                if job_id != "startup" and not self.trained:
                    if not self.startup_retry.due(time.monotonic()):
                        return  # the failed start-up waits out its backoff; nothing else runs
                    log.warning("the start-up did not finish (%s): retrying it now", why)
                    run = self.startup_job
                started = time.monotonic()
                self.current_job = job_id
                try:
                    if run() is not False:
                        self._record(job_id, "executed", None, time.monotonic() - started, delay)
                except KNOWN_ERRORS as exc:  # explained in one line; others keep their traceback
                    self._job_failed(job_id, exc)
                finally:
                    self.current_job = None
                    if run == self.startup_job:
                        self._startup_tried()

        return job

    def _close_runs_left_running(self) -> None:
        """After a job failed, a run it started may still say 'running' (the database refused
        the write that ends it): no job of ours runs now, so such a run is marked failed."""
        if self.last_error is None:
            return
        try:
            closed = self.store.fail_running_runs(os.getpid(), f"its job failed: {self.last_error}")
        except StoreError as exc:
            log.warning("runs left running not closed yet: %s", exc)
            return
        if closed:
            log.warning("runs %s were left running by a failed job: marked failed", closed)
        self.last_error = None

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        if event.job_id not in self.tensorflow_jobs or event.job_id == "idle" \
                or not event.scheduled_run_times:
            return  # idle training does not yield to itself; other threads' jobs do not wait
        with self.queue_lock:
            if self.started_early[event.job_id]:
                self.started_early[event.job_id] -= 1
            else:
                self.submitted[event.job_id].append(event.scheduled_run_times[0])

    def _delay(self, job_id: str) -> float | None:
        """Seconds from the job's scheduled time to its start (what idle training costs it);
        None for a job that started before its submission was announced (it did not wait)."""
        with self.queue_lock:
            if self.submitted[job_id]:
                return (datetime.now(UTC) - self.submitted[job_id].popleft()).total_seconds()
            self.started_early[job_id] += 1
            return None

    def jobs_waiting(self) -> bool:
        with self.queue_lock:
            return any(self.submitted.values())

    def _startup_tried(self) -> None:
        """Back off after a start-up that failed (not after one a stop cut short)."""
        if self.trained:
            self.startup_retry.succeeded()
        elif not self.stop_event.is_set():
            delay = self.startup_retry.failed(time.monotonic())
            log.warning("the start-up failed %d time(s) in a row: next try in %.0f s or later",
                        self.startup_retry.failures, delay)

    def _on_job_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run time %s", event.job_id, event.scheduled_run_time)
            self._record(event.job_id, "missed", None, None)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self._run_skipped(event.job_id)
        elif event.code == EVENT_JOB_EXECUTED:
            self.skips_logged.discard(event.job_id)  # its run ended: the next skip is news again
        else:
            self.skips_logged.discard(event.job_id)
            self._job_failed(event.job_id, event.exception)

    def _run_skipped(self, job_id: str) -> None:
        """A run not started because the job's last one is still running (or waits for the
        worker thread): every skip is recorded, the first of each such run logged. This runs in
        the scheduler's thread, so the record waits for the next write (see _record). Idle
        training's checks are not: one waiting is as good as several."""
        if job_id == "idle":
            return
        if job_id not in self.skips_logged:
            self.skips_logged.add(job_id)
            log.info("job %s skipped: its previous run is still running or waiting for the worker "
                     "(further skips are recorded as job events, not logged, until it ends)", job_id)
        self.skipped_runs.append((job_id, "skipped", None, None))

    def _job_failed(self, job_id: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.last_error = error
        log.error("job %s failed: %s (the daemon keeps running; it retries at the next run)",
                  job_id, error)
        self._record(job_id, "error", error, None)

    def _record(self, job_id: str | None, kind: str | None = None, error: str | None = None,
                duration: float | None = None, delay: float | None = None) -> None:
        """Record a job event (none: only those waiting); events the store refuses are kept and
        recorded with the next one, after the skipped runs noted meanwhile."""
        with self.events_lock:
            while self.skipped_runs:
                self.unrecorded_events.append(self.skipped_runs.popleft())
            if job_id is not None:
                self.unrecorded_events.append((job_id, kind, error, duration, delay))
            del self.unrecorded_events[:-1000]
            try:
                while self.unrecorded_events:
                    self.store.record_job_event(*self.unrecorded_events[0])
                    self.unrecorded_events.pop(0)
            except StoreError as exc:
                log.error("job event not recorded yet (%d waiting): %s", len(self.unrecorded_events), exc)

    def _beat(self, state: str = "running") -> None:
        if self.store is None:
            return
        next_jobs = {}
        if self.scheduler is not None and self.scheduler.running:
            next_jobs = {job.id: job.next_run_time for job in self.scheduler.get_jobs()
                         if job.next_run_time is not None}
        try:
            self.store.heartbeat(os.getpid(), socket.gethostname(), next_jobs, state)
        except StoreError as exc:
            log.warning("heartbeat not written: %s", exc)
            return
        self._record(None)  # the skipped runs noted since the last write, and any kept events
        # What the jobs since the last beat freed goes back to the system (tweetgen.malloc):
        # else RSS keeps every peak it ever had, in steps, over weeks.
        malloc.release_free_memory()

    # ---- the jobs

    def startup_job(self) -> None:
        """First start: the initial training run. Later starts: resume. (The generate job, due a
        second after it, stores the first tweets.)"""
        from . import engine, finetune

        s = self.settings
        manager = engine.checkpoint_manager(s)
        loaded = finetune.latest_trainer(s, manager)
        if loaded is None or _unfinished_initial(loaded[1]):
            self.initial_training(loaded)
        else:
            finetune.reconcile_ingests(s, self.store)
            job = loaded[1]["job"]
            if job["kind"] == "finetune" and not job["done"]:
                self.run_finetune()
        if self.stop_event.is_set():
            return
        if manager.promoted_path() is None and manager.paths():
            promote_if_nothing_served(manager, manager.paths()[-1])
        engine.sync_checkpoint_flags(self.store, manager)
        self.trained = True  # the generate job, queued behind this one, now stores the first tweets

    def initial_training(self, loaded: tuple | None) -> None:
        from . import engine, finetune
        from .progress import ProgressPrinter

        s = self.settings
        if loaded is not None:  # engine.train resumes the plan the stop left unfinished
            log.info("resuming the initial training at step %d", loaded[1]["step"])
        progress = ProgressPrinter()  # log lines: the daemon's output is a log
        outcome = engine.train(s, None, None, self.stop_event.is_set, self.store,
                               on_log=progress, kind="initial", on_start=progress.begin)
        self._trainers().keep(outcome.trainer, outcome.result.checkpoint)
        if outcome.result.status == "interrupted":
            return
        manager = engine.checkpoint_manager(s)
        if outcome.result.checkpoint is not None:
            promote_if_nothing_served(manager, outcome.result.checkpoint)
        engine.sync_checkpoint_flags(self.store, manager)
        # The initial corpus is ingested by the initial run: record it like any other ingest.
        finetune.reconcile_ingests(s, self.store)

    def finetune_job(self) -> None:
        self.run_finetune()

    def run_finetune(self) -> None:
        from . import finetune

        result = finetune.run_finetune(self.settings, self.store, self.stop_event.is_set,
                                       self._trainers())
        if result is None:
            log.info("fine-tune: no new lines")

    def new_lines_check(self) -> None:
        """Fine-tune now, without waiting for the interval, once enough lines are waiting. It
        only counts lines (no TensorFlow), on its own thread, so it never interrupts idle
        training for nothing: the fine-tune it brings forward does."""
        path = self.settings.corpus_file
        if not self.trained or self.stop_event.is_set() or not self._corpus_usable(path):
            return  # until the start-up has trained and recorded its ingest, every line looks new
        try:
            waiting = corpus.lines_waiting(path, self.store.cursor(str(path)))
        except (OSError, StoreError) as exc:
            log.warning("new lines not counted: %s", exc)
            return
        if waiting < self.settings.min_new_lines or self._finetune_coming():
            return
        log.info("%d new lines waiting (>= %d): fine-tuning now", waiting, self.settings.min_new_lines)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.modify_job("finetune", next_run_time=datetime.now(UTC))

    def _finetune_coming(self) -> bool:
        """A fine-tune is running or waiting for the worker: it takes the waiting lines."""
        with self.queue_lock:
            return self.current_job == "finetune" or bool(self.submitted["finetune"])

    def idle_job(self) -> bool:
        """Idle training (tweetgen/idle.py) while no other job is submitted; False if it did nothing."""
        from .idle import run_idle

        if not self.trained:
            return False
        self._pause("idle")  # while it trains, its own interval would only be refused and logged
        try:
            done = run_idle(self.settings, self.store, self._trainers(),
                            preempted=self.jobs_waiting, stopping=self.stop_event.is_set)
        finally:
            self._resume("idle")
        return done is not None

    def _pause(self, job_id: str) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.pause_job(job_id)

    def _resume(self, job_id: str) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.resume_job(job_id)

    def _corpus_usable(self, path: Path) -> bool:
        """Whether the corpus is a file; a change either way is logged (and recorded) once."""
        problem = None if path.is_file() else (
            f"corpus {path} is {'a directory, not a file' if path.is_dir() else 'missing'}")
        if problem != self.corpus_problem:
            if problem:
                log.error("%s: fine-tunes wait until it is a file again (move it back, or "
                          "`tweetgen append` lines to start a new one)", problem)
                self._record("new-lines", "error", problem, None)
            else:
                log.info("corpus %s is a file again", path)
            self.corpus_problem = problem
        return problem is None

    def _trainers(self) -> Any:
        from .engine import TrainerCache

        if self.trainers is None:
            self.trainers = TrainerCache()
        return self.trainers

    def generate_job(self) -> None:
        from .engine import GeneratorCache, generate_scheduled

        # The cache outlives a failed run: it holds the tweets a refused write did not store.
        if self.generator_cache is None:
            self.generator_cache = GeneratorCache(self.settings)
        generate_scheduled(self.settings, self.store, self.generator_cache)

    def outbox_job(self) -> None:
        """Deliver approved tweets to the webhook (tweetgen.outbox). No TensorFlow: it runs in its
        own thread, beside training. Failures are retried by the outbox, not recorded as errors."""
        from . import outbox

        outbox.deliver(self.settings, self.store, self.stop_event.is_set)

    def maintenance_job(self) -> None:
        """Retention and the WAL checkpoint (tweetgen.maintenance); no TensorFlow, but it runs
        between the other jobs like them, so it never deletes under a run that is writing."""
        from .maintenance import run_maintenance

        run_maintenance(self.settings, self.store)

    def _first_maintenance_delay(self, interval: timedelta, now: datetime) -> timedelta:
        from .maintenance import LAST_RUN_KEY, first_run_delay

        try:
            last = self.store.get_meta(LAST_RUN_KEY)
        except StoreError:
            last = None
        return first_run_delay(last, interval, now)


def promote_if_nothing_served(manager: Any, checkpoint: Path) -> None:
    """The first model is served when its validation is known (tweetgen.promotion's rule)."""
    from .checkpoints import read_meta
    from .promotion import Figures, decide

    if manager.promoted_path() is not None:
        return
    decision = decide("initial", None, Figures(read_meta(checkpoint).get("val_bpc")), 0.0)
    if decision.promote:
        manager.promote(checkpoint)
    else:
        log.warning("checkpoint %s not promoted: %s", checkpoint.name, decision.reason)


def _unfinished_initial(meta: dict) -> bool:
    """A training job (not a fine-tune) that a stop left before its target."""
    return meta["job"]["kind"] == "train" and not meta["job"]["done"]


def run_daemon(settings: Settings) -> int:
    """`tweetgen daemon` and `python run_daemon.py`."""
    if settings.strategy == "multi-worker":  # its timed jobs cannot start together on every host
        raise ConfigError("the daemon trains on one host: use strategy 'auto' or 'mirrored'; for "
                          "several hosts run `tweetgen train` on each worker (docs/distribute.md)")
    from . import distribute

    if settings.corpus_set_by:  # a wrong corpus path fails before any folder is made
        corpus.ensure_corpus(settings.corpus_file, settings.max_tweet_chars, settings.corpus_set_by)
    distribute.strategy_for(settings)  # before TensorFlow starts (logical CPU devices)
    return Daemon(settings).run()


def lock_paths(settings: Settings) -> list[Path]:
    return InstanceLock(settings).paths
