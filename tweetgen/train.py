"""Training: length-bucketed batches, the masked loss, the compiled step, validation bits/char.

One corpus line is one sequence: <eos> (the "previous line ended" context), its characters,
then <eos>. Batches are padded to their longest line and the loss is masked on padding, so
padding a batch longer never changes its loss (the GRU is causal, padding comes last).

Each target position has a loss weight of 0 or 1: 0 for padding, and 0 for a position that is
read but not trained, such as the message of a context sequence `<eos> message <sep> reply <eos>`
(tweetgen.context). Such a position's id carries the NO_LOSS flag in the sequence itself, so the
weight travels with the batch through the batcher, the shards and every compiled step unchanged;
`model_inputs` strips the flag before the model reads the ids.

Everything random is derived from (run seed, epoch) for the data order and (run seed, step) for
dropout, so a run resumed from a checkpoint draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from .model import CharGRU, shape_bucket
from .vocab import EOS, NO_LOSS, PAD, Vocab

log = logging.getLogger(__name__)

LN2 = math.log(2.0)


# ---------------------------------------------------------------- sequences and batches


def encode_lines(lines: Sequence[str], vocab: Vocab, max_chars: int) -> tuple[list[np.ndarray], int]:
    """[<eos>, chars..., <eos>] per line (truncated to max_chars), and the unknown-char count."""
    sequences, unknown = [], 0
    for line in lines:
        ids, n_unknown = vocab.encode(line[:max_chars])
        unknown += n_unknown
        tail = [EOS] if len(line) <= max_chars else []
        sequences.append(np.concatenate([[EOS], ids, tail]).astype(np.int32))
    return sequences, unknown


# TensorFlow's oneDNN kernels keep what they compile for every input shape they meet (about 1.5
# MB for each new batch shape of the default model, never freed while the process lives): a
# daemon meeting a new (rows, length) at every fine-tune and evaluation grew for weeks
# (bench/soak.py). So batches come in few shapes: lengths rounded up to a multiple of this (4.5%
# more positions on the fortunes) and rows padded (see bucketed_batch).
LENGTH_MULTIPLE = 8


def pad_batch(sequences: Sequence[np.ndarray], length: int | None = None,
              rows: int | None = None) -> np.ndarray:
    """Sequences as rows of PAD-padded ids; `rows` adds rows of padding only (no loss)."""
    length = length or max(len(s) for s in sequences)
    batch = np.full((max(rows or 0, len(sequences)), length), PAD, dtype=np.int32)
    for row, seq in enumerate(sequences):
        batch[row, : len(seq)] = seq
    return batch


def bucketed_batch(sequences: Sequence[np.ndarray], rows: int,
                   multiple: int = LENGTH_MULTIPLE) -> np.ndarray:
    """pad_batch in one of few shapes: `rows` rows, the length a multiple of `multiple`.
    The padding carries no loss, so the loss and its gradients are those of the sequences."""
    longest = max(len(s) for s in sequences)
    return pad_batch(sequences, -(-longest // multiple) * multiple, rows)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index batches for one epoch: shuffled, then sorted by length within large pools
    (so batches carry little padding), then the batch order shuffled."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class Position:
    """Where a run is in its data: saved in checkpoints so resume continues exactly."""

    epoch: int = 0
    batch: int = 0


class Batcher:
    """Deterministic stream of padded batches over fixed sequences, from a Position."""

    def __init__(self, sequences: list[np.ndarray], batch_size: int, seed: int,
                 position: Position | None = None) -> None:
        if not sequences:
            raise ValueError("no training lines")
        self.sequences = sequences
        self.lengths = np.array([len(s) for s in sequences])
        self.batch_size = batch_size
        self.seed = seed
        self.position = position or Position()
        self._plan = epoch_batches(self.lengths, batch_size, seed, self.position.epoch)

    def next(self) -> np.ndarray:
        if self.position.batch >= len(self._plan):
            self.position = Position(self.position.epoch + 1, 0)
            self._plan = epoch_batches(self.lengths, self.batch_size, self.seed, self.position.epoch)
        index = self._plan[self.position.batch]
        self.position = Position(self.position.epoch, self.position.batch + 1)
        return bucketed_batch([self.sequences[i] for i in index], self.batch_size)


# ---------------------------------------------------------------- loss and validation


def model_inputs(batch: tf.Tensor) -> tf.Tensor:
    """The ids the model reads: every position but the last, without the NO_LOSS flag."""
    return tf.bitwise.bitwise_and(batch[:, :-1], NO_LOSS - 1)


def loss_weights(targets: tf.Tensor) -> tf.Tensor:
    """Per target position: 1.0 where it is trained, 0.0 for padding and NO_LOSS positions."""
    return tf.cast(tf.logical_and(tf.not_equal(targets, PAD), targets < NO_LOSS), tf.float32)


def masked_loss_sum(targets: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(sum of cross-entropy in nats over the weighted targets, the sum of their weights)."""
    weights = loss_weights(targets)
    labels = tf.bitwise.bitwise_and(targets, NO_LOSS - 1)
    logits = tf.cast(logits, tf.float32)  # the loss stays float32 under mixed precision
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(losses * weights), tf.reduce_sum(weights)


