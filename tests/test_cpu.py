"""CPU choices: thread pools from the cores a process may use, bfloat16 by the CPU's flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tweetgen import cpu
from tweetgen.config import ConfigError, Settings, apply


def test_threads_follow_the_cores_or_the_setting(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert cpu.thread_counts(Settings()) == (1, 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu.thread_counts(Settings(batch_size=16)) == (4, 2)  # one device: a pool of the cores
    assert cpu.thread_counts(Settings(cpu_threads=2)) == (2, 2)


def test_a_cpu_trains_one_replica_per_core_with_32_lines_each(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu.training_replicas(Settings()) == 2  # the batch of 64 gives two replicas of 32
    assert cpu.thread_counts(Settings()) == (1, 2)  # one intra-op thread each, side by side
    assert cpu.training_replicas(Settings(batch_size=256)) == 4
    assert cpu.thread_counts(Settings(batch_size=256)) == (1, 4)
    assert cpu.training_replicas(Settings(batch_size=16)) == 1
    assert cpu.training_replicas(Settings(cpu_replicas=3)) == 3  # the setting wins
    assert cpu.training_replicas(Settings(cpu_threads=2)) == 1  # a chosen thread pool: one device
    assert cpu.training_replicas(Settings(strategy="multi-worker")) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
    assert cpu.training_replicas(Settings(batch_size=256)) == 1


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n\nflags : other\n")
    flags = cpu.cpu_flags(info)
    assert {"amx_bf16", "avx512f"} <= flags and "other" not in flags
    assert cpu.has_bf16_units(flags) and not cpu.has_bf16_units({"avx2", "fma"})
    assert cpu.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("choice, flags, expected", [
    ("auto", {"avx2"}, "float32"),
    ("auto", {"avx512_bf16"}, cpu.AUTO_CHOICE),
    ("float32", {"amx_bf16"}, "float32"),
    ("bfloat16", {"avx2"}, "bfloat16"),
])
def test_the_matmul_precision_is_chosen_by_setting_and_flags(choice: str, flags: set, expected: str) -> None:
    assert cpu.matmul_dtype_name(Settings(cpu_matmul_precision=choice), flags) == expected


def test_the_sampler_follows_the_matmul_precision_on_one_thread() -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        assert cpu.sampling_matmul_dtype(Settings(cpu_matmul_precision="bfloat16"), 1) == "float32"
        return
    assert cpu.sampling_matmul_dtype(Settings(), 1, {"amx_bf16"}) == cpu.AUTO_CHOICE
    assert cpu.sampling_matmul_dtype(Settings(), 2, {"amx_bf16"}) == "float32"  # auto: one thread only
    assert cpu.sampling_matmul_dtype(Settings(), 1, {"avx2"}) == "float32"
    assert cpu.sampling_matmul_dtype(Settings(cpu_matmul_precision="float32"), 1, {"amx_bf16"}) == "float32"
    assert cpu.sampling_matmul_dtype(Settings(cpu_matmul_precision="bfloat16"), 2, {"avx2"}) == "bfloat16"


def test_bad_cpu_settings_are_errors() -> None:
    with pytest.raises(ConfigError, match="cpu_matmul_precision"):
        apply(Settings(), {"cpu_matmul_precision": "int8"}, "test")
    with pytest.raises(ConfigError, match="cpu_threads"):
        apply(Settings(), {"cpu_threads": -1}, "test")
