"""The engine's entry points, shared by the CLI and the daemon: train, generate, evaluate.

Each takes the Settings, uses the checkpoint folder and records what it did in the store
(runs, losses, checkpoints, samples), so every route leaves the same record.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import corpus, cpu
from .checkpoints import Checkpoint, CheckpointError, CheckpointManager, load_checkpoint, read_meta
from .config import Settings
from .corpus_index import shared_index
from .generate import Generator, Sample, check_request
from .model import CharGRU
from .promotion import ServedModel
from .selection import Candidate, Selector
from .store import Store, StoreError
from .train import StepLog, bits_per_char, encode_lines
from .trainer import RunResult, Trainer, TrainJob, build_data, model_from_checkpoint, split_lines
from .vocab import Vocab

log = logging.getLogger(__name__)


def checkpoint_manager(settings: Settings) -> CheckpointManager:
    return CheckpointManager(settings.checkpoints, settings.keep_checkpoints)


def latest_trainer(settings: Settings, manager: CheckpointManager) -> tuple[Trainer, dict] | None:
    """The trainer of the newest checkpoint that loads, with its meta; None when there is none.

    A newer checkpoint that does not load (truncated, garbage, incompatible) is logged and moved
    aside, so it is never again taken for the latest or promoted one. Only callers that hold the
    instance lock (the daemon, `tweetgen train`) come here.
    """
    for path in reversed(manager.paths()):
        try:
            ckpt = load_checkpoint(path)
            return Trainer.from_checkpoint(settings, ckpt), ckpt.meta
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            try:
                manager.quarantine(path, str(exc))
            except OSError as move_error:
                log.error("checkpoint %s unusable (%s) and not moved aside (%s); falling back",
                          path.name, exc, move_error)
    return None


class TrainerCache:
    """The daemon's trainer, kept from job to job while it is the state of the newest checkpoint
    on disk. Building a model and tracing its steps again for every job costs seconds, and
    TensorFlow never frees what it traced (about 13 MB a job, so weeks of fine-tunes ran out of
    memory). A job that fails must `forget` it: its state may be ahead of every checkpoint."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.stamp: tuple | None = None
        self.served = ServedModel()  # the promoted model, that candidates are judged against

    def latest(self, settings: Settings, manager: CheckpointManager) -> tuple[Trainer, dict] | None:
        """Like latest_trainer, without loading again when the kept trainer is that state."""
        paths = manager.paths()
        if self.trainer is not None and paths and self.stamp == _stamp(paths[-1]):
            meta = _meta_or_none(paths[-1])
            if meta is not None:
                return self.trainer, meta
        self.forget()
        loaded = latest_trainer(settings, manager)
        if loaded is not None:
            self.keep(loaded[0], manager.paths()[-1])
        return loaded

    def keep(self, trainer: Trainer, checkpoint: Path | None) -> None:
        """`trainer` is now exactly the state saved in `checkpoint`."""
        self.trainer, self.stamp = (trainer, _stamp(checkpoint)) if checkpoint else (None, None)

    def forget(self) -> None:
        self.trainer = self.stamp = None


