"""The CPU: how many replicas train on it, how many threads TensorFlow uses, and whether the
fast GRU path multiplies in bfloat16.

Replicas (`cpu_replicas`): without a GPU, a process that may use several cores trains one
replica per core (`training_replicas`; tweetgen.distribute then splits the CPU into as many
logical devices under a MirroredStrategy): each takes its share of the batch, and their
gradients are summed into the same step a single device takes. The GRU's step is a chain of
small multiplies, so one device gains little from a second core (1.15x), while two replicas
side by side train 1.6x one core's characters/s (bench/README.md).

Threads (`cpu_threads`): with replicas, one intra-op thread and one inter-op thread per
replica. Otherwise TensorFlow's intra-op pool (the threads one matrix multiply is split over)
gets the cores this process may run on (`os.sched_getaffinity`: a process pinned to one core
gets one thread, not a pool as large as the machine fighting over that core) or the setting;
the inter-op pool gets 1 for one core, else 2. Both must be set before TensorFlow starts its
runtime (`configure_threads`, called by the CLI and the daemon first thing; later calls keep
what is set).

bfloat16 (`cpu_matmul_precision`): on a CPU with AMX-BF16 or AVX512-BF16 units a bfloat16
matrix multiply is 2-3x as fast as a float32 one at these sizes; the fast GRU path can round
the operands of its multiplies to bfloat16 (weights, state, sums, loss and optimizer stay
float32). "auto" takes bfloat16 where the CPU's flags show such units, float32 elsewhere. The
sampler follows the same setting where it runs on one intra-op thread (`sampling_matmul_dtype`;
measured 1.36-1.48x the tweets/s of its float32 XLA loop on one core, bench/README.md), never on
a GPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import Settings

log = logging.getLogger(__name__)

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# The fewest lines of the batch a CPU replica gets when their number is automatic (cpu_replicas
# = 0): the default batch of 64 trains on two cores as two replicas of 32.
MIN_REPLICA_BATCH = 32
# What "auto" takes on a CPU with bfloat16 units; chosen by measurement (bench/README.md:
# bench.precision, 1.29x the speed at equal validation per step).
AUTO_CHOICE = "bfloat16"
_configured: tuple[int, int] | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def training_replicas(settings: Settings) -> int:
    """How many replicas train on the CPU: 1 (one device) unless there is no GPU and the strategy
    is "auto" or "mirrored". Then `cpu_replicas`, or with 0 one per core this process may use,
    as long as each replica gets MIN_REPLICA_BATCH lines of the batch ("auto" with `cpu_threads`
    set keeps one device: the user chose a thread pool)."""
    if settings.strategy not in ("auto", "mirrored") or has_gpu():
        return 1
    if settings.cpu_replicas:
        return settings.cpu_replicas
    if settings.strategy == "auto" and settings.cpu_threads:
        return 1
    return max(1, min(available_cores(), settings.batch_size // MIN_REPLICA_BATCH))


def thread_counts(settings: Settings) -> tuple[int, int]:
    """(intra-op, inter-op) threads for these settings on this process's cores. Replicas on the
    CPU get one intra-op thread and an inter-op thread each: each replica's step is a chain of
    small multiplies that a second intra-op thread barely speeds up, while the replicas' chains
    run side by side (measured 1.6x one core's chars/s on two, against 1.15x for one device with
    two intra-op threads; bench/README.md)."""
    replicas = training_replicas(settings)
    if settings.cpu_threads:
        intra = settings.cpu_threads
    else:
        intra = 1 if replicas > 1 else available_cores()
    return intra, replicas if replicas > 1 else (1 if intra == 1 else 2)


def configure_threads(settings: Settings) -> tuple[int, int]:
    """Set TensorFlow's thread pools once, before its runtime starts; returns what is in force."""
    global _configured
    if _configured is not None:
        return _configured
    import tensorflow as tf

    intra, inter = thread_counts(settings)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # the runtime already started (a test process, a library caller)
        intra = tf.config.threading.get_intra_op_parallelism_threads() or intra
        inter = tf.config.threading.get_inter_op_parallelism_threads() or inter
        log.debug("TensorFlow already started: keeping its thread pools")
    _configured = (intra, inter)
    log.info("TensorFlow threads: %d intra-op, %d inter-op", intra, inter)
    return _configured


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_bf16_units(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_FLAGS)


def matmul_dtype_name(settings: Settings, flags: set[str] | None = None) -> str:
    """"float32" or "bfloat16" for the fast GRU path's multiplies under these settings."""
    choice = settings.cpu_matmul_precision
    if choice == "auto":
        return AUTO_CHOICE if has_bf16_units(flags) else "float32"
    return choice


def sampling_matmul_dtype(settings: Settings, intra_threads: int, flags: set[str] | None = None) -> str:
    """The sampler's multiplies (tweetgen.generate). float32 (the whole loop under XLA) where
    TensorFlow sees a GPU. On a CPU, as the fast GRU path's, except that "auto" takes bfloat16
    only with one intra-op thread: with two, the bfloat16 loop's small oneDNN multiplies gained
    nothing from the second thread while XLA's float32 ones did (measured 0.89-1.03x against
    1.36-1.48x on one core, bench/README.md). "bfloat16" forces it."""
    if has_gpu():
        return "float32"
    choice = matmul_dtype_name(settings, flags)
    if settings.cpu_matmul_precision == "auto" and intra_threads > 1:
        return "float32"
    return choice
