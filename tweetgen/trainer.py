"""A training job from start to checkpoint: the data it uses, the loop, resume.

A `TrainJob` says what a run is doing (train on the corpus, or fine-tune on a byte range of new
lines plus replayed old ones), with its seed, its plan and its data position. It is saved in every
checkpoint, so a run stopped at any step resumes on the same batches and dropout masks.

The plan is the run's planned length: a number of steps (`start_step` to `target_step`), a
number of seconds of wall time (`planned_seconds`, with `elapsed_seconds` counted as it trains),
or both (whichever ends first). The learning rate warms up over the first steps and anneals to
its floor exactly at the end of the plan (tweetgen.train.learning_rate_at), so every run, however
long, ends settled. A stopped run that is resumed continues the same plan: for a step plan,
exactly (N steps + resume + N steps gives the weights of one 2N-step run); a timed plan resumes
with the wall time it had already trained, and trains for the time that is left.

A training plan (kind "train": the initial run, `tweetgen train`) ends on the weights of its best
checkpoint when its last weights score worse on validation (`Trainer.end_on_best_weights`). Every
checkpoint the plan wrote counts, also one a stop wrote, so a stopped and resumed plan has that
one more candidate than a straight run; the steps themselves are the same.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from . import context, corpus, distribute, faults
from .checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointManager,
    checkpoint_name,
    load_checkpoint,
)
from .config import Settings
from .context import Example
from .errors import NonFiniteLossError
from .model import CharGRU, build_model, grow_model
from .train import (
    Batcher,
    Position,
    StepLog,
    bits_per_char,
    learning_rate_at,
    make_optimizer,
)
from .vocab import SEP, Vocab

log = logging.getLogger(__name__)

NO_STEP_LIMIT = 2**62  # the target_step of a plan measured in time only


@dataclass
class TrainJob:
    kind: str  # "train" (from scratch or continued), "finetune" or "idle" (see tweetgen/idle.py)
    seed: int
    corpus_start: int  # finetune: new lines start here; train: 0
    corpus_end: int  # lines in [corpus_start, corpus_end) are the job's own
    target_step: int  # the global step at which the plan ends (NO_STEP_LIMIT: a timed plan)
    learning_rate: float | None = None  # the schedule's peak; None: settings.learning_rate
    replay_ratio: float = 0.0
    position: Position = field(default_factory=Position)
    done: bool = False
    baseline_bpc: float | None = None  # finetune: the served model's old validation at the start
    baseline_new_bpc: float | None = None  # finetune: the served model's bits/char on held-out new lines
    run_id: int | None = None  # the store's run, so a resumed job continues its record
    new_chars: str = ""  # finetune: characters the job added to the vocabulary
    # finetune: the validation subset of the lines before corpus_start (None: read them)
    validation_base: list[str] | None = None
    # The plan (see the module docstring). start_step None: the step the job first runs at.
    start_step: int | None = None
    planned_seconds: float | None = None  # a timed plan: its length in seconds of wall time
    elapsed_seconds: float = 0.0  # wall time the plan has trained so far, over all its runs

    def new_plan(self, start_step: int, steps: int | None = None, seconds: float | None = None) -> None:
        """Plan a run from `start_step`: `steps` steps, `seconds` of wall time, or both."""
        self.start_step = start_step
        self.target_step = start_step + steps if steps is not None else NO_STEP_LIMIT
        self.planned_seconds = seconds
        self.elapsed_seconds = 0.0
        self.done = False
        self.best_bpc = self.best_step = None  # a new plan ends on the best of its own checkpoints

    def planned_steps(self) -> int | None:
        """The plan's length in steps; None for a plan measured in time only."""
        if self.target_step >= NO_STEP_LIMIT // 2:
            return None
        return self.target_step - (self.start_step or 0)

    def progress(self, step: int) -> float:
        """How far through its plan the job is when it takes the step after global step `step`:
        the further of its step and its time fractions, 1 at the plan's last step."""
        fraction = 0.0
        planned = self.planned_steps()
        if planned:
            fraction = (step - (self.start_step or 0) + 1) / planned
        if self.planned_seconds:
            fraction = max(fraction, self.elapsed_seconds / self.planned_seconds)
        return min(fraction, 1.0)

    def time_is_up(self) -> bool:
        return self.planned_seconds is not None and self.elapsed_seconds >= self.planned_seconds
    corpus_identity: dict | None = None  # the corpus's identity at corpus_end, when it was read
    # train: the best validation of this plan's checkpoints, and its step (see end_on_best_weights);
    # idle: the best validation of this stretch of idle training (tweetgen.idle)
    best_bpc: float | None = None
    best_step: int | None = None
    stale_checkpoints: int = 0  # idle: checkpoints since the best one
    # Where the lines new to the model begin: the corpus end of its last whole-corpus training
    # plan, carried by the fine-tunes and idle runs after it (None: a checkpoint from before this
    # was recorded, every line counts as new). Idle training draws these lines more often.
    fresh_from: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        data = dict(data)
        data["position"] = Position(**data.get("position", {}))
        return cls(**data)