def _stamp(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (path, stat.st_mtime_ns, stat.st_size)


def load_latest_trainer(settings: Settings, manager: CheckpointManager) -> Trainer | None:
    """The trainer of the newest checkpoint that loads (see latest_trainer); None when none does."""
    loaded = latest_trainer(settings, manager)
    return loaded[0] if loaded else None


def build_vocab(settings: Settings) -> Vocab:
    """The vocabulary of the corpus's training lines: validation lines are not counted, so a
    character seen only in them is <unk> to the model, as any unseen text would be."""
    lines = corpus.read_lines(settings.corpus_file).lines
    if not lines:
        raise corpus.CorpusError(f"corpus {settings.corpus_file} has no usable lines; append some text")
    train, _ = split_lines(lines, settings.validation_fraction)
    # A pair's tab is never encoded (tweetgen.context); <sep> is reserved for context training.
    vocab = Vocab.build((corpus.plain_text(line) for line in train), settings.vocab_min_count,
                        reserve_sep=True)
    log.info("vocabulary: %d characters, <sep> included (+3 reserved) from %d training lines",
             len(vocab.chars), len(train))
    return vocab


class StoreRecorder:
    """Writes a training run's losses and checkpoints to the store as they happen. Rows the store
    refuses (locked, disk full) are kept and written with the next ones, so a database hiccup
    does not stop the training; a checkpoint it cannot record is recorded from its file by the
    next write that works (sync_checkpoint_flags) or by the next job (finetune.recover)."""

    MAX_PENDING = 10_000
    RETRY_SECONDS = 10.0  # after a refused write, the loss rows wait this long before the next try

    def __init__(self, store: Store | None, run_id: int | None, manager: CheckpointManager) -> None:
        self.store, self.run_id, self.manager = store, run_id, manager
        self.last_checkpoint_id: int | None = None
        self.pending: list[dict] = []
        self.retry_at = 0.0

    def on_log(self, entry: StepLog) -> None:
        if self.store is None:
            return
        self.pending.append({"step": entry.step, "loss": entry.loss, "learning_rate": entry.learning_rate,
                             "grad_norm": entry.grad_norm, "chars_per_s": entry.chars_per_s})
        del self.pending[:-self.MAX_PENDING]
        if time.monotonic() < self.retry_at:  # do not wait on a busy database at every log
            return
        try:
            self.store.log_losses(self.run_id, self.pending)
        except StoreError as exc:
            self.retry_at = time.monotonic() + self.RETRY_SECONDS
            log.warning("%d loss rows kept to write later: %s", len(self.pending), exc)
            return
        self.pending = []

    def on_checkpoint(self, path: Path, meta: dict) -> None:
        if self.store is None:
            return
        bpc = meta.get("val_bpc")
        self.pending.append({"step": meta["step"], "kind": "val", "val_bpc": bpc})
        try:
            self.last_checkpoint_id = self.store.record_checkpoint(
                str(path), meta["step"], self.run_id, meta.get("train_loss"), bpc,
                meta["trained_through"], meta["vocab_hash"], meta["vocab_size"], meta["model_config"],
                meta.get("val_new_bpc"))
            self.store.log_losses(self.run_id, self.pending)
            self.pending = []
            sync_checkpoint_flags(self.store, self.manager, latest=path)
        except StoreError as exc:
            log.warning("checkpoint %s not recorded yet (the next write records it): %s", path.name, exc)


def sync_checkpoint_flags(store: Store, manager: CheckpointManager, latest: Path | None = None) -> None:
    paths = manager.paths()
    known = record_missing_checkpoints(store, paths)
    latest = latest or (paths[-1] if paths else None)
    best, promoted = manager.best(), manager.promoted_path()

    def flag(path: Path | None) -> str | None:
        return str(path) if path is not None and str(path) in known else None

    store.set_checkpoint_flags(latest=flag(latest), best=flag(best), promoted=flag(promoted))
    store.delete_checkpoint_rows_not_in([str(p) for p in paths])


def record_missing_checkpoints(store: Store, paths: list[Path]) -> set[str]:
    """Record checkpoint files the store does not know (a crash or a database error came between
    writing one and recording it), from their own meta. Returns the recorded paths."""
    known = set()
    for path in paths:
        if store.get_checkpoint(str(path)) is None:
            meta = _meta_or_none(path)
            if meta is None:
                continue
            store.record_checkpoint(str(path), meta["step"], meta["job"].get("run_id"),
                                    meta.get("train_loss"), meta.get("val_bpc"), meta["trained_through"],
                                    meta["vocab_hash"], meta["vocab_size"], meta["model_config"])
            log.info("recorded checkpoint %s, which the store did not know", path.name)
        known.add(str(path))
    return known


@dataclass
class TrainOutcome:
    result: RunResult
    run_id: int | None
    trainer: Trainer


def train(settings: Settings, steps: int | None = None, minutes: float | None = None,
          should_stop: Callable[[], bool] = lambda: False, store: Store | None = None,
          on_log: Callable[[StepLog], None] | None = None, kind: str = "train",
          on_start: Callable[[int, int | None], None] | None = None) -> TrainOutcome:
    """Train from scratch, or continue from the latest checkpoint, for a step or time budget.
    on_start(first step, target step or None) is called once the run starts (progress bars).

    A budget (steps, minutes or both) is a new plan: the learning rate warms up and anneals to
    its floor at its end. Without one, a plan that a stop left unfinished is resumed where it
    stopped (the same schedule; a timed plan trains the time it had left), else a new plan of
    initial_minutes (when > 0) or initial_steps starts."""
    minutes = minutes or None  # 0 minutes is no time budget, as before
    corpus.ensure_corpus(settings.corpus_file, settings.max_tweet_chars, settings.corpus_set_by)
    manager = checkpoint_manager(settings)
    trainer = load_latest_trainer(settings, manager)
    if trainer is None:
        trainer = Trainer.fresh(settings, build_vocab(settings))
    job = continued_or_new_job(settings, trainer, manager)
    resuming = steps is None and minutes is None and job.start_step is not None and not job.done
    if not resuming:
        if steps is None and minutes is None:
            steps, minutes = (None, settings.initial_minutes) if settings.initial_minutes \
                else (settings.initial_steps, None)
        job.new_plan(trainer.step, steps, minutes * 60 if minutes else None)
    data = build_data(settings, trainer.vocab, job)
    if data.unknown_chars:
        log.info("%d characters of the training lines are not in the vocabulary (trained as <unk>)",
                 data.unknown_chars)
    first_step = trainer.step
    run_id = store.start_run(kind, os.getpid(), start_step=first_step,
                             config=run_plan(job.target_step if job.planned_steps() is not None else None,
                                             job.planned_seconds and
                                             (job.planned_seconds - job.elapsed_seconds) / 60)
                             ) if store else None
    recorder = StoreRecorder(store, run_id, manager)

    def both(entry: StepLog) -> None:
        recorder.on_log(entry)
        if on_log:
            on_log(entry)

    log.info("training from step %d on %d lines (%d validation), %s", trainer.step, len(data.train),
             len(data.validation), describe_plan(job, resuming))
    if on_start:
        on_start(first_step, job.target_step if job.planned_steps() is not None else None)
    try:
        result = trainer.run(job, data, manager, None, should_stop, both, recorder.on_checkpoint)
    except Exception as exc:
        if store:
            store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}",
                             steps=trainer.step - first_step, bad_steps=trainer.bad_steps)
        raise
    if store:
        store.finish_run(run_id, "completed" if result.status != "interrupted" else "interrupted",
                         steps=result.steps, val_bpc_after=result.val_bpc,
                         checkpoint_id=recorder.last_checkpoint_id, bad_steps=result.bad_steps)
    return TrainOutcome(result, run_id, trainer)


