"""Checkpoints on disk: round trip, rotation, atomic writes, corrupt and incompatible files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import varied_lines, write_corpus

from tweetgen.checkpoints import (
    CheckpointError,
    CheckpointManager,
    checkpoint_name,
    encode_checkpoint,
    load_checkpoint,
    read_meta,
)


def save(manager: CheckpointManager, step: int, val_bpc: float | None = 2.0, **meta) -> Path:
    weights = [np.full((2, 3), step, np.float32), np.arange(4, dtype=np.float32)]
    optimizer = [np.array(step, np.int64), np.ones(3, np.float32) * step]
    return manager.save({"step": step, "val_bpc": val_bpc, **meta}, weights, optimizer)


def steps_of(manager: CheckpointManager) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in manager.paths()]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def overwrite_with_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a checkpoint at all" * 10)


def flip_bytes_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def test_round_trip(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    path = save(manager, 42, note="hé")
    assert path.name == checkpoint_name(42) == "ckpt-00000042.npz"
    ckpt = load_checkpoint(path)
    assert ckpt.step == 42 and ckpt.name == path.name
    assert ckpt.meta["note"] == "hé" and ckpt.meta["format"] == 1
    np.testing.assert_array_equal(ckpt.weights[0], np.full((2, 3), 42, np.float32))
    np.testing.assert_array_equal(ckpt.weights[1], np.arange(4, dtype=np.float32))
    assert ckpt.optimizer[0] == 42 and ckpt.optimizer[1].dtype == np.float32
    assert read_meta(path)["step"] == 42


def test_rotation_keeps_the_last_n_the_best_and_the_promoted(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    save(manager, 1, val_bpc=3.0)
    manager.promote(tmp_path / checkpoint_name(1))
    save(manager, 2, val_bpc=1.0)  # the best
    for step in (3, 4, 5):
        save(manager, step, val_bpc=2.0 + step)
    assert steps_of(manager) == [1, 2, 4, 5]
    assert manager.best() == tmp_path / checkpoint_name(2)
    assert manager.promoted_path() == tmp_path / checkpoint_name(1)
    save(manager, 6, val_bpc=float("nan"))  # a NaN score is never the best
    assert manager.best() == tmp_path / checkpoint_name(2)
    assert steps_of(manager) == [1, 2, 5, 6]


def test_paths_are_ordered_by_step_not_by_name(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=10)
    for step in (5, 100_000_000, 12):
        save(manager, step)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert steps_of(manager) == [5, 12, 100_000_000]


@pytest.mark.parametrize("damage", [truncate, overwrite_with_garbage, flip_bytes_in_the_middle])
def test_corrupt_newest_falls_back_to_the_previous(tmp_path: Path, damage, caplog) -> None:
    manager = CheckpointManager(tmp_path, keep=5)
    for step in (10, 20, 30):
        save(manager, step)
    newest = tmp_path / checkpoint_name(30)
    damage(newest)
    with pytest.raises(CheckpointError, match=newest.name):
        load_checkpoint(newest)
    with caplog.at_level(logging.ERROR, logger="tweetgen.checkpoints"):
        ckpt = manager.load_latest()
    assert ckpt.step == 20
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and newest.name in errors[0].getMessage()


def test_all_corrupt_gives_none(tmp_path: Path, caplog) -> None:
    manager = CheckpointManager(tmp_path)
    for step in (1, 2):
        overwrite_with_garbage(save(manager, step))
    with caplog.at_level(logging.ERROR):
        assert manager.load_latest() is None
    assert checkpoint_name(1) in caplog.text and checkpoint_name(2) in caplog.text
    assert CheckpointManager(tmp_path / "empty").load_latest() is None


def test_other_format_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / checkpoint_name(1)
    path.write_bytes(encode_checkpoint({"step": 1}, [], []))
    assert read_meta(path)["format"] == 1
    # Rewrite with another format number.
    import io

    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps({"step": 1, "format": 99})))
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match=r"ckpt-00000001.npz has format 99"):
        read_meta(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_meta(tmp_path / "nope.npz")


def dead_pid() -> int:
    """The PID of a child that has exited and been reaped: no process has it now (a fixed number
    such as 12345 may well be alive, pid_max being 32768 or more)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_crash_mid_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    save(manager, 1)
    # What a writer killed before its rename leaves behind: a partial temp file.
    stale = tmp_path / f".{checkpoint_name(2)}.tmp-{dead_pid()}"
    stale.write_bytes(encode_checkpoint({"step": 2}, [], [])[:50])
    assert steps_of(manager) == [1]
    assert manager.load_latest().step == 1
    assert CheckpointManager(tmp_path).remove_stale_temp_files() == [stale]  # the next start's
    assert not stale.exists()
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint_name(1)]