@dataclass
class TrainData:
    train: list[np.ndarray]
    validation: list[np.ndarray]
    new_lines: int = 0
    replay_lines: int = 0
    unknown_chars: int = 0
    # the validation texts carried to the next job (a fine-tune adds its new validation lines)
    validation_lines: list[str] = field(default_factory=list)
    new_validation: list[np.ndarray] = field(default_factory=list)  # finetune: held-out new lines
    # context on: held-out replies after their message (loss on the reply: reply bits/char)
    reply_validation: list[np.ndarray] = field(default_factory=list)


def split_lines(lines: list[str], fraction: float) -> tuple[list[str], list[str]]:
    train, validation = [], []
    for line in lines:
        (validation if corpus.is_validation(line, fraction) else train).append(line)
    return train, validation


def split_examples(lines: list[str], items: list[Example], fraction: float
                   ) -> tuple[list[Example], list[str], dict[str, Example]]:
    """The training examples, the validation lines, and the example of each validation line: the
    split is the line's hash, as in split_lines (a pair is held out whole; in previous-line mode
    a reply is held out, its message may be trained)."""
    train, validation, held_out = [], [], {}
    for line, item in zip(lines, items):
        if corpus.is_validation(line, fraction):
            validation.append(line)
            held_out.setdefault(line, item)
        else:
            train.append(item)
    return train, validation, held_out


def validation_subset(lines: list[str], limit: int) -> list[str]:
    """A stable, bounded subset: validation cost must not grow with the corpus."""
    if len(lines) <= limit:
        return lines
    keyed = sorted(set(lines), key=lambda s: corpus.split_key(s))
    return keyed[:limit]