def run_plan(target_step: int | None, minutes: float | None = None) -> dict:
    """Where a run means to stop, recorded with it so `tweetgen status` (any process) can show
    step N of M and an ETA: the target step, or the end time of a time budget."""
    ends_at = datetime.fromtimestamp(time.time() + minutes * 60, UTC).isoformat() if minutes else None
    return {"target_step": target_step, "ends_at": ends_at}


def describe_plan(job: TrainJob, resuming: bool) -> str:
    parts = []
    if job.planned_steps() is not None:
        parts.append(f"{job.planned_steps()} steps from step {job.start_step}")
    if job.planned_seconds:
        parts.append(f"{job.planned_seconds / 60:g} minutes")
    resumed = f", resumed ({job.elapsed_seconds:.0f} s trained)" if resuming else ""
    return "a plan of " + " or ".join(parts) + resumed


def continued_or_new_job(settings: Settings, trainer: Trainer, manager: CheckpointManager) -> TrainJob:
    """Continue the latest checkpoint's training job (same data, same position) when the corpus
    it trained on is unchanged; else a new job over the whole corpus."""
    end = corpus.complete_end(settings.corpus_file)
    latest = manager.paths()[-1] if manager.paths() else None
    if latest is not None:
        meta = _meta_or_none(latest)
        if meta and meta["job"]["kind"] == "train" and meta["job"]["corpus_end"] == end \
                and meta["step"] == trainer.step:
            return TrainJob.from_dict(meta["job"])
    return TrainJob("train", settings.random_seed + trainer.step, 0, end, trainer.step,
                    corpus_identity=corpus.file_identity(settings.corpus_file, end), fresh_from=end)


