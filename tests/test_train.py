"""Training: learning a tiny corpus, the masked loss, batching, the single-step form, exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import PATTERNS, varied_lines, write_corpus

from tweetgen import corpus, engine
from tweetgen.checkpoints import CheckpointManager
from tweetgen.errors import NonFiniteLossError
from tweetgen.generate import Generator
from tweetgen.model import build_model
from tweetgen.train import (
    Batcher,
    Position,
    bits_per_char,
    encode_lines,
    epoch_batches,
    learning_rate_at,
    masked_loss_sum,
    masked_mean_loss,
    pad_batch,
)
from tweetgen.trainer import Trainer, TrainJob, build_data, finetune_steps, validation_subset
from tweetgen.vocab import EOS, NO_LOSS, PAD, Vocab

CONFIG = {"input_mode": "embedding", "embedding_dim": 8, "gru_sizes": [16, 24], "dropout": 0.2}


def weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]


# ---------------------------------------------------------------- it learns


def test_tiny_corpus_is_learned(trained) -> None:
    losses = trained.losses
    assert trained.result.status == "completed" and trained.result.steps == 300
    assert losses[0] > 0.5  # it started from ignorance...
    assert losses[-1] < 0.3  # ...and learned the patterns (about 0.06 nats/char is the floor)
    assert trained.result.train_loss == pytest.approx(losses[-1])
    generator = Generator(trained.trainer.model, trained.vocab)
    for pattern in PATTERNS:
        [sample] = generator.generate([pattern[:3]], top_k=1, random_seed=0)
        assert sample.text == pattern
        assert sample.ended == "eos"


def test_bits_per_char_of_the_learned_corpus_is_low(trained) -> None:
    sequences, unknown = encode_lines(list(PATTERNS), trained.vocab, 280)
    assert unknown == 0
    bpc = bits_per_char(trained.trainer.model, sequences)
    fresh = build_model(trained.vocab.size, trained.settings.model_config())
    assert bpc < 0.6
    assert bits_per_char(fresh, sequences) > 3.0  # about log2(vocab size) before training


# ---------------------------------------------------------------- sequences and the masked loss


def test_encode_lines_frames_each_line_with_eos() -> None:
    vocab = Vocab.build(["abc"])
    (seq,), unknown = encode_lines(["abx"], vocab, 280)
    a, b = vocab.encode("ab")[0]
    assert seq.tolist() == [EOS, a, b, 2, EOS] and unknown == 1
    (cut,), _ = encode_lines(["abcabc"], vocab, 4)
    assert len(cut) == 1 + 4 and cut[-1] != EOS  # truncated: no end-of-text to learn


def test_pad_batch() -> None:
    batch = pad_batch([np.array([1, 5, 1]), np.array([1, 1])], length=5)
    assert batch.tolist() == [[1, 5, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert pad_batch([np.array([1, 5, 1]), np.array([1, 1])]).shape == (2, 3)


def test_batches_come_in_few_shapes_and_padding_rows_changes_no_loss() -> None:
    """TensorFlow's oneDNN kernels keep memory for every batch shape they meet (bench/soak.py):
    training batches have the batch size's rows and lengths in multiples of LENGTH_MULTIPLE."""
    from tweetgen.train import LENGTH_MULTIPLE, bucketed_batch

    rng = np.random.default_rng(0)
    sequences = [np.ones(int(n), np.int32) for n in rng.integers(2, 142, size=333)]
    batcher = Batcher(sequences, 64, seed=3)
    shapes = {batcher.next().shape for _ in range(60)}  # more than 5 epochs of 6 batches
    assert {rows for rows, _ in shapes} == {64}  # the partial batch of each epoch too
    assert all(length % LENGTH_MULTIPLE == 0 for _, length in shapes)
    assert len(shapes) <= 144 // LENGTH_MULTIPLE

    lines = ["a short one", "a rather longer line of text here", "x"]
    vocab = Vocab.build(lines)
    model = build_model(vocab.size, CONFIG)
    seqs, _ = encode_lines(lines, vocab, 280)
    padded = bucketed_batch(seqs, 8)
    assert padded.shape == (8, 40)
    assert float(masked_mean_loss(model, tf.constant(padded))) == pytest.approx(
        float(masked_mean_loss(model, tf.constant(pad_batch(seqs)))), rel=1e-6)
    # Evaluation pads further (rows to a power of two, lengths to a multiple of 32): the same bits.
    total = count = 0.0
    for seq in seqs:
        loss_sum, n = masked_loss_sum(tf.constant(seq[None, 1:]), model(tf.constant(seq[None, :-1])))
        total, count = total + float(loss_sum), count + float(n)
    assert bits_per_char(model, seqs) == pytest.approx(total / count / math.log(2), rel=1e-5)