def build_data(settings: Settings, vocab: Vocab, job: TrainJob) -> TrainData:
    """The sequences a job trains and validates on, rebuilt identically on resume.

    A training job reads the whole corpus. A fine-tune reads only its own new lines, streamed,
    so its cost and memory follow the append and not the corpus: it trains at most
    finetune_max_steps x batch_size of them (a seeded sample when more were appended), draws
    its replay lines from the older part by random reads (corpus.sample_lines). It validates on
    the previous subset (job.validation_base, carried in every checkpoint's meta as
    `validation_lines`: the "old validation") and, apart, on its held-out new lines (a stable
    share by text hash, `new_validation_fraction`, never trained by this job); the new lines of
    the main validation split join the subset carried to the next job.

    Lines become examples by the context_mode (tweetgen.context): validation is always of
    single texts (continue mode: comparable whatever the mode); with context on, the held-out
    replies are also measured after their message (`reply_validation`).
    """
    mode = settings.context_mode
    if job.kind != "finetune":
        lines = corpus.read_lines(settings.corpus_file, 0, job.corpus_end).lines
        items = context.examples(lines, mode)
        train, validation, held_out = split_examples(lines, items, settings.validation_fraction)
        validation = validation_subset(validation, settings.max_validation_lines)
        if job.kind == "idle":
            recent = min(settings.idle_recent_lines, fresh_training_lines(settings, job, lines))
            train = with_recent_weighted(train, recent, settings.idle_recent_weight,
                                         random.Random(f"{job.seed}-recent"))
        held_out_items = [held_out[line] for line in validation]
        return _encoded(settings, vocab, job, train, held_out_items, validation, 0, 0)
    path, fraction = settings.corpus_file, settings.validation_fraction
    old_validation = job.validation_base
    if old_validation is None:  # a checkpoint written before the subset was carried: read it once
        old_validation = _validation_lines(settings, 0, job.corpus_start, [])
    carried, new_validation, new_train = old_validation, [], []
    new_examples: dict[str, Example] = {}
    cap, seen, rng = settings.finetune_max_steps * settings.batch_size, 0, random.Random(f"{job.seed}-new")
    previous: list[str] = []  # previous-line mode: the line before a batch's first line
    for batch in corpus.iter_batches(path, job.corpus_start, job.corpus_end):
        items = context.examples(previous + batch.lines, mode)[len(previous):]
        previous = batch.lines[-1:] or previous
        train, held_out, held_items = split_examples(batch.lines, items,
                                                     max(fraction, settings.new_validation_fraction))
        new_examples.update((line, item) for line, item in held_items.items() if line not in new_examples)
        new_validation = validation_subset(new_validation + held_out, settings.max_validation_lines)
        carried = validation_subset(carried + [t for t in held_out if corpus.is_validation(t, fraction)],
                                    settings.max_validation_lines)
        for item in train:  # a reservoir sample: every new line has the same chance
            seen += 1
            if len(new_train) < cap:
                new_train.append(item)
            elif (slot := rng.randrange(seen)) < cap:
                new_train[slot] = item
    replay: list[str] = []
    if job.corpus_start and job.replay_ratio > 0 and new_train:
        older = corpus.lines_before(path, job.corpus_start) * (1 - fraction)  # cached count
        count = min(math.ceil(job.replay_ratio * len(new_train)), int(older))
        replay = corpus.sample_lines(path, job.corpus_start, count, random.Random(f"{job.seed}-replay"),
                                     keep=lambda text: not corpus.is_validation(text, fraction))
    # Replayed and carried lines are a sample, not consecutive: in previous-line mode they are single.
    replayed = context.examples(replay, mode, consecutive=False)
    old_examples = context.examples(old_validation, mode, consecutive=False)
    data = _encoded(settings, vocab, job, new_train + replayed, old_examples, old_validation,
                    len(new_train), len(replay))
    data.validation_lines = carried
    new_held_out = [new_examples[line] for line in new_validation]
    data.new_validation, _ = context.encode_examples([item.single() for item in new_held_out], vocab,
                                                     settings.max_line_chars)
    if mode != "none":
        data.reply_validation, _ = context.encode_examples(
            context.replies(old_examples + new_held_out), vocab, settings.max_line_chars)
    return data


def fresh_of(previous: dict[str, Any]) -> int | None:
    """The `fresh_from` of a job that continues the model `previous` (a checkpoint's job) left."""
    return previous["corpus_end"] if previous["kind"] == "train" else previous.get("fresh_from")


def fresh_training_lines(settings: Settings, job: TrainJob, lines: list[str]) -> int:
    """How many of `lines` (the corpus up to job.corpus_end, in order) are training lines newer
    than the model's last whole-corpus plan. Weighting the newest lines up when nothing was
    appended would only overfit the corpus's last lines: measured from the 3,000-step fortunes
    model, 8 minutes of idle training reached 2.0981 bits/char with the corpus's last 500 lines
    drawn 4 times, 2.0836 without (README, Stream)."""
    start = job.fresh_from or 0
    if start >= job.corpus_end:
        return 0
    appended = corpus.count_lines(settings.corpus_file, start, job.corpus_end) if start else len(lines)
    tail = lines[len(lines) - min(appended, len(lines)):]
    return sum(not corpus.is_validation(line, settings.validation_fraction) for line in tail)