def _meta_or_none(path: Path) -> dict | None:
    try:
        return read_meta(path)
    except CheckpointError:
        return None


# ---------------------------------------------------------------- generation


def open_generator(settings: Settings, checkpoint: str | None = None,
                   with_novelty: bool = True) -> tuple[Generator, Checkpoint]:
    """A generator on the named, promoted or latest checkpoint (falling back when corrupt)."""
    intra_threads, _ = cpu.configure_threads(settings)  # before TensorFlow starts, when it has not yet
    ckpt, model, vocab = load_usable_checkpoint(checkpoint_manager(settings), checkpoint)
    novelty = None
    if with_novelty and settings.corpus_file.exists():
        index = shared_index(settings.corpus_file, settings.novelty_ngram)
        index.update()
        novelty = index.novelty
    generator = Generator(model, vocab, settings.max_tweet_chars, novelty, settings.max_line_chars,
                          context_mode=trained_context(ckpt),
                          matmul_dtype=cpu.sampling_matmul_dtype(settings, intra_threads))
    return generator, ckpt


def trained_context(ckpt: Checkpoint) -> str:
    """The context_mode the checkpoint was trained with ("none" for one made before it existed)."""
    return str(ckpt.meta.get("context_mode") or "none")


def model_and_vocab(ckpt: Checkpoint) -> tuple[CharGRU, Vocab]:
    """The checkpoint's model and vocabulary; one that does not fit is a CheckpointError naming it."""
    try:
        vocab = Vocab.from_json(ckpt.meta["vocab"])
        model = model_from_checkpoint(ckpt)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {ckpt.path} is incompatible ({type(exc).__name__}: {exc})") from None
    if model.vocab_size != vocab.size:
        raise CheckpointError(f"checkpoint {ckpt.path} is incompatible: its model has {model.vocab_size} "
                              f"ids but its vocabulary {vocab.size}")
    return model, vocab


def load_usable_checkpoint(manager: CheckpointManager, name: str | None = None
                           ) -> tuple[Checkpoint, CharGRU, Vocab]:
    """The named, promoted or latest checkpoint with its model, falling back past corrupt and
    incompatible ones (each logged, naming the file)."""
    built: dict[Path, tuple[CharGRU, Vocab]] = {}

    def check(ckpt: Checkpoint) -> None:
        built[ckpt.path] = model_and_vocab(ckpt)

    ckpt = manager.load_for_generation(name, check=check)
    if ckpt is None:
        raise CheckpointError(f"no usable checkpoint in {manager.directory}; run `tweetgen train` first")
    model, vocab = built[ckpt.path]
    return ckpt, model, vocab


def sample_rows(samples: list[Sample], ckpt_id: int | None, ckpt: Checkpoint, source: str,
                extra: list[dict] | None = None) -> list[dict]:
    """Rows for the samples table; `extra[i]` adds columns to row i (selection's score)."""
    rows = [{
        "text": s.text, "seed": s.seed, "temperature": s.temperature, "top_k": s.top_k,
        "checkpoint_id": ckpt_id, "checkpoint_step": ckpt.step, "mean_logprob": s.mean_logprob,
        "copied": bool(s.copied), "novelty": s.novelty, "source": source, "mode": s.mode,
        "ended": s.ended,
    } for s in samples]
    for row, more in zip(rows, extra or []):
        row.update(more)
    return rows


def candidate_rows(candidates: list[Candidate], ckpt_id: int | None, ckpt: Checkpoint, source: str,
                   per_tweet: int | None) -> list[dict]:
    return sample_rows([c.sample for c in candidates], ckpt_id, ckpt, source,
                       [c.row_fields(per_tweet) for c in candidates])


@dataclass
class OnDemandResult:
    """What an on-demand generation made: the candidates shown (stored when ids are set)."""
    candidates: list[Candidate]
    ids: list[int | None]
    sampled: int
    dropped: dict[str, int]