def test_load_for_generation(tmp_path: Path, caplog) -> None:
    manager = CheckpointManager(tmp_path, keep=5)
    for step in (1, 2, 3):
        save(manager, step)
    assert manager.load_for_generation().step == 3  # nothing promoted: the latest
    manager.promote(tmp_path / checkpoint_name(2))
    assert manager.load_for_generation().step == 2
    assert manager.load_for_generation("3").step == 3
    assert manager.load_for_generation(checkpoint_name(1)).step == 1
    assert manager.load_for_generation(str(tmp_path / checkpoint_name(3))).step == 3
    with pytest.raises(CheckpointError, match="not found"):
        manager.load_for_generation("77")
    # A corrupt promoted checkpoint falls back to an older one, never to a newer one.
    overwrite_with_garbage(tmp_path / checkpoint_name(2))
    with caplog.at_level(logging.ERROR):
        assert manager.load_for_generation().step == 1
    assert checkpoint_name(2) in caplog.text
    # A promoted name that no longer exists is ignored.
    (tmp_path / "PROMOTED").write_text("ckpt-00000099.npz\n")
    assert manager.promoted_path() is None
    assert manager.load_for_generation().step == 3


# ---------------------------------------------------------------- with real trainers


def _trained_checkpoints(make_settings, home: Path):
    from tweetgen import corpus
    from tweetgen.trainer import Trainer, TrainJob, build_data
    from tweetgen.vocab import Vocab

    settings = make_settings(home, checkpoint_every=3, keep_checkpoints=5)
    write_corpus(settings.corpus_file, varied_lines(20))
    vocab = Vocab.build(corpus.read_lines(settings.corpus_file).lines)
    job = TrainJob("train", 1, 0, corpus.complete_end(settings.corpus_file), 6)
    manager = CheckpointManager(settings.checkpoints, settings.keep_checkpoints)
    trainer = Trainer.fresh(settings, vocab)
    trainer.run(job, build_data(settings, vocab, job), manager)
    assert steps_of(manager) == [3, 6]
    return settings, manager, trainer


@pytest.mark.parametrize("damage", [truncate, overwrite_with_garbage])
def test_load_latest_trainer_falls_back(make_settings, tmp_path, damage, caplog) -> None:
    from tweetgen.engine import load_latest_trainer

    settings, manager, _ = _trained_checkpoints(make_settings, tmp_path)
    damage(settings.checkpoints / checkpoint_name(6))
    with caplog.at_level(logging.ERROR):
        trainer = load_latest_trainer(settings, manager)
    assert trainer is not None and trainer.step == 3
    assert checkpoint_name(6) in caplog.text
    np.testing.assert_array_equal(trainer.model.weights[0].numpy(),
                                  load_checkpoint(settings.checkpoints / checkpoint_name(3)).weights[0])


def test_incompatible_checkpoint_is_named_and_skipped(make_settings, tmp_path, caplog) -> None:
    from tweetgen.engine import load_latest_trainer
    from tweetgen.trainer import model_from_checkpoint

    settings, manager, trainer = _trained_checkpoints(make_settings, tmp_path)
    newest = settings.checkpoints / checkpoint_name(6)
    ckpt = load_checkpoint(newest)
    # Weights saved under a model config they do not fit (another engineer changed the sizes).
    meta = dict(ckpt.meta, model_config=dict(ckpt.meta["model_config"], gru_sizes=[8, 8]))
    newest.write_bytes(encode_checkpoint(meta, ckpt.weights, ckpt.optimizer))
    with pytest.raises(CheckpointError, match=newest.name):
        model_from_checkpoint(load_checkpoint(newest))
    with caplog.at_level(logging.ERROR):
        loaded = load_latest_trainer(settings, manager)
    assert loaded.step == 3
    assert newest.name in caplog.text


