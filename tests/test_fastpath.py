"""The CPU fast paths give what the Keras layers give: GRU outputs and gradients, the model's
logits and loss gradients on both routes, the sampling step's table lookup, the sampler's draws."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tweetgen import model as model_module
from tweetgen.generate import Generator
from tweetgen.model import build_model, gru_sequence, use_fast_gru
from tweetgen.train import make_optimizer, make_train_step, masked_mean_loss
from tweetgen.vocab import PAD, UNK

CONFIG = {"input_mode": "embedding", "embedding_dim": 8, "gru_sizes": [12, 20], "dropout": 0.25}


def keras_gru(units: int, features: int, seed: int = 0) -> keras.layers.GRU:
    keras.utils.set_random_seed(seed)
    layer = keras.layers.GRU(units, return_sequences=True, reset_after=True)
    layer.build((None, None, features))
    # Non-zero biases, so the input and recurrent biases are both exercised.
    layer.cell.bias.assign(np.random.default_rng(seed).normal(0, 0.3, layer.cell.bias.shape))
    return layer


@pytest.mark.parametrize("batch,steps", [(3, 7), (1, 1), (5, 40)])
def test_fast_gru_gives_the_keras_gru_outputs(batch: int, steps: int) -> None:
    layer = keras_gru(16, 6)
    x = tf.random.stateless_normal((batch, steps, 6), seed=[1, steps])
    np.testing.assert_allclose(gru_sequence(layer, x).numpy(), layer(x).numpy(), rtol=0, atol=1e-6)
    compiled = tf.function(lambda v: gru_sequence(layer, v))
    np.testing.assert_allclose(compiled(x).numpy(), layer(x).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_fast_gru_gives_the_keras_gru_gradients(compiled: bool) -> None:
    layer = keras_gru(16, 6, seed=3)
    x = tf.random.stateless_normal((4, 11, 6), seed=[2, 3])
    weights = tf.random.stateless_normal((4, 11, 16), seed=[4, 5])
    variables = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]

    def grads(forward):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(forward(x) * weights)
        return tape.gradient(loss, [x, *variables])

    def both():
        return grads(lambda v: gru_sequence(layer, v)), grads(layer)

    fast, reference = tf.function(both)() if compiled else both()
    for got, want in zip(fast, reference):
        want = tf.convert_to_tensor(want).numpy()
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())


def test_the_model_gives_the_same_on_both_routes(monkeypatch) -> None:
    monkeypatch.setenv("TWEETGEN_FAST_GRU", "1")
    fast = build_model(30, CONFIG)
    monkeypatch.setenv("TWEETGEN_FAST_GRU", "0")
    plain = build_model(30, CONFIG)
    assert fast.fast_gru and not plain.fast_gru
    # The same weights in the same order (checkpoints store them as a list).
    assert [w.path.split("/", 1)[1] for w in fast.weights] == [w.path.split("/", 1)[1] for w in plain.weights]
    for source, target in zip(fast.weights, plain.weights):
        target.assign(source)
    ids = tf.constant(np.random.default_rng(0).integers(0, 30, (5, 17)).astype(np.int32))
    np.testing.assert_allclose(fast(ids).numpy(), plain(ids).numpy(), rtol=0, atol=1e-6)
    seed = tf.constant([7, 9], tf.int64)  # with dropout: the same masks on both routes
    gradients = []
    for model in (fast, plain):
        with tf.GradientTape() as tape:
            loss = masked_mean_loss(model, ids, dropout_seed=seed)
        gradients.append((float(loss), tape.gradient(loss, model.trainable_variables)))
    (fast_loss, fast_grads), (plain_loss, plain_grads) = gradients
    assert fast_loss == pytest.approx(plain_loss, rel=1e-6)
    for got, want in zip(fast_grads, plain_grads):
        want = tf.convert_to_tensor(want).numpy()
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("clip_norm", [100.0, 0.05])  # clipping off, and clipping every step
def test_both_routes_take_the_same_optimizer_steps(monkeypatch, clip_norm: float) -> None:
    """Several compiled train steps from the same weights on the same batches give the same
    weights and Adam slots on both routes. Batches repeat ids in a row, so the Keras route's
    sparse embedding gradient (IndexedSlices with repeated indices) must reach clipping and Adam
    summed per id, as the fast route's dense one does."""
    models = {}
    for route in ("1", "0"):
        monkeypatch.setenv("TWEETGEN_FAST_GRU", route)
        keras.utils.set_random_seed(11)
        models[route] = build_model(30, CONFIG)
    for source, target in zip(models["1"].weights, models["0"].weights):
        target.assign(source)
    initial = [w.numpy() for w in models["1"].weights]
    rng = np.random.default_rng(5)
    batches = [rng.integers(1, 6, (4, 13)).astype(np.int32) for _ in range(4)]  # few ids, repeated
    results = {}
    for route, model in models.items():
        optimizer = make_optimizer(model, 1e-2)
        step = make_train_step(model, optimizer, clip_norm)
        norms = [float(step(tf.constant(b), tf.constant([3, i], tf.int64), tf.constant(1.0))[1])
                 for i, b in enumerate(batches)]
        results[route] = norms, [w.numpy() for w in model.weights], [v.numpy() for v in optimizer.variables]
    (fast_norms, fast_weights, fast_slots), (plain_norms, plain_weights, plain_slots) = results.values()
    np.testing.assert_allclose(fast_norms, plain_norms, rtol=1e-5)
    assert all(not np.allclose(w, b) for w, b in zip(fast_weights, initial))
    for got, want in zip(fast_weights + fast_slots, plain_weights + plain_slots, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 + 1e-4 * np.abs(want).max())


