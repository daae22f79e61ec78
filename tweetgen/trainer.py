"""A training job from start to checkpoint: the data it uses, the loop, resume.

A `TrainJob` says what a run is doing (train on the corpus, or fine-tune on a byte range of new
lines plus replayed old ones), with its seed, its step target and its data position. It is saved
in every checkpoint, so a run stopped at any step resumes on the same batches and dropout masks.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from . import corpus, faults
from .checkpoints import Checkpoint, CheckpointError, CheckpointManager
from .config import Settings
from .errors import NonFiniteLossError
from .model import CharGRU, build_model, grow_model
from .train import (
    Batcher,
    Position,
    StepLog,
    bits_per_char,
    encode_lines,
    learning_rate_at,
    make_eval_fn,
    make_optimizer,
    make_train_step,
)
from .vocab import Vocab

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    kind: str  # "train" (from scratch or continued) or "finetune"
    seed: int
    corpus_start: int  # finetune: new lines start here; train: 0
    corpus_end: int  # lines in [corpus_start, corpus_end) are the job's own
    target_step: int  # the global step at which the job is complete
    learning_rate: float | None = None  # None: the decaying schedule
    replay_ratio: float = 0.0
    position: Position = field(default_factory=Position)
    done: bool = False
    baseline_bpc: float | None = None  # finetune: validation bits/char before it started
    run_id: int | None = None  # the store's run, so a resumed job continues its record
    new_chars: str = ""  # finetune: characters the job added to the vocabulary

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainJob":
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


def split_lines(lines: list[str], fraction: float) -> tuple[list[str], list[str]]:
    train, validation = [], []
    for line in lines:
        (validation if corpus.is_validation(line, fraction) else train).append(line)
    return train, validation


def validation_subset(lines: list[str], limit: int) -> list[str]:
    """A stable, bounded subset: validation cost must not grow with the corpus."""
    if len(lines) <= limit:
        return lines
    keyed = sorted(set(lines), key=lambda s: corpus.split_key(s))
    return keyed[:limit]


def build_data(settings: Settings, vocab: Vocab, job: TrainJob) -> TrainData:
    """The sequences a job trains and validates on, rebuilt identically on resume."""
    path = settings.corpus_file
    old = corpus.read_lines(path, 0, job.corpus_start).lines if job.corpus_start else []
    new = corpus.read_lines(path, job.corpus_start, job.corpus_end).lines
    old_train, old_val = split_lines(old, settings.validation_fraction)
    new_train, new_val = split_lines(new, settings.validation_fraction)
    replay: list[str] = []
    if job.kind == "finetune" and old_train and job.replay_ratio > 0:
        rng = np.random.default_rng([job.seed, 7])
        count = min(len(old_train), math.ceil(job.replay_ratio * len(new_train)))
        replay = [old_train[i] for i in rng.choice(len(old_train), count, replace=False)]
    lines = new_train + replay if job.kind == "finetune" else old_train + new_train
    validation = validation_subset(old_val + new_val, settings.max_validation_lines)
    train_seqs, unknown = encode_lines(lines, vocab, settings.max_line_chars)
    val_seqs, _ = encode_lines(validation, vocab, settings.max_line_chars)
    return TrainData(train_seqs, val_seqs, len(new_train), len(replay), unknown)


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


class Trainer:
    """A model with its optimizer, vocabulary and global step."""

    def __init__(self, settings: Settings, vocab: Vocab, model: CharGRU, step: int = 0,
                 optimizer_values: list[np.ndarray] | None = None) -> None:
        self.settings = settings
        self.vocab = vocab
        self.model = model
        self.model_config = model_config_of(model)
        self.step = step
        self.optimizer = make_optimizer(model, settings.learning_rate)
        if optimizer_values is not None:
            assign_optimizer(self.optimizer, optimizer_values)
        self.train_step = make_train_step(model, self.optimizer, settings.clip_norm)
        self.eval_fn = make_eval_fn(model)
        self.last_loss: float | None = None
        self.loss_scale = 1.0  # multiplied into the loss; NaN makes a step non-finite (tests)
        self.bad_steps = 0  # non-finite steps in the current or last run, also after it raised

    @classmethod
    def fresh(cls, settings: Settings, vocab: Vocab) -> "Trainer":
        keras_seed(settings.random_seed)
        return cls(settings, vocab, build_model(vocab.size, settings.model_config()))

    @classmethod
    def from_checkpoint(cls, settings: Settings, ckpt: Checkpoint) -> "Trainer":
        vocab = Vocab.from_json(ckpt.meta["vocab"])
        model = model_from_checkpoint(ckpt)
        return cls(settings, vocab, model, ckpt.step, ckpt.optimizer)

    def validation_bpc(self, data: TrainData) -> float:
        return bits_per_char(self.model, data.validation, eval_fn=self.eval_fn)

    def grow_vocab(self, new_chars: list[str]) -> None:
        """Add characters; old rows are kept exactly. Adam's moments restart (shapes change)."""
        vocab = self.vocab.grown(new_chars)
        if vocab.size == self.vocab.size:
            return
        log.info("vocabulary grows from %d to %d ids: %r", self.vocab.size, vocab.size,
                 "".join(vocab.chars[len(self.vocab.chars):]))
        iterations = int(self.optimizer.iterations.numpy())
        self.model = grow_model(self.model, vocab.size, self.model_config)
        self.vocab = vocab
        self.optimizer = make_optimizer(self.model, self.settings.learning_rate)
        self.optimizer.iterations.assign(iterations)
        self.train_step = make_train_step(self.model, self.optimizer, self.settings.clip_norm)
        self.eval_fn = make_eval_fn(self.model)

    def learning_rate(self, job: TrainJob) -> float:
        if job.learning_rate is not None:
            return job.learning_rate
        s = self.settings
        return learning_rate_at(self.step, s.learning_rate, s.lr_decay_rate, s.lr_decay_steps,
                                s.min_learning_rate)

    def run(self, job: TrainJob, data: TrainData, manager: CheckpointManager,
            deadline: float | None = None, should_stop: Callable[[], bool] = lambda: False,
            on_log: Callable[[StepLog], None] | None = None,
            on_checkpoint: Callable[[Path, dict], None] | None = None) -> RunResult:
        """Train until the job's target step, the deadline, or should_stop(); checkpoint at the end."""
        s = self.settings
        # A job with nothing to train (e.g. every new line fell in the validation split) still
        # completes and checkpoints, so its lines count as ingested.
        batcher = Batcher(data.train, s.batch_size, job.seed, job.position) if data.train else None
        bad_steps = self.bad_steps = 0
        window_chars, window_start = 0, time.perf_counter()
        start_step = self.step
        status = "completed"
        while batcher is not None and self.step < job.target_step:
            if should_stop():
                status = "interrupted"
                break
            if deadline is not None and time.monotonic() >= deadline:
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
                self.save(job, data, manager, on_checkpoint)
        # A time budget that ran out completes the job too; only a stop request leaves it open.
        job.done = self.step >= job.target_step or status == "stopped"
        checkpoint, bpc = None, None
        if self.step > start_step or job.done:
            checkpoint, meta = self.save(job, data, manager, on_checkpoint)
            bpc = meta["val_bpc"]
        return RunResult(self.step - start_step, status, self.last_loss, bpc, checkpoint, bad_steps)

    def save(self, job: TrainJob, data: TrainData, manager: CheckpointManager,
             on_checkpoint: Callable[[Path, dict], None] | None = None) -> tuple[Path, dict]:
        meta = self.meta(job, self.validation_bpc(data))
        path = manager.save(meta, [w.numpy() for w in self.model.weights],
                            [v.numpy() for v in self.optimizer.variables])
        faults.crash_point("checkpoint-saved")
        log.info("checkpoint %s: step %d, train loss %s, validation %.4f bits/char", path.name,
                 self.step, f"{self.last_loss:.4f}" if self.last_loss is not None else "-",
                 meta["val_bpc"])
        if on_checkpoint:
            on_checkpoint(path, meta)
        return path, meta

    def meta(self, job: TrainJob, val_bpc: float) -> dict[str, Any]:
        path = self.settings.corpus_file
        trained_through = job.corpus_end if (job.done or job.kind == "train") else job.corpus_start
        return {
            "step": self.step,
            "created": datetime.now(timezone.utc).isoformat(),
            "vocab": self.vocab.to_json(),
            "vocab_hash": self.vocab.hash,
            "vocab_size": self.vocab.size,
            "model_config": self.model_config,
            "job": job.as_dict(),
            "trained_through": trained_through,
            "corpus_identity": corpus.file_identity(path, job.corpus_end) if path.exists() else None,
            "train_loss": self.last_loss,
            "val_bpc": val_bpc,
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


def keras_seed(seed: int) -> None:
    """Seeds weight initialisation so a fresh model is reproducible."""
    import keras

    keras.utils.set_random_seed(seed)


def progress_printer(total_steps: int | None, stream=sys.stderr) -> Callable[[StepLog], None]:
    """A one-line progress bar on a terminal, plain log lines otherwise."""
    started = time.monotonic()
    first_step: list[int] = []

    def show(entry: StepLog) -> None:
        if not first_step:
            first_step.append(entry.step - 1)
        done = entry.step - first_step[0]
        rate = done / max(time.monotonic() - started, 1e-9)
        eta = ""
        if total_steps:
            remaining = max(total_steps - done, 0) / max(rate, 1e-9)
            eta = f" ETA {int(remaining // 60)}m{int(remaining % 60):02d}s"
        text = (f"step {entry.step} loss {entry.loss:.4f} lr {entry.learning_rate:.2e} "
                f"{entry.chars_per_s:,.0f} chars/s{eta}")
        if stream.isatty():
            width = 24
            filled = int(width * min(done / total_steps, 1.0)) if total_steps else 0
            bar = "#" * filled + "-" * (width - filled) if total_steps else ""
            stream.write(f"\r[{bar}] {text}   ")
            stream.flush()
        else:
            log.info(text)

    return show