def test_loss_does_not_change_when_the_batch_is_padded_longer() -> None:
    lines = ["a short one", "a rather longer line of text here", "x", "mid length"]
    vocab = Vocab.build(lines)
    model = build_model(vocab.size, CONFIG)
    sequences, _ = encode_lines(lines, vocab, 280)
    tight = pad_batch(sequences)
    loose = pad_batch(sequences, tight.shape[1] + 23)
    assert loose.shape[1] > tight.shape[1]
    loss_tight = float(masked_mean_loss(model, tf.constant(tight)))
    loss_loose = float(masked_mean_loss(model, tf.constant(loose)))
    assert loss_loose == pytest.approx(loss_tight, rel=1e-6)

    # And it equals the loss of each line alone, without any padding at all.
    total = count = 0.0
    for seq in sequences:
        s, n = masked_loss_sum(tf.constant(seq[None, 1:]), model(tf.constant(seq[None, :-1])))
        total, count = total + float(s), count + float(n)
    assert count == sum(len(s) - 1 for s in sequences)
    assert loss_tight == pytest.approx(total / count, rel=1e-5)


def test_bits_per_char_does_not_depend_on_batching() -> None:
    lines = varied_lines(30)
    vocab = Vocab.build(lines)
    model = build_model(vocab.size, CONFIG)
    sequences, _ = encode_lines(lines, vocab, 280)
    assert bits_per_char(model, sequences, batch_size=4) == pytest.approx(
        bits_per_char(model, sequences, batch_size=128), rel=1e-5)
    assert math.isnan(bits_per_char(model, []))


def test_padding_targets_are_masked() -> None:
    targets = tf.constant([[3, 4, PAD, PAD]])
    logits = tf.random.stateless_normal((1, 4, 6), seed=[1, 2])
    total, count = masked_loss_sum(targets, logits)
    expected, _ = masked_loss_sum(targets[:, :2], logits[:, :2])
    assert float(count) == 2.0
    assert float(total) == pytest.approx(float(expected), rel=1e-6)


# ---------------------------------------------------------------- the single-step form


@pytest.mark.parametrize("input_mode", ["embedding", "onehot"])
def test_single_step_equals_the_full_model(input_mode: str) -> None:
    vocab = Vocab.build(["the quick brown fox"])
    model = build_model(vocab.size, dict(CONFIG, input_mode=input_mode))
    ids = np.stack([vocab.encode("the quick brown")[0], vocab.encode("fox the quick b")[0]])
    full = model(tf.constant(ids)).numpy()
    states = model.initial_state(2)
    stepped = []
    for t in range(ids.shape[1]):
        logits, states = model.step(tf.constant(ids[:, t]), states)
        stepped.append(logits.numpy())
    np.testing.assert_allclose(np.stack(stepped, axis=1), full, atol=1e-5)


# ---------------------------------------------------------------- batching


def test_epoch_batches_cover_every_line_once_and_are_reproducible() -> None:
    lengths = np.array([3, 10, 4, 7, 7, 2, 9, 5, 6, 8, 3])
    batches = epoch_batches(lengths, 4, seed=5, epoch=0)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(len(b) <= 4 for b in batches)
    again = epoch_batches(lengths, 4, seed=5, epoch=0)
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]
    other = epoch_batches(lengths, 4, seed=5, epoch=1)
    assert [b.tolist() for b in other] != [b.tolist() for b in batches]