def with_recent_weighted(lines: list, recent: int, weight: float, rng: random.Random) -> list:
    """`lines` with the newest `recent` of them drawn `weight` times as often: whole extra copies,
    and a seeded sample of them for the fraction (so the same job gets the same list)."""
    newest = lines[len(lines) - min(recent, len(lines)):]
    extra = newest * (int(weight) - 1)
    extra += rng.sample(newest, round((weight - int(weight)) * len(newest)))
    return lines + extra


def _validation_lines(settings: Settings, start: int, stop: int, subset: list[str]) -> list[str]:
    for batch in corpus.iter_batches(settings.corpus_file, start, stop):
        _, val = split_lines(batch.lines, settings.validation_fraction)
        subset = validation_subset(subset + val, settings.max_validation_lines)
    return subset


def _encoded(settings: Settings, vocab: Vocab, job: TrainJob, train: list[Example],
             validation: list[Example], validation_lines: list[str], new_lines: int,
             replay_lines: int) -> TrainData:
    """Sequences of the examples: a context_share of the training replies after their message
    (drawn with the job's seed), validation as single texts and, with context on, its replies."""
    max_chars = settings.max_line_chars
    if settings.context_mode != "none":
        rng = random.Random(f"{job.seed}-context")
        train = context.with_context_share(train, settings.context_share, rng)
    train_seqs, unknown = context.encode_examples(train, vocab, max_chars)
    val_seqs, _ = context.encode_examples([item.single() for item in validation], vocab, max_chars)
    data = TrainData(train_seqs, val_seqs, new_lines, replay_lines, unknown, validation_lines)
    if settings.context_mode != "none":
        data.reply_validation, _ = context.encode_examples(context.replies(validation), vocab, max_chars)
    return data


def finetune_steps(settings: Settings, train_lines: int) -> int:
    """The fine-tune budget grows with the new (and replayed) lines, not with the corpus."""
    steps = math.ceil(settings.finetune_epochs * train_lines / settings.batch_size)
    return int(min(settings.finetune_max_steps, max(settings.finetune_min_steps, steps)))


# ---------------------------------------------------------------- the trainer


@dataclass
class RunResult:
    steps: int
    status: str  # "completed", "interrupted" or "stopped" (time budget)
    train_loss: float | None
    val_bpc: float | None
    checkpoint: Path | None
    bad_steps: int = 0
    val_new_bpc: float | None = None  # finetune: bits/char on its held-out new lines