def generate_on_demand(settings: Settings, generator: Generator, ckpt: Checkpoint, store: Store | None,
                       seeds: list[str], n: int, temperature: float, top_k: int = 0,
                       random_seed: int | None = None, mode: str = "continue", source: str = "cli",
                       raw: bool = False) -> OnDemandResult:
    """`tweetgen generate` and POST /api/generate: n selected tweets per seed (each the best of
    candidates_per_tweet samples, see tweetgen.selection), stored when a store is given. With
    `raw`, n plain samples per seed, each judged and scored but all kept."""
    check_request(seeds, n, temperature, top_k, generator.max_chars, mode)  # the user's n, not n x candidates
    selector = Selector(settings, generator, store.existing_text_keys if store else lambda keys: set())
    if raw:
        candidates = selector.judge(generator.generate(seeds, n, temperature, top_k, random_seed, mode))
        sampled, per_tweet = len(candidates), 1
    else:
        candidates = selector.select(seeds, n, temperature, top_k, random_seed, mode)
        sampled, per_tweet = selector.sampled, settings.candidates_per_tweet
    ids: list[int | None] = [None] * len(candidates)
    if store is not None and candidates:
        row = store.get_checkpoint(str(ckpt.path))
        ids = store.add_samples(candidate_rows(candidates, row["id"] if row else None, ckpt, source,
                                               per_tweet))
    return OnDemandResult(candidates, ids, sampled, selector.dropped)


# ---------------------------------------------------------------- evaluation


def evaluate_file(settings: Settings, path: Path, checkpoint: str | None = None) -> dict:
    """Bits per character of a checkpoint on any text file (one entry per line, same cleaning)."""
    ckpt, model, vocab = load_usable_checkpoint(checkpoint_manager(settings), checkpoint)
    batch = corpus.read_lines(path)
    sequences, unknown = encode_lines([corpus.plain_text(line) for line in batch.lines], vocab,
                                      settings.max_line_chars)
    bpc = bits_per_char(model, sequences) if sequences else float("nan")
    chars = int(sum(len(s) - 1 for s in sequences))
    return {"file": str(path), "checkpoint": ckpt.name, "step": ckpt.step, "lines": len(batch.lines),
            "rejected": sum(batch.rejected.values()), "characters": chars,
            "unknown_chars": unknown, "bits_per_char": None if np.isnan(bpc) else float(bpc)}


# ---------------------------------------------------------------- scheduled and on-demand tweets


