"""The stacked-GRU character model and its single-step form for sampling.

The GRU layers are plain `keras.layers.GRU` with the default activations, `reset_after=True`,
no recurrent dropout and `unroll=False`: exactly the conditions under which Keras runs them on
the cuDNN kernel when a GPU is present. Dropout between layers is applied here, statelessly,
from an explicit seed, so a resumed run draws the very same dropout masks.

On a machine without a GPU the full-sequence pass takes a CPU fast path instead of the Keras
layer's generic loop (`gru_sequence`): the same weights (the layer's own variables), the same
per-step arithmetic in the same order, so the same outputs (tests/test_fastpath.py checks
them against `keras.layers.GRU`), but the input projections of all timesteps are one large
matrix multiply (for the first layer, a lookup in a per-id table, `first_layer_table`), and
the backward pass is hand-written: one small matrix multiply per step for the recurrent
gradient, with the weight gradients summed over all steps in one large multiply at the end.
It costs about 20% less CPU time per training step than the Keras loop. `TWEETGEN_FAST_GRU=0`
turns it off, `=1` forces it; a GPU always gets the Keras layer (cuDNN).

The single-step form is the Keras cells (`step`); the sampler uses `table_step`, the same
arithmetic with the first layer's input projection of every id computed once
(`first_layer_table`) and looked up, which saves a matrix multiply per character.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def shape_bucket(size: int, minimum: int = 1) -> int:
    """The power of two at or above `size` (at least `minimum`). Compiled functions are fed
    batches padded to these sizes, so they see few distinct shapes: XLA compiles each shape once
    (generation), and TensorFlow's oneDNN kernels keep memory for every shape they meet for good
    (evaluation; see tweetgen.train.LENGTH_MULTIPLE)."""
    return max(minimum, 1 << max(size - 1, 0).bit_length())


def use_fast_gru() -> bool:
    """Whether full-sequence GRU passes take the CPU fast path (see the module docstring)."""
    forced = os.environ.get("TWEETGEN_FAST_GRU", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    return not tf.config.list_physical_devices("GPU")


# ---------------------------------------------------------------- the CPU fast path


def matmul(a: tf.Tensor, b: tf.Tensor, dtype: tf.DType = tf.float32, **kwargs: Any) -> tf.Tensor:
    """a @ b with its operands rounded to `dtype` (bfloat16: the CPU's AMX/AVX512-BF16 units),
    accumulated in float32 and returned in a's dtype; float32 is a plain matmul."""
    if dtype == tf.float32:  # no rounding: the operands' own dtype (float16 under mixed precision)
        return tf.matmul(a, b, **kwargs)
    return tf.cast(tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype), **kwargs), a.dtype)


def gru_sequence(gru: keras.layers.GRU, x: tf.Tensor | None,
                 projected: tf.Tensor | None = None, matmul_dtype: tf.DType = tf.float32) -> tf.Tensor:
    """`gru(x)` (return_sequences=True, zero initial state) computed by the fast path.

    x: (batch, time, features) -> (batch, time, units), with the layer's own weights. Or, instead
    of x, its input projection `projected` = x @ kernel + input bias, time-major (time, batch, 3u).
    matmul_dtype bfloat16 rounds the operands of every matrix multiply (forward and backward)
    to bfloat16; the weights, the state, the sums and the gradients stay float32.
    """
    cell = gru.cell
    if not gru.built:
        gru.build(tuple(x.shape))
    kernel, recurrent_kernel, bias = (tf.convert_to_tensor(v) for v in
                                      (cell.kernel, cell.recurrent_kernel, cell.bias))
    if projected is None:
        batch, steps = tf.shape(x)[0], tf.shape(x)[1]
        flat = tf.reshape(tf.transpose(x, [1, 0, 2]), [-1, kernel.shape[0]])
        # Keras adds the input bias to x @ kernel before splitting into the z, r, h parts.
        projected = tf.reshape(matmul(flat, kernel, matmul_dtype) + bias[0], [steps, batch, 3 * cell.units])
    initial = tf.zeros([tf.shape(projected)[1], cell.units], projected.dtype)
    recurrence = _gru_recurrence if matmul_dtype == tf.float32 else _gru_recurrence_bf16
    outputs = recurrence(projected, initial, recurrent_kernel, bias[1])
    return tf.transpose(outputs, [1, 0, 2])


@tf.custom_gradient
def _gru_recurrence(projected, initial, recurrent_kernel, recurrent_bias):
    """The recurrent part of a reset-after GRU, time-major, in Keras GRUCell's exact order.

    projected (T, B, 3u) = x_t @ kernel + input_bias; returns h (T, B, u).
    """
    return _recurrence(projected, initial, recurrent_kernel, recurrent_bias, tf.float32)