class Trainer:
    """A model with its optimizer, vocabulary and global step."""

    def __init__(self, settings: Settings, vocab: Vocab, model: CharGRU, step: int = 0,
                 optimizer_values: list[np.ndarray] | None = None) -> None:
        self.settings = settings
        self.vocab = vocab
        self.model_config = model_config_of(model)
        self.step = step
        self.strategy = distribute.strategy_for(settings)
        self._prepare(model)
        if optimizer_values is not None:
            assign_optimizer(self.optimizer, optimizer_values)
        self.last_loss: float | None = None
        self.loss_scale = 1.0  # multiplied into the loss; NaN makes a step non-finite (tests)
        self.bad_steps = 0  # non-finite steps in the current or last run, also after it raised
        if settings.context_mode != "none" and vocab.sep_id is None:
            self.grow_vocab([SEP])  # a vocabulary made before <sep> existed: grown, at no cost

    @classmethod
    def fresh(cls, settings: Settings, vocab: Vocab) -> Trainer:
        keras_seed(settings.random_seed)
        return cls(settings, vocab, build_model(vocab.size, settings.model_config()))

    @classmethod
    def from_checkpoint(cls, settings: Settings, ckpt: Checkpoint) -> Trainer:
        vocab = Vocab.from_json(ckpt.meta["vocab"])
        model = model_from_checkpoint(ckpt)
        return cls(settings, vocab, model, ckpt.step, ckpt.optimizer)

    def validation_bpc(self, data: TrainData) -> float:
        return bits_per_char(self.model, data.validation, eval_fn=self.eval_fn)

    def grow_vocab(self, new_chars: list[str]) -> None:
        """Add characters; old rows are kept exactly (see model.grow_model), and so is Adam's
        state for them: restarting its moments with the step count kept would make the next
        updates several times the learning rate and undo what the model knew."""
        vocab = self.vocab.grown(new_chars)
        if vocab.size == self.vocab.size:
            return
        log.info("vocabulary grows from %d to %d ids: %r", self.vocab.size, vocab.size,
                 "".join(vocab.chars[len(self.vocab.chars):]))
        old_state = [v.numpy() for v in self.optimizer.variables]
        self._prepare(grow_model(self.model, vocab.size, self.model_config))
        self.vocab = vocab
        assign_optimizer(self.optimizer, [_zero_padded(value, tuple(var.shape)) for value, var
                                          in zip(old_state, self.optimizer.variables)])

    def _prepare(self, model: CharGRU) -> None:
        """The model under the strategy (tweetgen.distribute), a new optimizer, the compiled step."""
        self.model = distribute.place_model(self.strategy, self.settings, model, self.model_config)
        with self.strategy.scope():
            self.optimizer = make_optimizer(self.model, self.settings.learning_rate)
        self.train_step = distribute.make_train_step(self.strategy, self.settings, self.model, self.optimizer)
        self.eval_fn = distribute.make_eval_fn(self.strategy, self.model)

    def learning_rate(self, job: TrainJob) -> float:
        """The job's schedule at the current step: warm-up, then an anneal to the floor that
        ends with the plan (see tweetgen.train.learning_rate_at)."""
        s = self.settings
        peak = job.learning_rate if job.learning_rate is not None else s.learning_rate
        steps_done = self.step - (job.start_step if job.start_step is not None else self.step)
        return learning_rate_at(job.progress(self.step), steps_done, peak, s.min_learning_rate,
                                s.lr_warmup_steps, s.lr_schedule)

    def run(self, job: TrainJob, data: TrainData, manager: CheckpointManager,
            deadline: float | None = None, should_stop: Callable[[], bool] = lambda: False,
            on_log: Callable[[StepLog], None] | None = None,
            on_checkpoint: Callable[[Path, dict], None] | None = None,
            on_validated: Callable[[float], None] | None = None) -> RunResult:
        """Train until the end of the job's plan (its target step or its planned seconds), the
        deadline, or should_stop(); checkpoint at the end. `on_validated(bpc)` sees each
        checkpoint's validation before the job is written into it."""
        s = self.settings
        if job.start_step is None:  # a job made without a plan start (a fine-tune): it starts now
            job.start_step = self.step
        # A job with nothing to train (e.g. every new line fell in the validation split) still
        # completes and checkpoints, so its lines count as ingested.
        batcher = Batcher(data.train, s.batch_size, job.seed, job.position) if data.train else None
        bad_steps = self.bad_steps = 0
        window_chars, window_start = 0, time.perf_counter()
        start_step = self.step
        status = "completed"
        # Wall time counts towards a timed plan from the start of each run, on top of what the
        # plan had trained before (saved in the checkpoints), so a resumed plan continues.
        run_started, elapsed_before = time.monotonic(), job.elapsed_seconds
        while batcher is not None and self.step < job.target_step:
            job.elapsed_seconds = elapsed_before + (time.monotonic() - run_started)
            if should_stop():
                status = "interrupted"
                break
            if job.time_is_up() or (deadline is not None and time.monotonic() >= deadline):
                status = "stopped"
                break
            batch = batcher.next()
            self.optimizer.learning_rate = self.learning_rate(job)
            seed = tf.constant([job.seed, self.step], tf.int64)
            scale = float("nan") if faults.nan_step() else self.loss_scale
            loss, norm, applied = self.train_step(tf.constant(batch), seed, tf.constant(scale, tf.float32))
            job.position = batcher.position
            window_chars += int(np.count_nonzero(batch[:, 1:]))
            if not bool(applied):
                bad_steps = self.bad_steps = bad_steps + 1
                log.warning("step %d: non-finite loss (%s), not applied (%d so far)", self.step,
                            float(loss), bad_steps)
                if bad_steps >= s.max_bad_steps:
                    raise NonFiniteLossError(
                        f"{bad_steps} steps with a non-finite loss; stopped, previous checkpoint kept")
                continue
            self.step += 1
            self.last_loss = float(loss)
            faults.crash_point("train-step")
            if on_log and (self.step % s.log_every == 0 or self.step == job.target_step):
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                on_log(StepLog(self.step, float(loss), float(self.optimizer.learning_rate.numpy()),
                               float(norm), window_chars / elapsed, True))
                window_chars, window_start = 0, time.perf_counter()
            if self.step % s.checkpoint_every == 0 and self.step < job.target_step:
                self.save(job, data, manager, on_checkpoint, on_validated)
        # A time budget that ran out completes the job too; only a stop request leaves it open.
        job.done = self.step >= job.target_step or status == "stopped"
        checkpoint, meta = None, {}
        if self.step > start_step or job.done:
            bpc = self.end_on_best_weights(job, data, manager) if job.done and job.kind == "train" else None
            checkpoint, meta = self.save(job, data, manager, on_checkpoint, on_validated, bpc)
        return RunResult(self.step - start_step, status, self.last_loss, meta.get("val_bpc"), checkpoint,
                         bad_steps, meta.get("val_new_bpc"))

    def save(self, job: TrainJob, data: TrainData, manager: CheckpointManager,
             on_checkpoint: Callable[[Path, dict], None] | None = None,
             on_validated: Callable[[float], None] | None = None,
             bpc: float | None = None) -> tuple[Path, dict]:
        """Checkpoint the model (validated now, unless `bpc` is its validation already)."""
        if bpc is None:
            bpc = self.validation_bpc(data)
        if job.kind == "train" and (job.best_bpc is None or bpc < job.best_bpc):
            job.best_bpc, job.best_step = bpc, self.step
        if on_validated:
            on_validated(bpc)
        meta = self.meta(job, bpc)
        meta["validation_lines"] = data.validation_lines  # the next fine-tune starts from it
        meta["val_new_bpc"] = (bits_per_char(self.model, data.new_validation, eval_fn=self.eval_fn)
                               if data.new_validation else None)
        # Context on: bits/char of held-out replies given their message (tweetgen.context).
        meta["val_reply_bpc"] = (bits_per_char(self.model, data.reply_validation, eval_fn=self.eval_fn)
                                 if data.reply_validation else None)
        if not distribute.is_chief(self.strategy):  # a multi-worker run's chief writes and records it
            return manager.directory / checkpoint_name(self.step), meta
        path = manager.save(meta, [w.numpy() for w in self.model.weights],
                            [v.numpy() for v in self.optimizer.variables])
        faults.crash_point("checkpoint-saved")
        train_bpc = f"{self.last_loss / math.log(2):.4f}" if self.last_loss is not None else "-"
        replies = (f", replies given their message {meta['val_reply_bpc']:.4f}"
                   if meta["val_reply_bpc"] is not None else "")
        log.info("checkpoint %s: step %d, training loss %s bits/char, validation %.4f bits/char%s",
                 path.name, self.step, train_bpc, meta["val_bpc"], replies)
        if on_checkpoint:
            on_checkpoint(path, meta)
        return path, meta

    def end_on_best_weights(self, job: TrainJob, data: TrainData, manager: CheckpointManager) -> float:
        """At the end of a training plan, go back to the weights (and optimizer state) of its best
        checkpoint if they scored better than the weights the plan ended with, as Keras'
        `restore_best_weights` does: the last stretch of a long run can overfit a small corpus by
        a little, and the model a run leaves behind is the one that is served and fine-tuned.
        The step count stays. Returns the validation of the weights the plan now ends with.
        A multi-worker run ends on its last weights: every worker would have to load the file."""
        bpc = self.validation_bpc(data)
        if job.best_step is None or job.best_step == self.step or not bpc > job.best_bpc \
                or isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return bpc
        path = manager.directory / checkpoint_name(job.best_step)
        try:
            best = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("the plan's best checkpoint is gone (%s): it ends on its last weights", exc)
            return bpc
        for variable, value in zip(self.model.weights, best.weights, strict=True):
            variable.assign(value)
        assign_optimizer(self.optimizer, best.optimizer)
        log.info("the plan ends on the weights of its best checkpoint (step %d, validation %.4f "
                 "bits/char; its last weights scored %.4f)", job.best_step, job.best_bpc, bpc)
        return job.best_bpc  # the checkpoint's own figure: the same weights on the same lines

    def meta(self, job: TrainJob, val_bpc: float) -> dict[str, Any]:
        path = self.settings.corpus_file
        trained_through = job.corpus_end if (job.done or job.kind == "train") else job.corpus_start
        return {
            "step": self.step,
            "created": datetime.now(UTC).isoformat(),
            "vocab": self.vocab.to_json(),
            "vocab_hash": self.vocab.hash,
            "vocab_size": self.vocab.size,
            "model_config": self.model_config,
            "job": job.as_dict(),
            "trained_through": trained_through,
            "corpus_identity": job.corpus_identity or (corpus.file_identity(path, job.corpus_end)
                                                       if path.exists() else None),
            "train_loss": self.last_loss,
            "val_bpc": val_bpc,
            # what the model was trained with: reply generation feeds the same context
            "context_mode": self.settings.context_mode,
            "settings": self.settings.as_dict(),
        }