def test_trainer_state_round_trips_through_a_checkpoint(make_settings, tmp_path) -> None:
    from tweetgen.trainer import Trainer

    settings, manager, trainer = _trained_checkpoints(make_settings, tmp_path)
    loaded = Trainer.from_checkpoint(settings, manager.load_latest())
    assert loaded.step == trainer.step == 6
    assert loaded.vocab == trainer.vocab
    for a, b in zip(trainer.model.weights, loaded.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(trainer.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _rewrite_meta(path: Path, **changes) -> None:
    ckpt = load_checkpoint(path)
    path.write_bytes(encode_checkpoint(dict(ckpt.meta, **changes), ckpt.weights, ckpt.optimizer))


@pytest.mark.parametrize("changes", [
    {"model_config": {"input_mode": "embedding", "embedding_dim": 16, "gru_sizes": [8, 8], "dropout": 0.0}},
    {"vocab": '{"reserved": ["<pad>"], "chars": ["a"]}'},
    {"vocab": '{"reserved": ["<pad>", "<eos>", "<unk>"], "chars": ["a"]}'},  # fewer ids than the model
])
def test_generation_and_eval_fall_back_past_an_incompatible_checkpoint(make_settings, tmp_path, caplog,
                                                                       changes) -> None:
    from tweetgen import engine

    settings, manager, _ = _trained_checkpoints(make_settings, tmp_path)
    newest = settings.checkpoints / checkpoint_name(6)
    _rewrite_meta(newest, **changes)
    with caplog.at_level(logging.ERROR):
        generator, ckpt = engine.open_generator(settings, with_novelty=False)
    assert ckpt.step == 3
    assert newest.name in caplog.text
    assert "incompatible" in caplog.text or "does not fit" in caplog.text
    assert len(generator.generate(["alpha"], top_k=1, random_seed=0)[0].text) <= 140
    assert engine.evaluate_file(settings, settings.corpus_file)["step"] == 3
    # Asked for by name, it is not replaced by another: a clear error naming it.
    with pytest.raises(CheckpointError, match=newest.name):
        engine.open_generator(settings, "6")
    # With nothing usable left, the error says what to do.
    overwrite_with_garbage(settings.checkpoints / checkpoint_name(3))
    with pytest.raises(CheckpointError, match="no usable checkpoint.*tweetgen train"):
        engine.evaluate_file(settings, settings.corpus_file)


def test_temp_file_of_a_live_writer_is_kept_and_a_dead_ones_removed(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tweetgen.checkpoints import CheckpointManager

    tmp_path.mkdir(exist_ok=True)
    live = tmp_path / f".ckpt-00000001.npz.tmp-{os.getpid()}"
    live.write_bytes(b"half written")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
    dead = tmp_path / f".ckpt-00000002.npz.tmp-{dead_pid}"
    dead.write_bytes(b"left by a crash")
    CheckpointManager(tmp_path).remove_stale_temp_files()
    assert live.exists() and not dead.exists()


def test_readers_never_delete_only_the_instance_lock_holder_cleans(make_settings, tmp_path) -> None:
    """Making a manager, /api/status and generating delete nothing in the checkpoint folder (a
    reader in another PID namespace would take a live writer's temp file for a dead one); the
    process that takes the instance lock removes what a crash left."""
    from tweetgen import engine
    from tweetgen.daemon import InstanceLock
    from tweetgen.status import daemon_status

    settings, manager, _ = _trained_checkpoints(make_settings, tmp_path)
    left = settings.checkpoints / f".{checkpoint_name(9)}.tmp-{2**22 + 1}"  # above any pid_max
    left.write_bytes(b"a writer's temp file, its pid not visible here")
    CheckpointManager(settings.checkpoints, settings.keep_checkpoints)
    daemon_status(settings)
    engine.open_generator(settings)
    assert left.exists()
    with InstanceLock(settings):
        assert not left.exists()
    assert steps_of(manager) == [3, 6]