def test_the_embedding_steps_its_scale_times_adams_step() -> None:
    batch = tf.constant(np.random.default_rng(3).integers(1, 30, (4, 9)).astype(np.int32))
    seed = tf.constant([1, 1], tf.int64)
    results = []
    for scale in (1.0, 4.0):
        keras.utils.set_random_seed(5)
        model = build_model(30, CONFIG)
        start = [w.numpy() for w in model.weights]
        optimizer = make_optimizer(model, 1e-2)
        make_train_step(model, optimizer, 1.0, embedding_lr_scale=scale)(batch, seed, tf.constant(1.0))
        moved = [w.numpy() - s for w, s in zip(model.weights, start)]
        results.append((moved, [v.numpy() for v in optimizer.variables]))
    (plain, plain_slots), (scaled, scaled_slots) = results
    assert model.weights[0] is model.embed.embeddings  # the embedding comes first
    assert np.abs(plain[0]).max() > 1e-3
    np.testing.assert_allclose(scaled[0], 4.0 * plain[0], rtol=1e-4, atol=1e-7)
    for a, b in zip(plain[1:] + plain_slots, scaled[1:] + scaled_slots, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-8)


def test_bfloat16_multiplies_stay_close_to_float32(monkeypatch) -> None:
    """The fast path with its multiplies' operands in bfloat16 gives float32 losses and gradients
    within bfloat16's rounding of the float32 path's (and not the very same: it does round)."""
    monkeypatch.setenv("TWEETGEN_FAST_GRU", "1")
    keras.utils.set_random_seed(2)
    model = build_model(30, CONFIG)
    ids = tf.constant(np.random.default_rng(1).integers(0, 30, (6, 21)).astype(np.int32))
    seed = tf.constant([1, 2], tf.int64)
    results = []
    for dtype in (tf.float32, tf.bfloat16):
        with tf.GradientTape() as tape:
            loss = masked_mean_loss(model, ids, dropout_seed=seed, matmul_dtype=dtype)
        grads = tape.gradient(loss, model.trainable_variables)
        assert loss.dtype == tf.float32 and all(g.dtype == tf.float32 for g in grads)
        results.append((float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]))
    (loss32, grads32), (loss16, grads16) = results
    assert loss16 == pytest.approx(loss32, rel=1e-2) and loss16 != loss32
    for got, want in zip(grads16, grads32, strict=True):
        np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


def test_a_gpu_gets_the_keras_layer(monkeypatch) -> None:
    monkeypatch.delenv("TWEETGEN_FAST_GRU", raising=False)
    monkeypatch.setattr(model_module.tf.config, "list_physical_devices",
                        lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert use_fast_gru() is False
    assert build_model(10, CONFIG).fast_gru is False
    monkeypatch.setattr(model_module.tf.config, "list_physical_devices", lambda kind=None: [])
    assert use_fast_gru() is True
    monkeypatch.setenv("TWEETGEN_FAST_GRU", "0")
    assert use_fast_gru() is False


@pytest.mark.parametrize("input_mode", ["embedding", "onehot"])
def test_the_table_step_equals_the_keras_cell_step(input_mode: str) -> None:
    model = build_model(25, dict(CONFIG, input_mode=input_mode))
    for gru in model.grus:
        gru.cell.bias.assign(np.random.default_rng(1).normal(0, 0.3, gru.cell.bias.shape))
    table = model.first_layer_table()
    states_a = states_b = model.initial_state(4)
    for t in range(6):
        ids = tf.constant([t, 3, 24, (7 * t) % 25])
        logits_a, states_a = model.step(ids, states_a)
        logits_b, states_b = model.table_step(ids, states_b, table)
        np.testing.assert_allclose(logits_b.numpy(), logits_a.numpy(), rtol=0, atol=1e-5)
        for a, b in zip(states_a, states_b):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.5, 0), (1.0, 3)])
def test_the_sampler_draws_from_the_tempered_softmax(temperature: float, top_k: int) -> None:
    """The compiled loop's inverse-CDF draw: frequencies match softmax(logits / T), top-k cut,
    and padding and <unk> are never drawn."""
    rows = 40_000
    probs = np.array([0.2, 0.3, 0.1, 0.15, 0.05, 1e-4, 0.08, 0.12], np.float32)
    logits = tf.constant(np.log(probs)[None, :].repeat(rows, 0))
    banned = tf.scatter_nd([[PAD], [UNK]], [-1e9, -1e9], [len(probs)])
    uniform = tf.random.stateless_uniform([rows], [3, 4])
    draw, *_ = Generator._pick_step(
        tf.constant(5), logits, tf.zeros((rows, 2), tf.int32), tf.zeros([rows], tf.int32),
        tf.fill([rows], 100), tf.fill([rows], temperature), tf.constant(top_k), uniform, banned,
        tf.zeros([rows], tf.bool), tf.zeros([rows], tf.int32), tf.zeros([rows]))
    expected = probs.astype(np.float64) ** (1 / temperature)
    expected[[PAD, UNK]] = 0
    if top_k:
        expected[np.argsort(expected)[:-top_k]] = 0
    expected /= expected.sum()
    frequencies = np.bincount(draw.numpy(), minlength=len(probs)) / rows
    assert frequencies[PAD] == frequencies[UNK] == 0
    np.testing.assert_allclose(frequencies, expected, atol=0.01)