def test_batches_group_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 140, size=2000)
    batches = epoch_batches(lengths, 32, seed=1, epoch=0)
    padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)
    assert padding / lengths.sum() < 0.05  # random batches would pad about 90%


def test_batcher_resumes_from_a_position() -> None:
    sequences = [np.arange(1, 2 + i % 7, dtype=np.int32) for i in range(23)]
    whole = Batcher(sequences, 5, seed=3)
    stream = [whole.next() for _ in range(13)]  # crosses two epoch boundaries (5 batches each)
    assert whole.position == Position(2, 3)
    first = Batcher(sequences, 5, seed=3)
    head = [first.next() for _ in range(7)]
    resumed = Batcher(sequences, 5, seed=3, position=first.position)
    tail = [resumed.next() for _ in range(6)]
    for a, b in zip(stream, head + tail, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        Batcher([], 5, seed=3)


def test_learning_rate_warms_up_then_anneals_to_its_floor_at_the_end_of_the_plan() -> None:
    peak, floor = 1e-2, 1e-3
    assert learning_rate_at(0.0, 0, peak, floor, warmup_steps=4) == pytest.approx(peak / 4)
    assert learning_rate_at(0.0, 3, peak, floor, warmup_steps=4) == pytest.approx(peak)
    assert learning_rate_at(0.5, 50, peak, floor, 4) == pytest.approx((peak + floor) / 2)
    assert learning_rate_at(1.0, 99, peak, floor, 4) == pytest.approx(floor)
    assert learning_rate_at(0.5, 50, peak, floor, 4, "exponential") == pytest.approx((peak * floor) ** 0.5)
    assert learning_rate_at(1.0, 99, peak, floor, 4, "exponential") == pytest.approx(floor)
    rates = [learning_rate_at(p / 10, 10 + p, peak, floor, 4) for p in range(11)]
    assert rates == sorted(rates, reverse=True)
    # A short plan ends its warm-up at a tenth of its progress, whatever warmup_steps says.
    unwarmed = learning_rate_at(0.05, 0, peak, floor)
    assert learning_rate_at(0.05, 0, peak, floor, 1000) == pytest.approx(unwarmed / 2)
    assert learning_rate_at(0.1, 1, peak, floor, 1000) == pytest.approx(learning_rate_at(0.1, 1, peak, floor))
    assert learning_rate_at(0.0, 10, 5e-4, floor) == pytest.approx(5e-4)  # a peak below the floor
    assert learning_rate_at(1.0, 10, 5e-4, floor) == pytest.approx(5e-4)


def test_a_plan_measures_progress_in_steps_or_time() -> None:
    job = TrainJob("train", 1, 0, 10, 0)
    job.new_plan(100, steps=50)
    assert job.planned_steps() == 50 and job.progress(100) == pytest.approx(1 / 50)
    assert job.progress(149) == 1.0 and not job.time_is_up()
    job.new_plan(100, seconds=60.0)
    assert job.planned_steps() is None and job.progress(5000) == 0.0
    job.elapsed_seconds = 15.0
    assert job.progress(5000) == pytest.approx(0.25) and not job.time_is_up()
    job.new_plan(100, steps=50, seconds=60.0)
    job.elapsed_seconds = 30.0
    assert job.progress(100) == pytest.approx(0.5)  # whichever end comes first
    job.elapsed_seconds = 60.0
    assert job.time_is_up() and job.progress(100) == 1.0
    assert TrainJob.from_dict(job.as_dict()) == job


def test_validation_subset_is_stable_and_bounded() -> None:
    lines = varied_lines(50)
    subset = validation_subset(lines, 10)
    assert len(subset) == 10
    assert subset == validation_subset(list(reversed(lines)), 10)
    assert validation_subset(lines, 100) == lines


def test_finetune_steps_follow_new_lines(make_settings, tmp_path) -> None:
    s = make_settings(tmp_path, finetune_epochs=2.0, finetune_min_steps=10, finetune_max_steps=100)
    assert finetune_steps(s, 0) == 10
    assert finetune_steps(s, 16 * 20) == 40
    assert finetune_steps(s, 10**6) == 100


# ---------------------------------------------------------------- the run loop


def _setup(make_settings, home, **overrides):
    settings = make_settings(home, **overrides)
    write_corpus(settings.corpus_file, varied_lines(60))
    lines = corpus.read_lines(settings.corpus_file).lines
    vocab = Vocab.build(lines)
    end = corpus.complete_end(settings.corpus_file)
    return settings, vocab, end


@pytest.mark.parametrize("context_mode", ["none", "previous-line"])
def test_resume_is_exact(make_settings, tmp_path, context_mode) -> None:
    # Dropout on and a schedule that warms up and anneals over the plan, so both must be resumed
    # exactly too; 60 lines in batches of 8 make 8 batches an epoch, so the runs cross an epoch.
    # With context on, the share of replies trained after their message is drawn again on resume.
    settings, vocab, end = _setup(make_settings, tmp_path / "a", dropout=0.2, batch_size=8,
                                  lr_warmup_steps=3, context_mode=context_mode)
    if context_mode != "none":
        vocab = Vocab.build(corpus.read_lines(settings.corpus_file).lines, reserve_sep=True)
    n = 6

    def job() -> TrainJob:
        planned = TrainJob("train", 77, 0, end, 0)
        planned.new_plan(0, steps=2 * n)
        return planned

    data = build_data(settings, vocab, job())
    assert len(data.train) > 8 * 8 // 2 and data.validation
    with_context = sum(int((seq >= NO_LOSS).any()) for seq in data.train)
    assert (with_context > len(data.train) // 4) == (context_mode != "none")

    straight = Trainer.fresh(settings, vocab)
    rates: list[float] = []
    straight.run(job(), data, CheckpointManager(tmp_path / "straight"),
                 on_log=lambda entry: rates.append(entry.learning_rate))
    assert rates[-1] == pytest.approx(settings.min_learning_rate)  # the floor, at the plan's end

    first = Trainer.fresh(settings, vocab)
    manager = CheckpointManager(tmp_path / "split")
    calls: list[int] = []
    stopped = first.run(job(), data, manager, should_stop=lambda: calls.append(1) or len(calls) > n)
    assert stopped.status == "interrupted"
    halfway = weights(first.model)
    ckpt = manager.load_latest()
    assert ckpt.step == n
    resumed = Trainer.from_checkpoint(settings, ckpt)
    resumed_job = TrainJob.from_dict(ckpt.meta["job"])
    assert resumed_job.position != Position() and resumed_job.target_step == 2 * n
    result = resumed.run(resumed_job, build_data(settings, resumed.vocab, resumed_job), manager)
    assert result.steps == n and resumed.step == 2 * n

    for a, b in zip(weights(straight.model), weights(resumed.model), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, mid) for a, mid in zip(weights(straight.model), halfway, strict=True))
    for a, b in zip(straight.optimizer.variables, resumed.optimizer.variables, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)

    # The comparison can fail: resuming at the wrong data position gives other weights,
    # and so does resuming with a new plan (the schedule starts again from its warm-up).
    wrong = Trainer.from_checkpoint(settings, ckpt)
    wrong_job = TrainJob.from_dict(ckpt.meta["job"])
    wrong_job.position = Position()
    wrong.run(wrong_job, data, CheckpointManager(tmp_path / "wrong"))
    replanned = Trainer.from_checkpoint(settings, ckpt)
    replanned_job = TrainJob.from_dict(ckpt.meta["job"])
    replanned_job.new_plan(n, steps=n)
    replanned.run(replanned_job, data, CheckpointManager(tmp_path / "replanned"))
    for other in (wrong, replanned):
        assert any(not np.allclose(a, b, atol=1e-6)
                   for a, b in zip(weights(straight.model), weights(other.model), strict=True))


def test_engine_train_resumes_a_stopped_plan_exactly(make_settings, tmp_path) -> None:
    """`tweetgen train --steps 2N` stopped after N, then `tweetgen train`, gives the weights of
    `--steps 2N` once; a new budget after a finished plan is a new plan."""
    one, _, _ = _setup(make_settings, tmp_path / "one", dropout=0.2, batch_size=8, lr_warmup_steps=2)
    two, _, _ = _setup(make_settings, tmp_path / "two", dropout=0.2, batch_size=8, lr_warmup_steps=2)
    straight = engine.train(one, steps=8)
    calls: list[int] = []
    stopped = engine.train(two, steps=8, should_stop=lambda: calls.append(1) or len(calls) > 4)
    assert stopped.result.status == "interrupted" and stopped.trainer.step == 4
    again = engine.train(two)
    assert again.trainer.step == 8 and straight.trainer.step == 8
    assert again.result.steps == 4
    for a, b in zip(weights(straight.trainer.model), weights(again.trainer.model), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert again.result.val_bpc == pytest.approx(straight.result.val_bpc, rel=1e-5)

    rates: list[float] = []
    more = engine.train(two, steps=20, on_log=lambda entry: rates.append(entry.learning_rate))
    assert more.result.steps == 20
    meta = CheckpointManager(two.checkpoints).load_latest().meta["job"]
    assert (meta["start_step"], meta["target_step"], meta["done"]) == (8, 28, True)
    assert rates[-1] == pytest.approx(two.min_learning_rate)


def test_a_finetune_plans_its_own_schedule_from_the_step_it_starts_at(make_settings, tmp_path) -> None:
    settings, vocab, end = _setup(make_settings, tmp_path, log_every=1, lr_warmup_steps=100)
    trainer = Trainer.fresh(settings, vocab)
    trainer.step = 40  # as if trained before; the fine-tune's plan starts here
    job = TrainJob("finetune", 1, 0, end, 60, learning_rate=5e-3)
    rates: list[float] = []
    trainer.run(job, build_data(settings, vocab, job), CheckpointManager(settings.checkpoints),
                on_log=lambda entry: rates.append(entry.learning_rate))
    assert job.start_step == 40 and len(rates) == 20
    assert rates[0] == pytest.approx(5e-3 / 2, rel=2e-2)  # warm-up: at most a tenth of the plan
    assert max(rates) == pytest.approx(5e-3, rel=5e-2)
    assert rates == sorted(rates[:2]) + sorted(rates[2:], reverse=True)  # up, then down
    assert rates[-1] == pytest.approx(settings.min_learning_rate, rel=1e-3)


def test_a_timed_plan_carries_its_elapsed_time_into_the_resumed_run(make_settings, tmp_path) -> None:
    settings, vocab, end = _setup(make_settings, tmp_path)
    job = TrainJob("train", 1, 0, end, 0)
    job.new_plan(0, seconds=3600.0)
    data = build_data(settings, vocab, job)
    manager = CheckpointManager(settings.checkpoints)
    calls: list[int] = []
    Trainer.fresh(settings, vocab).run(job, data, manager,
                                       should_stop=lambda: calls.append(1) or len(calls) > 2)
    saved = TrainJob.from_dict(manager.load_latest().meta["job"])
    assert 0 < saved.elapsed_seconds < 3600 and not saved.done and saved.planned_steps() is None
    saved.elapsed_seconds = 3599.0  # as if it had trained all but its last second
    resumed = Trainer.from_checkpoint(settings, manager.load_latest())
    assert resumed.learning_rate(saved) == pytest.approx(settings.min_learning_rate, rel=1e-3)
    saved.elapsed_seconds = 3600.0
    result = resumed.run(saved, data, manager)
    assert result.status == "stopped" and result.steps == 0 and saved.done


@pytest.mark.parametrize("spoiled", [False, True])
def test_a_plan_ends_on_its_best_checkpoints_weights(make_settings, tmp_path, spoiled) -> None:
    """A training plan whose last weights score worse than one of its checkpoints ends on that
    checkpoint's weights and optimizer state (its step count stays); one that ends on its best
    weights keeps them."""
    settings, vocab, end = _setup(make_settings, tmp_path, checkpoint_every=100, learning_rate=1e-3)
    job = TrainJob("train", 1, 0, end, 0)
    job.new_plan(0, steps=8)
    data = build_data(settings, vocab, job)
    manager = CheckpointManager(settings.checkpoints)
    trainer = Trainer.fresh(settings, vocab)
    calls: list[int] = []
    trainer.run(job, data, manager, should_stop=lambda: calls.append(1) or len(calls) > 4)
    best = manager.load_latest()
    assert job.best_step == best.step == 4 and job.best_bpc == best.meta["val_bpc"]
    if spoiled:  # weights far from anything the rest of the plan can repair: its end scores worse
        for variable in trainer.model.weights:
            variable.assign(variable + tf.random.stateless_normal(variable.shape, [1, 2]))
    result = trainer.run(job, data, manager)
    last = manager.load_latest()
    assert result.status == "completed" and trainer.step == last.step == 8 and job.done
    same_as_best = [np.array_equal(a, b) for a, b in zip(last.weights, best.weights, strict=True)]
    if spoiled:
        assert all(same_as_best)
        assert all(np.array_equal(a, b) for a, b in zip(last.optimizer, best.optimizer, strict=True))
        assert result.val_bpc == best.meta["val_bpc"]
        assert trainer.validation_bpc(data) == pytest.approx(best.meta["val_bpc"], abs=1e-6)
        assert job.best_step == 4
    else:
        assert not any(same_as_best) and result.val_bpc < best.meta["val_bpc"]
        assert job.best_step == 8


def test_checkpoints_during_a_run_and_rotation(make_settings, tmp_path) -> None:
    settings, vocab, end = _setup(make_settings, tmp_path, checkpoint_every=2, keep_checkpoints=2)
    job = TrainJob("train", 1, 0, end, 7)
    manager = CheckpointManager(settings.checkpoints, keep=2)
    saved = []
    result = Trainer.fresh(settings, vocab).run(job, build_data(settings, vocab, job), manager,
                                                on_checkpoint=lambda path, meta: saved.append(meta["step"]))
    assert saved == [2, 4, 6, 7]
    assert result.checkpoint == settings.checkpoints / "ckpt-00000007.npz"
    steps = [int(p.stem.split("-")[1]) for p in manager.paths()]
    assert steps[-2:] == [6, 7] and len(steps) <= 3  # the last two, plus the best if older
    meta = manager.load_latest().meta
    assert meta["job"]["done"] is True and meta["vocab_hash"] == vocab.hash
    assert np.isfinite(meta["val_bpc"]) and meta["train_loss"] == pytest.approx(result.train_loss)


def test_stop_request_and_deadline(make_settings, tmp_path) -> None:
    import time

    settings, vocab, end = _setup(make_settings, tmp_path)
    trainer = Trainer.fresh(settings, vocab)
    job = TrainJob("train", 1, 0, end, 100)
    data = build_data(settings, vocab, job)
    calls = []
    result = trainer.run(job, data, CheckpointManager(settings.checkpoints),
                         should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert result.status == "interrupted" and result.steps == 3
    assert not job.done and result.checkpoint is not None
    result = trainer.run(job, data, CheckpointManager(settings.checkpoints), deadline=time.monotonic() - 1)
    assert result.status == "stopped" and result.steps == 0


def test_non_finite_steps_are_skipped_then_stop_the_run(make_settings, tmp_path) -> None:
    settings, vocab, end = _setup(make_settings, tmp_path, max_bad_steps=3)
    trainer = Trainer.fresh(settings, vocab)
    before = weights(trainer.model)
    trainer.loss_scale = float("nan")
    job = TrainJob("train", 1, 0, end, 5)
    with pytest.raises(NonFiniteLossError, match="3 steps"):
        trainer.run(job, build_data(settings, vocab, job), CheckpointManager(settings.checkpoints))
    assert trainer.step == 0
    for a, b in zip(before, weights(trainer.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert CheckpointManager(settings.checkpoints).paths() == []
