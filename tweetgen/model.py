"""The stacked-GRU character model and its single-step form for sampling.

The GRU layers are plain `keras.layers.GRU` with the default activations, `reset_after=True`,
no recurrent dropout and `unroll=False`: exactly the conditions under which Keras runs them on
the cuDNN kernel when a GPU is present. Dropout between layers is applied here, statelessly,
from an explicit seed, so a resumed run draws the very same dropout masks.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf


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

    def call(self, ids: tf.Tensor, dropout_seed: tf.Tensor | None = None) -> tf.Tensor:
        x = self.embed(ids)
        for i, gru in enumerate(self.grus):
            x = gru(x)
            x = self._dropout(x, dropout_seed, i)
        return self.head(x)

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


def build_model(vocab_size: int, model_config: dict[str, Any]) -> CharGRU:
    """A model with its weights created (so they can be assigned or saved at once)."""
    model = CharGRU(vocab_size, **model_config)
    model(tf.zeros((1, 1), tf.int32))
    return model


def grow_model(model: CharGRU, new_vocab_size: int, model_config: dict[str, Any]) -> CharGRU:
    """A model for a larger vocabulary whose rows for the old ids are exactly the old ones.

    The new characters' rows keep the fresh initialisation of the new model.
    """
    old_size = model.vocab_size
    if new_vocab_size < old_size:
        raise ValueError("a vocabulary can only grow")
    grown = build_model(new_vocab_size, model_config)
    for old_var, new_var in zip(model.weights, grown.weights):
        old, new = old_var.numpy(), new_var.numpy()
        if old.shape == new.shape:
            new_var.assign(old)
            continue
        # The one axis that differs is the vocabulary axis; copy the old rows into it.
        axis = next(a for a in range(old.ndim) if old.shape[a] != new.shape[a])
        index = [slice(None)] * old.ndim
        index[axis] = slice(0, old_size)
        new[tuple(index)] = old
        new_var.assign(new)
    return grown


def weights_as_arrays(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]
