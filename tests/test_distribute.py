"""tf.distribute: 2 mirrored replicas give the single-device step, checkpoints move between replica
counts, 2 real worker processes train together, the daemon runs under `mirrored`, mixed precision
keeps a float32 loss.

The mirrored checks run in tests/distribute_check.py, in a Python of its own: splitting the CPU
into logical devices is only possible before TensorFlow starts, so it must not happen here. The
multi-worker test starts 2 `tweetgen train` processes on 127.0.0.1 (free ports), bounded in time
and killed at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import varied_lines, write_corpus

from tweetgen import corpus, distribute, engine
from tweetgen.checkpoints import CheckpointManager
from tweetgen.config import ConfigError, Settings
from tweetgen.errors import NonFiniteLossError
from tweetgen.trainer import Trainer, TrainJob, build_data
from tweetgen.vocab import PAD, Vocab

REPO = Path(__file__).resolve().parents[1]


def weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWEETGEN_", "TF_CONFIG"))}
    return dict(env, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **extra)


# ---------------------------------------------------------------- mirrored on 2 logical CPUs


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("mirrored")
    done = subprocess.run([sys.executable, str(REPO / "tests" / "distribute_check.py"), str(home)],
                          capture_output=True, text=True, timeout=240, env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["clipped", "unclipped"])
def test_one_mirrored_step_equals_the_single_device_step(mirrored, case: str) -> None:
    assert mirrored["replicas"] == 2 and all("CPU" in d for d in mirrored["devices"])
    step = mirrored[case]
    assert step["rows"] % 2 == 1  # one replica gets a padding row
    assert step["start_weights"] == 0.0 and step["applied"] == [True, True]
    assert step["loss"][1] == pytest.approx(step["loss"][0], rel=1e-6)
    assert step["norm"][1] == pytest.approx(step["norm"][0], rel=1e-6)
    if case == "clipped":
        assert step["norm"][0] > 0.05  # clip_norm: the clipping did act
    assert step["moved"] > 5e-3  # the step moved the weights by about the learning rate...
    assert step["weights"] < 1e-6  # ...and both moved them the same way
    # Adam's moments hold the applied gradient; each replica's own mean loss would be far off.
    assert step["optimizer"] < 1e-7
    assert step["wrong_scaling_moment"] > 100 * max(step["optimizer"], 1e-8)
    (total1, count1), (total2, count2) = step["eval"]
    assert count1 == count2 and total2 == pytest.approx(total1, rel=1e-6)


@pytest.mark.parametrize("direction", ["2to1", "1to2"])
def test_a_checkpoint_resumes_on_another_replica_count(mirrored, direction: str) -> None:
    run = mirrored["checkpoints"][direction]
    assert run["replicas"] == ([2, 1] if direction == "2to1" else [1, 2])
    assert run["checkpoint_step"] == 3 and run["steps"] == 3 and run["step"] == 6
    assert run["iterations"] == 6
    # The same weights and Adam state as 6 straight steps on one device.
    assert run["weights"] < 1e-5 and run["optimizer"] < 1e-6
    assert run["val_bpc"][0] == pytest.approx(run["val_bpc"][1], rel=1e-6)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_step_on_2_replicas(mirrored, precision: str) -> None:
    step = mirrored[precision]
    assert step["dtype"] == precision.removeprefix("mixed_")
    (loss1, norm1, applied1), (loss2, norm2, applied2) = step["results"]
    assert applied1 == applied2 == 1.0
    assert loss2 == pytest.approx(loss1, rel=1e-2) and norm2 == pytest.approx(norm1, rel=5e-2)
    assert step["gradient_gap"] < 0.01  # the applied gradients agree to 16-bit precision


# ---------------------------------------------------------------- 2 worker processes


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


TOML = """
gru_sizes = [32, 32]
embedding_dim = 16
batch_size = 8
dropout = 0.0
vocab_min_count = 1
learning_rate = 0.01
log_every = 2
cpu_matmul_precision = "float32"  # bfloat16 rounds differently on differently shaped shards
"""


def test_two_workers_train_and_the_chief_writes_the_checkpoint(tmp_path) -> None:
    home = tmp_path / "home"
    write_corpus(home / "data" / "corpus.txt", varied_lines(60))
    (home / "tweetgen.toml").write_text(TOML)
    workers = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    command = [sys.executable, "-m", "tweetgen.cli", "--home", str(home), "train", "--steps", "4", "--json"]
    # Worker 1 gets a checkpoint folder of its own, to show that it writes nothing there.
    envs = [child_env(TWEETGEN_STRATEGY="multi-worker", TWEETGEN_WORKERS=workers,
                      TWEETGEN_WORKER_INDEX=str(i), **({"TWEETGEN_CHECKPOINT_DIR": "worker1"} if i else {}))
            for i in range(2)]
    procs = [subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for env in envs]
    deadline = time.monotonic() + 150
    try:
        outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "num_workers = 2" in err
    chief, other = (json.loads(out) for out, _ in outputs)
    assert chief["status"] == other["status"] == "completed" and chief["step"] == other["step"] == 4
    assert chief["train_loss"] == other["train_loss"] and chief["val_bpc"] == other["val_bpc"]
    assert chief["run"] is not None and other["run"] is None  # only the chief records the run
    assert [p.name for p in CheckpointManager(home / "checkpoints").paths()] == ["ckpt-00000004.npz"]
    assert list((home / "worker1").glob("*.npz")) == []

    # The checkpoint loads on one device, equals one device's own 4 steps, and trains on.
    single = tmp_path / "single"
    write_corpus(single / "data" / "corpus.txt", varied_lines(60))
    (single / "tweetgen.toml").write_text(TOML)
    from tweetgen.config import load_settings

    alone = engine.train(load_settings(single / "tweetgen.toml", {"home": single}), steps=4)
    settings = load_settings(home / "tweetgen.toml", {"home": home})
    ckpt = CheckpointManager(settings.checkpoints).load_latest()
    trainer = Trainer.from_checkpoint(settings, ckpt)
    assert distribute.is_default(trainer.strategy)
    for a, b in zip(weights(alone.trainer.model), weights(trainer.model), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)
    resumed = engine.train(settings, steps=2)
    assert resumed.trainer.step == 6 and resumed.result.status == "completed"


def test_the_daemon_trains_finetunes_and_tweets_under_mirrored(tmp_path) -> None:
    """The daemon schedules as before on 2 logical CPUs; its fine-tune grows the vocabulary."""
    from daemon_helpers import make_home, query, start_daemon, stop, tweetgen, wait_for

    home = make_home(tmp_path, strategy="mirrored", cpu_replicas=2)
    daemon = start_daemon(home)
    try:
        wait_for(lambda: (home / "db" / "tweetgen.db").exists()
                 and query(home, "select count(*) n from samples")[0]["n"] > 0,
                 what="first tweets", proc=daemon)
        tweetgen(home, "append", "the cat sat on the mat", "ñaña ñu", "a dog ran fast")
        wait_for(lambda: query(home, "select * from runs where kind='finetune' and status='completed'"),
                 what="fine-tune run", proc=daemon)
        assert query(home, "select new_chars from ingests order by id desc limit 1")[0]["new_chars"] == "ñ"
    finally:
        assert stop(daemon) == 0
    assert "strategy mirrored: 2 replicas" in (home / "daemon.log").read_text()
    assert [r["status"] for r in query(home, "select status from runs")] == ["completed", "completed"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_by_default_a_cpu_trains_one_replica_per_core_and_the_checkpoint_is_plain(tmp_path) -> None:
    """`tweetgen train` with the default strategy and a batch of 64 on a process with two cores:
    two replicas on logical CPUs, one intra-op thread each; its checkpoint loads on one device."""
    from daemon_helpers import make_home

    home = make_home(tmp_path, batch_size=64)
    cores = "0,1"  # this process may have more: the count is the process's own cores
    done = subprocess.run(["taskset", "-c", cores, sys.executable, "-m", "tweetgen.cli", "--home", str(home),
                           "train", "--steps", "4"], capture_output=True, text=True, timeout=180,
                          env=child_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "strategy auto: 2 replicas on /job:localhost/replica:0/task:0/device:CPU:0" in done.stderr
    assert "TensorFlow threads: 1 intra-op, 2 inter-op" in done.stderr
    one_core = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "tweetgen.cli", "--home",
                               str(home), "train", "--json", "--steps", "2"], capture_output=True, text=True,
                              timeout=180, env=child_env(), cwd=REPO)
    assert one_core.returncode == 0, one_core.stderr[-3000:]
    assert "replicas" not in one_core.stderr
    assert "TensorFlow threads: 1 intra-op, 1 inter-op" in one_core.stderr
    assert json.loads(one_core.stdout)["step"] == 6  # resumed from the two replicas' checkpoint


# ---------------------------------------------------------------- in this process: one device


def test_replica_shards_cover_the_batch_with_padding_rows() -> None:
    batch = tf.reshape(tf.range(1, 1 + 5 * 3), (5, 3))
    shards = [distribute.replica_shard(batch, r, 3).numpy() for r in range(3)]
    assert [s.shape for s in shards] == [(2, 3)] * 3
    np.testing.assert_array_equal(np.concatenate(shards)[:5], batch.numpy())
    assert (shards[2][1] == PAD).all()


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_good_steps() -> None:
    scale = distribute.DynamicLossScale(tf.distribute.get_strategy())
    scale.GROWTH_STEPS = 3
    assert float(scale.value) == 2.0**15
    scale.update(tf.constant(False))
    assert float(scale.value) == 2.0**14
    for _ in range(2):
        scale.update(tf.constant(True))
    assert float(scale.value) == 2.0**14
    scale.update(tf.constant(True))
    assert float(scale.value) == 2.0**15 and int(scale.good_steps) == 0


def _tiny(make_settings, home: Path, **overrides):
    settings = make_settings(home, batch_size=8, **overrides)
    write_corpus(settings.corpus_file, varied_lines(60))
    vocab = Vocab.build(corpus.read_lines(settings.corpus_file).lines)
    job = TrainJob("train", 3, 0, corpus.complete_end(settings.corpus_file), 5)
    return settings, vocab, job, build_data(settings, vocab, job)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_a_float32_loss_and_float32_checkpoints(make_settings, tmp_path,
                                                                           precision: str) -> None:
    settings, vocab, job, data = _tiny(make_settings, tmp_path, precision=precision)
    trainer = Trainer.fresh(settings, vocab)
    half = precision.removeprefix("mixed_")
    assert [g.compute_dtype for g in trainer.model.grus] == [half, half]
    assert trainer.model.head.compute_dtype == "float32" and not trainer.model.fast_gru
    before = weights(trainer.model)
    loss, _, applied = trainer.train_step(tf.constant(data.train[0][None, :]), tf.constant([1, 2], tf.int64),
                                          tf.constant(1.0))
    assert loss.dtype == tf.float32 and bool(applied)
    result = trainer.run(job, data, CheckpointManager(settings.checkpoints))
    assert result.status == "completed" and trainer.bad_steps == 0 and np.isfinite(result.train_loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, weights(trainer.model), strict=True))
    ckpt = CheckpointManager(settings.checkpoints).load_latest()
    assert all(w.dtype == np.float32 for w in ckpt.weights)
    # It resumes in float32, and generation (a model of its own) stays float32 all along.
    plain = Trainer.from_checkpoint(make_settings(tmp_path, batch_size=8), ckpt)
    assert plain.model.grus[0].compute_dtype == "float32"
    _, model, _ = engine.load_usable_checkpoint(CheckpointManager(settings.checkpoints))
    assert model.grus[0].compute_dtype == "float32"


def test_float16_overflow_skips_the_update_but_is_no_bad_step(make_settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(distribute.DynamicLossScale, "INITIAL", 2.0**60)  # every gradient overflows
    settings, vocab, job, data = _tiny(make_settings, tmp_path, precision="mixed_float16", max_bad_steps=2)
    trainer = Trainer.fresh(settings, vocab)
    before = weights(trainer.model)
    job.target_step = 3
    result = trainer.run(job, data, CheckpointManager(settings.checkpoints))
    assert result.steps == 3 and trainer.bad_steps == 0
    for a, b in zip(before, weights(trainer.model), strict=True):
        np.testing.assert_array_equal(a, b)
    # A non-finite loss still is a bad step.
    trainer.loss_scale = float("nan")
    job.target_step = 10
    with pytest.raises(NonFiniteLossError):
        trainer.run(job, data, CheckpointManager(settings.checkpoints))


# ---------------------------------------------------------------- settings


def test_strategy_settings_are_checked(tmp_path, monkeypatch) -> None:
    from tweetgen.config import apply

    base = Settings(home=tmp_path)
    for values, words in (({"strategy": "tpu"}, "strategy must be one of"),
                          ({"precision": "float16"}, "precision must be one of"),
                          ({"workers": ["localhost"]}, "HOST:PORT"),
                          ({"workers": ["a:1", "b:2"], "worker_index": 2}, "worker_index")):
        with pytest.raises(ConfigError, match=words):
            apply(base, values, "test")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribute.strategy_for(Settings(home=tmp_path, strategy="multi-worker"))
    tf.config.list_logical_devices()  # TensorFlow has started: the CPU can no longer be split
    with pytest.raises(ConfigError, match="before TensorFlow starts"):
        distribute.strategy_for(Settings(home=tmp_path, strategy="mirrored", cpu_replicas=3))


def test_the_daemon_refuses_multi_worker(tmp_path) -> None:
    from tweetgen.daemon import run_daemon

    with pytest.raises(ConfigError, match="tweetgen train"):
        run_daemon(Settings(home=tmp_path, strategy="multi-worker", workers=("127.0.0.1:1", "127.0.0.1:2")))