class GeneratorCache:
    """The promoted checkpoint's generator, reloaded when another checkpoint is promoted;
    its novelty index follows the corpus as lines are appended (the process's shared one)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.generator: Generator | None = None
        self.checkpoint: Checkpoint | None = None
        self.corpus_index = shared_index(settings.corpus_file, settings.novelty_ngram)
        self.unsaved: list[dict] = []  # generated rows a failed database write left to store
        self.last_selection: dict = {}  # the last generate job's kept, sampled and dropped counts
        self.stamp: tuple = ()

    def get(self) -> tuple[Generator, Checkpoint]:
        manager = checkpoint_manager(self.settings)
        wanted = manager.promoted_path() or (manager.paths()[-1] if manager.paths() else None)
        # The file's change time too: a fine-tune with no steps rewrites the same step's file.
        stamp = (wanted, _mtime(wanted))
        if self.generator is None or self.checkpoint is None or stamp != self.stamp:
            self.generator, self.checkpoint = self._load(manager)
            self.stamp = stamp
            log.info("generating from checkpoint %s (step %d)", self.checkpoint.name, self.checkpoint.step)
        self.corpus_index.update()
        self.generator.novelty = self.corpus_index.novelty
        return self.generator, self.checkpoint

    def _load(self, manager: CheckpointManager) -> tuple[Generator, Checkpoint]:
        """The promoted checkpoint in the current generator when its vocabulary and model shape
        are the same (its weights assigned: no new model and no new trace, which TensorFlow
        would never free); else a new generator."""
        if self.generator is not None and self.checkpoint is not None:
            ckpt = manager.load_for_generation()
            same = ckpt is not None and all(ckpt.meta.get(key) == self.checkpoint.meta.get(key)
                                            for key in ("vocab", "model_config"))
            weights = self.generator.model.weights
            if same and [tuple(w.shape) for w in weights] == [tuple(a.shape) for a in ckpt.weights]:
                for variable, value in zip(weights, ckpt.weights):
                    variable.assign(value)
                self.generator.context_mode = trained_context(ckpt)
                return self.generator, ckpt
        return open_generator(self.settings, with_novelty=False)



DEFAULT_SEED_WORDS = 4


def default_seeds(settings: Settings) -> list[str]:
    """The configured seeds, else the corpus's most common first words and ''; seeds that differ
    only in case or spacing ('Fix', 'fix', ' fix') count once (the first, likeliest, is kept).
    The words come from the shared corpus index, which reads only what was appended since its
    last update (while a generator cache holds it, as the daemon's does)."""
    if settings.seeds:
        return distinct_seeds(settings.seeds)
    index = shared_index(settings.corpus_file, settings.novelty_ngram)
    index.update()
    words = distinct_seeds(index.common_first_words(4 * DEFAULT_SEED_WORDS))
    return distinct_seeds([*words[:DEFAULT_SEED_WORDS], ""])


def distinct_seeds(seeds: Iterable[str]) -> list[str]:
    """Seeds in order, without those equal to an earlier one but for case and spacing."""
    kept: dict[str, str] = {}
    for seed in seeds:
        kept.setdefault(" ".join(seed.casefold().split()), seed)
    return list(kept.values())


def _mtime(path: Path | None) -> int | None:
    try:
        return path.stat().st_mtime_ns if path is not None else None
    except OSError:
        return None


MAX_UNSAVED_SAMPLES = 10_000  # tweets held in memory while the database refuses writes


def generate_scheduled(settings: Settings, store: Store, cache: GeneratorCache | None) -> GeneratorCache:
    """The generate job: samples_per_seed tweets per seed per temperature, stored in one
    transaction. If the store refuses the write (locked, disk full) the tweets stay in the cache
    and the next run stores them with its own; the StoreError is raised for the job's record."""
    cache = cache or GeneratorCache(settings)
    generator, ckpt = cache.get()
    seeds = default_seeds(settings)
    row = store.get_checkpoint(str(ckpt.path))
    held = len(cache.unsaved)
    # Each stored tweet is the best of candidates_per_tweet samples (tweetgen.selection), in one
    # batch per temperature (no second round: fewer tweets rather than weaker ones); tweets held
    # from a failed write count as this job's own, so none is stored twice.
    selector = Selector(settings, generator, store.existing_text_keys)
    selector.avoid(unsaved["text"] for unsaved in cache.unsaved)
    for temperature in settings.temperatures:
        kept = selector.select(seeds, settings.samples_per_seed, temperature, settings.top_k, rounds=1)
        cache.unsaved.extend(candidate_rows(kept, row["id"] if row else None, ckpt, "scheduled",
                                            settings.candidates_per_tweet))
    cache.last_selection = {"kept": len(selector.kept), "sampled": selector.sampled,
                            "dropped": dict(selector.dropped)}
    log.info("kept %d of %d candidates (dropped: %s)", len(selector.kept), selector.sampled,
             ", ".join(f"{n} {why}" for why, n in sorted(selector.dropped.items())) or "none")
    if len(cache.unsaved) > MAX_UNSAVED_SAMPLES:
        log.warning("dropping the %d oldest unstored tweets (the database refuses writes)",
                    len(cache.unsaved) - MAX_UNSAVED_SAMPLES)
        del cache.unsaved[:-MAX_UNSAVED_SAMPLES]
    try:
        store.add_samples(cache.unsaved)
    except StoreError:
        log.warning("%d generated tweets kept in memory, to be stored by the next run",
                    len(cache.unsaved))
        raise
    log.info("stored %d tweets from %s for seeds %s%s", len(cache.unsaved), ckpt.name, seeds,
             f" ({held} of them kept from a run whose write failed)" if held else "")
    cache.unsaved = []
    return cache