@tf.custom_gradient
def _gru_recurrence_bf16(projected, initial, recurrent_kernel, recurrent_bias):
    """_gru_recurrence with its matrix multiplies' operands rounded to bfloat16."""
    return _recurrence(projected, initial, recurrent_kernel, recurrent_bias, tf.bfloat16)


def _recurrence(projected, initial, recurrent_kernel, recurrent_bias, matmul_dtype):
    """The forward pass and the gradient function of _gru_recurrence (see there)."""
    units = recurrent_kernel.shape[0]
    # Rounded once, not at every step.
    step_kernel = recurrent_kernel if matmul_dtype == tf.float32 else tf.cast(recurrent_kernel, matmul_dtype)
    steps = tf.shape(projected)[0]
    inputs = tf.TensorArray(projected.dtype, size=steps).unstack(projected)

    def step(t, h, hs, h_prevs, zrs, rs, zs, hhs, rhs):
        matrix_x = inputs.read(t)
        matrix_inner = matmul(h, step_kernel, matmul_dtype) + recurrent_bias
        x_zr, x_h = tf.split(matrix_x, [2 * units, units], axis=1)
        inner_zr, inner_h = tf.split(matrix_inner, [2 * units, units], axis=1)
        zr = tf.sigmoid(x_zr + inner_zr)
        z, r = tf.split(zr, 2, axis=1)
        hh = tf.tanh(x_h + r * inner_h)
        new_h = z * h + (1 - z) * hh
        return (t + 1, new_h, hs.write(t, new_h), h_prevs.write(t, h), zrs.write(t, zr), rs.write(t, r),
                zs.write(t, z), hhs.write(t, hh), rhs.write(t, inner_h))

    # clear_after_read=False: the backward pass reads these and then stacks h_prevs (eager mode
    # would otherwise have zeroed the elements it read).
    arrays = [tf.TensorArray(projected.dtype, size=steps, clear_after_read=False) for _ in range(7)]
    _, _, hs, h_prevs, zrs, rs, zs, hhs, rhs = tf.while_loop(
        lambda t, *_: t < steps, step, (tf.constant(0), initial, *arrays))
    outputs = hs.stack()

    def grad(d_outputs):
        d_out = tf.TensorArray(d_outputs.dtype, size=steps).unstack(d_outputs)
        transposed = tf.transpose(step_kernel)

        def back(i, carry, d_projected, d_inner):
            t = steps - 1 - i
            z, r, hh, inner_h = zs.read(t), rs.read(t), hhs.read(t), rhs.read(t)
            dh = d_out.read(t) + carry
            dz = dh * (h_prevs.read(t) - hh)
            through_z = dh * z
            d_hh = tf.raw_ops.TanhGrad(y=hh, dy=dh - through_z)
            d_zr = tf.raw_ops.SigmoidGrad(y=zrs.read(t), dy=tf.concat([dz, d_hh * inner_h], axis=1))
            d_in = tf.concat([d_zr, d_hh * r], axis=1)
            carry = through_z + matmul(d_in, transposed, matmul_dtype)
            return (i + 1, carry, d_projected.write(t, tf.concat([d_zr, d_hh], axis=1)),
                    d_inner.write(t, d_in))

        _, d_initial, d_projected, d_inner = tf.while_loop(
            lambda i, *_: i < steps, back,
            (tf.constant(0), tf.zeros_like(initial),
             tf.TensorArray(projected.dtype, size=steps), tf.TensorArray(projected.dtype, size=steps)))
        d_inner = d_inner.stack()
        flat_inner = tf.reshape(d_inner, [-1, 3 * units])
        d_kernel = matmul(tf.reshape(h_prevs.stack(), [-1, units]), flat_inner, matmul_dtype,
                          transpose_a=True)
        return d_projected.stack(), d_initial, d_kernel, tf.reduce_sum(flat_inner, axis=0)

    return outputs, grad


# ---------------------------------------------------------------- the model


