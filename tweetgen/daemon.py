"""The daemon: APScheduler jobs, the single-instance lock, signals, resume.

A `BlockingScheduler` runs in the foreground. TensorFlow jobs (start-up, fine-tune, the
new-lines check, generate) share one worker thread, so they never overlap; the heartbeat has
its own thread so `tweetgen status` sees a live daemon even during a long training run.
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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from . import corpus
from .config import ConfigError, Settings
from .errors import KNOWN_ERRORS, LockError
from .store import Store, StoreError

log = logging.getLogger(__name__)

LOCK_NAME = ".tweetgen.lock"


class InstanceLock:
    """Exclusive flocks on the checkpoint folder and the database: one writer per instance."""

    def __init__(self, settings: Settings) -> None:
        db = settings.db_file
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
        corpus.ensure_corpus(s.corpus_file, s.max_tweet_chars)
        self.scheduler = self._make_scheduler()
        self._install_signal_handlers()
        now = datetime.now(UTC)
        self._add("startup", self.startup_job, "date", run_date=now)
        self._add("finetune", self.finetune_job, "interval", minutes=s.finetune_interval_minutes,
                  start_date=now + timedelta(minutes=s.finetune_interval_minutes))
        self._add("new-lines", self.new_lines_job, "interval", seconds=s.ingest_check_seconds,
                  start_date=now + timedelta(seconds=s.ingest_check_seconds))
        self._add("generate", self.generate_job, "interval", minutes=s.generate_interval_minutes,
                  start_date=now + timedelta(minutes=s.generate_interval_minutes))
        self.scheduler.add_job(self._beat, "interval", seconds=s.heartbeat_seconds, id="heartbeat",
                               executor="light", next_run_time=now)
        log.info("daemon started (pid %d): corpus %s, checkpoints %s, database %s", os.getpid(),
                 s.corpus_file, s.checkpoints, s.db_file)
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
            executors={"default": ThreadPoolExecutor(1), "light": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": s.misfire_grace_seconds},
            timezone=UTC,
        )
        scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        return scheduler

    def _add(self, job_id: str, func: Callable[[], bool | None], trigger: str, **kwargs: Any) -> None:
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
        A job that returns False did nothing (the new-lines check) and is not recorded."""

        def job() -> None:
            if self.stop_event.is_set():
                return
            with self.work_lock:
                if self.stop_event.is_set():  # a stop came while it waited for another job
                    return
                why = self.last_error
                self._close_runs_left_running()
                run = func
                if job_id != "startup" and not self.trained:
                    log.warning("the start-up did not finish (%s): retrying it now", why)
                    run = self.startup_job
                started = time.monotonic()
                try:
                    if run() is not False:
                        self._record(job_id, "executed", None, time.monotonic() - started)
                except KNOWN_ERRORS as exc:  # explained in one line; others keep their traceback
                    self._job_failed(job_id, exc)

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

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run time %s", event.job_id, event.scheduled_run_time)
            self._record(event.job_id, "missed", None, None)
        else:
            self._job_failed(event.job_id, event.exception)

    def _job_failed(self, job_id: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.last_error = error
        log.error("job %s failed: %s (the daemon keeps running; it retries at the next run)",
                  job_id, error)
        self._record(job_id, "error", error, None)

    def _record(self, job_id: str, kind: str, error: str | None, duration: float | None) -> None:
        """Record a job event; events the store refuses are kept and recorded with the next one."""
        with self.events_lock:
            self.unrecorded_events.append((job_id, kind, error, duration))
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

    # ---- the jobs

    def startup_job(self) -> None:
        """First start: the initial training run, then tweets. Later starts: resume."""
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
            manager.promote(manager.paths()[-1])
        engine.sync_checkpoint_flags(self.store, manager)
        self.trained = True
        self.generate_job()

    def initial_training(self, loaded: tuple | None) -> None:
        from . import engine, finetune
        from .trainer import progress_printer

        s = self.settings
        if loaded is not None:  # engine.train resumes the plan the stop left unfinished
            log.info("resuming the initial training at step %d", loaded[1]["step"])
        steps = None if s.initial_minutes else s.initial_steps
        outcome = engine.train(s, None, None, self.stop_event.is_set, self.store,
                               on_log=progress_printer(steps), kind="initial")
        self._trainers().keep(outcome.trainer, outcome.result.checkpoint)
        if outcome.result.status == "interrupted":
            return
        manager = engine.checkpoint_manager(s)
        if outcome.result.checkpoint is not None:
            manager.promote(outcome.result.checkpoint)
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

    def new_lines_job(self) -> bool:
        """Fine-tune now, without waiting for the interval, once enough lines are waiting."""
        path = self.settings.corpus_file
        if not self._corpus_usable(path):
            return False
        waiting = corpus.lines_waiting(path, self.store.cursor(str(path)))
        if waiting < self.settings.min_new_lines:
            return False
        log.info("%d new lines waiting (>= %d): fine-tuning now", waiting, self.settings.min_new_lines)
        self.run_finetune()
        return True

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


def _unfinished_initial(meta: dict) -> bool:
    """A training job (not a fine-tune) that a stop left before its target."""
    return meta["job"]["kind"] == "train" and not meta["job"]["done"]


def run_daemon(settings: Settings) -> int:
    """`tweetgen daemon` and `python run_daemon.py`."""
    if settings.strategy == "multi-worker":  # its timed jobs cannot start together on every host
        raise ConfigError("the daemon trains on one host: use strategy 'auto' or 'mirrored'; for "
                          "several hosts run `tweetgen train` on each worker (docs/distribute.md)")
    from . import distribute

    distribute.strategy_for(settings)  # before TensorFlow starts (logical CPU devices)
    return Daemon(settings).run()


def lock_paths(settings: Settings) -> list[Path]:
    return InstanceLock(settings).paths