def masked_mean_loss(model: CharGRU, batch: tf.Tensor, dropout_seed: tf.Tensor | None = None,
                     matmul_dtype: tf.DType = tf.float32) -> tf.Tensor:
    logits = model(model_inputs(batch), dropout_seed=dropout_seed, matmul_dtype=matmul_dtype)
    total, count = masked_loss_sum(batch[:, 1:], logits)
    return total / tf.maximum(count, 1.0)


def make_eval_fn(model: CharGRU) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32)], reduce_retracing=True)
    def eval_batch(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return masked_loss_sum(batch[:, 1:], model(model_inputs(batch)))

    return eval_batch


def bits_per_char(model: CharGRU, sequences: Sequence[np.ndarray], batch_size: int = 128,
                  eval_fn: Callable | None = None) -> float:
    """Masked bits per character (end-of-text included) over all `sequences`."""
    if not sequences:
        return float("nan")
    eval_fn = eval_fn or make_eval_fn(model)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    total = count = 0.0
    for start in range(0, len(order), batch_size):
        chunk = [sequences[i] for i in order[start : start + batch_size]]
        # Fewer shapes still than training's (see LENGTH_MULTIPLE): evaluation is cheap, and the
        # daemon evaluates a few held-out new lines at every fine-tune. Rows in powers of two.
        rows = min(batch_size, shape_bucket(len(chunk), 8))
        batch = bucketed_batch(chunk, rows, multiple=4 * LENGTH_MULTIPLE)
        loss_sum, n = eval_fn(tf.constant(batch))
        total += float(loss_sum)
        count += float(n)
    return total / max(count, 1.0) / LN2


# ---------------------------------------------------------------- the compiled step


def make_optimizer(model: CharGRU, learning_rate: float) -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    optimizer.build(model.trainable_variables)
    return optimizer


def make_train_step(model: CharGRU, optimizer: keras.optimizers.Optimizer, clip_norm: float,
                    matmul_dtype: tf.DType = tf.float32, embedding_lr_scale: float = 1.0):
    """A compiled step: masked loss, gradients clipped by global norm, applied only if finite.
    matmul_dtype: see CharGRU.call (the loss and the optimizer stay float32).
    embedding_lr_scale: the embedding's Adam update is this many times the others' (its step is
    extrapolated after the optimizer's; Adam's moments are untouched, checkpoints unchanged)."""
    variables = model.trainable_variables
    embedding = getattr(model.embed, "embeddings", None) if embedding_lr_scale != 1.0 else None

    @tf.function(
        input_signature=[tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((2,), tf.int64),
                         tf.TensorSpec((), tf.float32)],
        reduce_retracing=True,
    )
    def train_step(batch: tf.Tensor, seed: tf.Tensor, loss_scale: tf.Tensor):
        with tf.GradientTape() as tape:
            # loss_scale is 1.0 in normal use; fault tests pass NaN to inject a bad step.
            loss = masked_mean_loss(model, batch, dropout_seed=seed, matmul_dtype=matmul_dtype) * loss_scale
        # Dense gradients: the Keras embedding's is sparse (IndexedSlices) with one row per
        # character, repeated ids unsummed; clip_by_global_norm would take the norm of those rows
        # and Adam square them one by one (its second moment then too small, so the embedding's
        # steps many times the learning rate). Densified, the repeats are summed per id, and both
        # GRU paths take the same step (tests/test_fastpath.py). The table is small.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        clipped, norm = tf.clip_by_global_norm(grads, clip_norm)
        finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(norm))

        def apply() -> tf.Tensor:
            before = tf.identity(embedding.value) if embedding is not None else None
            optimizer.apply(clipped, variables)
            if embedding is not None:
                after = tf.convert_to_tensor(embedding.value)
                embedding.assign(before + embedding_lr_scale * (after - before))
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        return loss, norm, applied

    return train_step


SCHEDULES = ("cosine", "exponential")


WARMUP_SHARE = 0.1  # the warm-up never takes more than this share of a plan


def learning_rate_at(progress: float, steps_done: int, peak: float, floor: float,
                     warmup_steps: int = 0, shape: str = "cosine") -> float:
    """The learning rate `progress` (0 to 1) of the way through a run's plan, `steps_done` steps
    into it: a linear warm-up over the first `warmup_steps` steps (ended early when a short plan
    reaches WARMUP_SHARE of its progress), times an anneal from `peak` down to `floor` (cosine, or
    exponential, in the progress fraction) that reaches the floor exactly at progress 1. A floor
    above the peak (a fine-tune's low peak) is the peak."""
    progress = min(max(progress, 0.0), 1.0)
    floor = min(floor, peak)
    if shape == "exponential" and floor > 0:
        annealed = peak * (floor / peak) ** progress
    else:
        annealed = floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    warm = 1.0
    if warmup_steps > 0:
        warm = min(1.0, max((steps_done + 1) / warmup_steps, progress / WARMUP_SHARE))
    return annealed * warm


@dataclass
class StepLog:
    step: int
    loss: float
    learning_rate: float
    grad_norm: float
    chars_per_s: float
    applied: bool

    def as_row(self) -> dict:
        return asdict(self)