class OneHot(keras.layers.Layer):
    """Ids to one-hot vectors: the lecture's input, kept as an option."""

    def __init__(self, depth: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.depth = depth

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.one_hot(ids, self.depth, dtype=self.compute_dtype)


class CharGRU(keras.Model):
    """ids (batch, time) -> logits (batch, time, vocab)."""

    def __init__(self, vocab_size: int, input_mode: str = "embedding", embedding_dim: int = 64,
                 gru_sizes: tuple[int, ...] | list[int] = (128, 256), dropout: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.input_mode = input_mode
        self.dropout_rate = float(dropout)
        if input_mode == "onehot":
            self.embed = OneHot(vocab_size, name="onehot")
        else:
            self.embed = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        # Keep these GRUs inside cuDNN's conditions (see module docstring).
        self.grus = [
            keras.layers.GRU(units, return_sequences=True, reset_after=True, name=f"gru_{i}")
            for i, units in enumerate(gru_sizes)
        ]
        self.head = keras.layers.Dense(vocab_size, name="logits", dtype="float32")
        self.fast_gru = use_fast_gru()

    def call(self, ids: tf.Tensor, dropout_seed: tf.Tensor | None = None,
             matmul_dtype: tf.DType = tf.float32) -> tf.Tensor:
        """matmul_dtype: bfloat16 rounds the fast path's matrix multiplies' operands (training on
        a CPU with bfloat16 units, see tweetgen.cpu); the Keras layers ignore it."""
        if self.fast_gru:
            return self._fast_call(ids, dropout_seed, matmul_dtype)
        x = self.embed(ids)
        for i, gru in enumerate(self.grus):
            x = gru(x)
            x = self._dropout(x, dropout_seed, i)
        return self.head(x)

    def _fast_call(self, ids: tf.Tensor, dropout_seed: tf.Tensor | None,
                   matmul_dtype: tf.DType = tf.float32) -> tf.Tensor:
        """`call` on the CPU fast path. The first layer's input projection of every id is
        computed once (`first_layer_table`) and looked up, time-major: the same sums as
        embedding, then x @ kernel + bias, with a (vocab x features) multiply instead of a
        (batch * time x features) one."""
        if not self.embed.built:
            self.embed.build(tuple(ids.shape))
        for i, gru in enumerate(self.grus):
            if not gru.built:
                gru.build((None, None, self._input_width(i)))
        projected = tf.gather(self.first_layer_table(), tf.transpose(ids))
        x = None
        for i, gru in enumerate(self.grus):
            x = gru_sequence(gru, x, projected if i == 0 else None, matmul_dtype)
            x = self._dropout(x, dropout_seed, i)
        return self.head(x)

    def _input_width(self, layer: int) -> int:
        if layer > 0:
            return self.grus[layer - 1].units
        return self.vocab_size if self.input_mode == "onehot" else self.embed.output_dim

    def _dropout(self, x: tf.Tensor, seed: tf.Tensor | None, layer: int) -> tf.Tensor:
        if seed is None or self.dropout_rate <= 0:
            return x
        layer_seed = tf.stack([seed[0], seed[1] * 16 + layer])
        return tf.nn.experimental.stateless_dropout(x, self.dropout_rate, seed=layer_seed)

    # ---- single-step form: the same weights, one character at a time, state carried

    def initial_state(self, batch: int | tf.Tensor) -> list[tf.Tensor]:
        return [tf.zeros((batch, gru.units), self.compute_dtype) for gru in self.grus]

    def step(self, ids: tf.Tensor, states: list[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """ids (batch,) and per-layer states -> logits (batch, vocab), new states."""
        x = self.embed(ids)
        new_states = []
        for gru, state in zip(self.grus, states):
            x, _ = gru.cell(x, [state], training=False)
            new_states.append(x)
        return self.head(x), new_states

    def first_layer_table(self) -> tf.Tensor:
        """(vocab, 3 * units) table: the first GRU layer's input projection of every id
        (embedding or one-hot, then x @ kernel + input bias); a row lookup replaces that
        matrix multiply per character, in the sampler and on the CPU fast path."""
        cell = self.grus[0].cell
        if self.input_mode == "onehot":
            inputs = tf.eye(self.vocab_size, dtype=self.compute_dtype)
        else:
            inputs = tf.convert_to_tensor(self.embed.embeddings)
        return tf.matmul(inputs, tf.convert_to_tensor(cell.kernel)) + tf.convert_to_tensor(cell.bias)[0]

    def table_step(self, ids: tf.Tensor, states: list[tf.Tensor],
                   table: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """`step` with the first layer's input projection looked up in `first_layer_table()`:
        the same arithmetic as the Keras cells otherwise (tests/test_fastpath.py compares them)."""
        x = tf.gather(table, ids)
        new_states = []
        for i, (gru, state) in enumerate(zip(self.grus, states)):
            cell = gru.cell
            bias = tf.convert_to_tensor(cell.bias)
            if i > 0:
                x = tf.matmul(x, tf.convert_to_tensor(cell.kernel)) + bias[0]
            x = _gru_cell(x, state, tf.convert_to_tensor(cell.recurrent_kernel), bias[1])
            new_states.append(x)
        return self.head(x), new_states

    def fused_step_weights(self, dtype: tf.DType) -> tuple[list[tf.Tensor], list[tf.Tensor], list[tf.Tensor]]:
        """The sampler's fused step (tweetgen.generate): both per-character multiplies of layer
        i's output h_i in one, h_i @ fused[i]. Per layer: fused[i] = [recurrent kernel of layer i |
        kernel of layer i+1, or the output layer's for the last] in `dtype`, the recurrent bias of
        layer i and the bias of what follows (layer i+1's input bias, or the output bias)."""
        fused, recurrent_biases, next_biases = [], [], []
        for i, gru in enumerate(self.grus):
            cell = gru.cell
            if i + 1 < len(self.grus):
                following = self.grus[i + 1].cell
                next_kernel, next_bias = following.kernel, tf.convert_to_tensor(following.bias)[0]
            else:
                next_kernel, next_bias = self.head.kernel, tf.convert_to_tensor(self.head.bias)
            matrix = tf.concat([tf.convert_to_tensor(cell.recurrent_kernel),
                                tf.convert_to_tensor(next_kernel)], axis=1)
            fused.append(tf.cast(matrix, dtype))
            recurrent_biases.append(tf.convert_to_tensor(cell.bias)[1])
            next_biases.append(next_bias)
        return fused, recurrent_biases, next_biases


def _gru_cell(matrix_x: tf.Tensor, h: tf.Tensor, recurrent_kernel: tf.Tensor,
              recurrent_bias: tf.Tensor) -> tf.Tensor:
    """One reset-after GRU step from the projected input, in Keras GRUCell's order of operations."""
    return gru_update(matrix_x, h, tf.matmul(h, recurrent_kernel) + recurrent_bias)


def gru_update(matrix_x: tf.Tensor, h: tf.Tensor, matrix_inner: tf.Tensor,
               sigmoid: Callable[[tf.Tensor], tf.Tensor] = tf.sigmoid) -> tf.Tensor:
    """A reset-after GRU step from both projections: matrix_x = x @ kernel + input bias and
    matrix_inner = h @ recurrent kernel + recurrent bias (Keras GRUCell's order of operations)."""
    units = h.shape[-1]
    x_zr, x_h = tf.split(matrix_x, [2 * units, units], axis=1)
    inner_zr, inner_h = tf.split(matrix_inner, [2 * units, units], axis=1)
    z, r = tf.split(sigmoid(x_zr + inner_zr), 2, axis=1)
    hh = tf.tanh(x_h + r * inner_h)
    return z * h + (1 - z) * hh


def sigmoid_by_tanh(x: tf.Tensor) -> tf.Tensor:
    """sigmoid(x) as 0.5 * tanh(x / 2) + 0.5: equal to within 4e-7, and under XLA on a CPU half
    the cost of its logistic (measured: a 256-unit GRU step for 64 rows, 33 against 62 us)."""
    return 0.5 * tf.tanh(0.5 * x) + 0.5


def build_model(vocab_size: int, model_config: dict[str, Any]) -> CharGRU:
    """A model with its weights created (so they can be assigned or saved at once)."""
    model = CharGRU(vocab_size, **model_config)
    model(tf.zeros((1, 1), tf.int32))
    return model


# A new output row's bias sits this far below the lowest old one, with a zero kernel column: the
# grown model gives the new characters almost no probability, so what it says about the old ones
# is unchanged (tests/test_vocab.py measures it on validation bits/char); training lifts them.
GROWN_LOGIT_GAP = 8.0


def grow_model(model: CharGRU, new_vocab_size: int, model_config: dict[str, Any]) -> CharGRU:
    """A model for a larger vocabulary whose rows for the old ids are exactly the old ones.

    The new ids start where they cost nothing: as input, the `<unk>` row (what the model saw for
    those characters until now); as output, a zero kernel column and a bias `GROWN_LOGIT_GAP`
    below the lowest old one, so the old characters' probabilities barely move.
    """
    from .vocab import UNK

    old_size = model.vocab_size
    if new_vocab_size < old_size:
        raise ValueError("a vocabulary can only grow")
    grown = build_model(new_vocab_size, model_config)
    head_kernel, head_bias = id(model.head.kernel), id(model.head.bias)
    for old_var, new_var in zip(model.weights, grown.weights):
        old = old_var.numpy()
        if old.shape == tuple(new_var.shape):
            new_var.assign(old)
            continue
        # The one axis that differs is the vocabulary axis; copy the old rows into it.
        axis = next(a for a in range(old.ndim) if old.shape[a] != new_var.shape[a])
        if id(old_var) == head_kernel:
            fill = np.zeros_like(np.take(old, [0], axis=axis))
        elif id(old_var) == head_bias:
            fill = np.full((1,), old.min() - GROWN_LOGIT_GAP, old.dtype)
        else:  # the input side: the embedding, or the first GRU kernel of one-hot input
            fill = np.take(old, [UNK], axis=axis)
        added = np.repeat(fill, new_vocab_size - old_size, axis=axis)
        new_var.assign(np.concatenate([old, added], axis=axis))
    return grown


def weights_as_arrays(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]