# ---------------------------------------------------------------- helpers


def model_config_of(model: CharGRU) -> dict[str, Any]:
    embed_dim = getattr(model.embed, "output_dim", 0)
    return {
        "input_mode": model.input_mode,
        "embedding_dim": int(embed_dim),
        "gru_sizes": [int(g.units) for g in model.grus],
        "dropout": model.dropout_rate,
    }


def model_from_checkpoint(ckpt: Checkpoint) -> CharGRU:
    """The checkpoint's model; a shape mismatch is a clear error naming the file."""
    config = ckpt.meta["model_config"]
    model = build_model(int(ckpt.meta["vocab_size"]), config)
    expected = [tuple(v.shape) for v in model.weights]
    found = [tuple(w.shape) for w in ckpt.weights]
    if expected != found:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit its own model config "
                              f"(weights {found} vs {expected})")
    for var, value in zip(model.weights, ckpt.weights):
        var.assign(value)
    return model


def assign_optimizer(optimizer, values: list[np.ndarray]) -> None:
    variables = optimizer.variables
    if [tuple(v.shape) for v in variables] != [tuple(np.shape(x)) for x in values]:
        raise CheckpointError("optimizer state in checkpoint does not match the model")
    for var, value in zip(variables, values):
        var.assign(value)


def _zero_padded(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`value` in the top-left corner of zeros of `shape` (an optimizer slot of a grown variable)."""
    if value.shape == shape:
        return value
    padded = np.zeros(shape, value.dtype)
    padded[tuple(slice(0, n) for n in value.shape)] = value
    return padded


def keras_seed(seed: int) -> None:
    """Seeds weight initialisation so a fresh model is reproducible."""
    import keras

    keras.utils.set_random_seed(seed)
