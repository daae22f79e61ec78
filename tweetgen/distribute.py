"""Training on one device, on several local ones, or on several hosts, with tf.distribute.

`strategy_for(settings)` is the process's strategy for the `strategy` setting:

- `auto`: the one GPU if there is one; else the CPU, as `tweetgen.cpu.training_replicas`
  replicas (one per core this process may use, by default) on as many logical CPU devices under
  a MirroredStrategy, or, with one replica, TensorFlow's default strategy: the trainer then runs
  the single-device step of tweetgen.train unchanged.
- `mirrored`: `tf.distribute.MirroredStrategy` over all local GPUs or, without a GPU, over
  `training_replicas` logical CPU devices.
- `multi-worker`: `tf.distribute.MultiWorkerMirroredStrategy` over the hosts in `TF_CONFIG`, or
  else over the `workers` setting, this process being `workers[worker_index]`.

Logical CPU devices and the multi-worker runtime can only be set up before TensorFlow starts its
devices, so a program creates its strategy before anything else touches TensorFlow (the CLI's
`train` and the daemon do).

Under a strategy other than the default, the trainer's model and optimizer are mirrored (a copy
per replica, kept equal) and one training step
1. cuts the global batch into equal row shards, one per replica (missing rows are all <pad>),
2. takes on each replica the gradient of its shard's summed masked cross-entropy divided by the
   GLOBAL count of trained targets (loss weight 1: not padding, not NO_LOSS), so that the
   replicas' gradients sum to the gradient of the global batch's mean loss, the one a single device computes,
3. sums them across replicas, clips that sum by its global norm and applies it if it is finite.
Validation sums the replicas' loss sums and target counts. Checkpoints hold the same plain arrays
whatever the strategy, so a run resumes on any number of replicas. Only the chief writes them: the
other workers take part in the validation (a collective) and write nothing. All workers read the
same corpus and checkpoint folder (one machine, or shared storage): they must build the same
batches and start from the same weights, which `place_model` checks.

Dropout masks are drawn per replica (the step's seed folded with the replica id): reproducible,
but not the masks of a single-device run on the same batch.

Mixed precision (`precision`): the model is built under that Keras dtype policy (variables stay
float32, the layers compute in 16 bits, the logits layer and the loss in float32). mixed_float16
scales the loss (`DynamicLossScale`) so that small gradients do not underflow to zero.

On a GPU the GRU layers must run on cuDNN: the model keeps to cuDNN's conditions (see
tweetgen.model) and `place_model` takes the Keras layers, never the CPU fast path, with
`use_cudnn=True`, so Keras raises instead of falling back to its slow generic loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf

from . import cpu
from .config import ConfigError, Settings
from .model import CharGRU, build_model
from .train import loss_weights, masked_loss_sum, model_inputs
from .train import make_eval_fn as single_device_eval_fn
from .train import make_train_step as single_device_train_step
from .vocab import PAD

log = logging.getLogger(__name__)

SUM = tf.distribute.ReduceOp.SUM
_strategies: dict[tuple, tf.distribute.Strategy] = {}


# ---------------------------------------------------------------- the strategy


def strategy_for(settings: Settings) -> tf.distribute.Strategy:
    """The strategy of these settings, created once per process (call it before TensorFlow starts
    its devices for `mirrored` on logical CPUs and for `multi-worker`)."""
    replicas = cpu.training_replicas(settings)
    # "auto" and "mirrored" on the same logical CPUs are one strategy: two MirroredStrategy
    # objects on the same devices mix up their collectives (an all-reduce of one step meets the
    # other's: "Shape mismatch in the collective instance").
    kind = "cpu-replicas" if replicas > 1 else settings.strategy  # more than 1: on the CPU
    key = (kind, replicas, settings.workers, settings.worker_index)
    cpu.configure_threads(settings)
    if key not in _strategies:
        strategy = _create(settings, replicas)
        if not is_default(strategy):
            log.info("strategy %s: %d replicas on %s", settings.strategy, strategy.num_replicas_in_sync,
                     ", ".join(strategy.extended.worker_devices))
        _strategies[key] = strategy
    return _strategies[key]


def _create(settings: Settings, replicas: int) -> tf.distribute.Strategy:
    if settings.strategy == "auto":
        if replicas == 1 or not cpu_split_now(replicas):
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    if settings.strategy == "mirrored":
        if cpu.has_gpu():
            return tf.distribute.MirroredStrategy()
        split_cpu(replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    if os.environ.get("TF_CONFIG"):
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    elif settings.workers:
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": list(settings.workers)}), task_type="worker",
            task_id=settings.worker_index, rpc_layer="grpc")
    else:
        raise ConfigError("strategy 'multi-worker' needs its hosts: set TF_CONFIG, or the workers "
                          "setting (HOST:PORT of each worker) and worker_index")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as exc:
        raise ConfigError(f"strategy 'multi-worker' must be created before TensorFlow starts ({exc}); "
                          "call tweetgen.distribute.strategy_for first in the program") from None


def split_cpu(count: int) -> None:
    """Split the CPU into `count` logical devices (before TensorFlow starts its devices); a split
    into as many or more is kept (a strategy uses the first `count`)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or [None]) >= count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise ConfigError(f"strategy 'mirrored' with cpu_replicas = {count} needs the CPU split before "
                          "TensorFlow starts its devices: call tweetgen.distribute.strategy_for first "
                          "in the program") from None


def cpu_split_now(count: int) -> bool:
    """`split_cpu` for "auto": False, with a log line, where TensorFlow already started its
    devices (a library caller that used it first): training then runs on one device."""
    try:
        split_cpu(count)
        return True
    except ConfigError:
        log.info("TensorFlow started before the CPU could be split into %d replicas: training on "
                 "one device (create the strategy first to train on every core)", count)
        return False


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """TensorFlow's default strategy (`auto`): one device, no replicas."""
    replicated = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    return not isinstance(strategy, replicated)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and records the run (all but multi-worker's others)."""
    return bool(strategy.extended.should_checkpoint)


def uses_gpu(strategy: tf.distribute.Strategy) -> bool:
    if is_default(strategy):
        return bool(tf.config.list_physical_devices("GPU"))
    return any("GPU" in device.upper() for device in strategy.extended.worker_devices)


def describe(strategy: tf.distribute.Strategy) -> str:
    if is_default(strategy):
        return "one device (" + ("GPU" if uses_gpu(strategy) else "CPU") + ")"
    replicas = strategy.num_replicas_in_sync
    return f"{type(strategy).__name__}, {replicas} replica{'s' if replicas > 1 else ''}"


# ---------------------------------------------------------------- the model under a strategy


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Layers built inside take this Keras dtype policy (the policy is per thread: a generator
    built at the same time in another thread keeps float32)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def place_model(strategy: tf.distribute.Strategy, settings: Settings, model: CharGRU,
                model_config: dict[str, Any]) -> CharGRU:
    """The model to train: `model` itself on one device in float32, else a copy with the same
    weights built under the strategy (mirrored variables) and the precision policy."""
    placed = model
    if not (is_default(strategy) and settings.precision == "float32"):
        with strategy.scope(), precision_scope(settings.precision):
            placed = build_model(model.vocab_size, model_config)
        for target, source in zip(placed.weights, model.weights, strict=True):
            target.assign(source.numpy())
    # The CPU fast path computes in float32 and is no cuDNN: a GPU or 16 bits take the Keras layers.
    if settings.precision != "float32" or uses_gpu(strategy):
        placed.fast_gru = False
    if uses_gpu(strategy):
        for gru in placed.grus:
            gru.use_cudnn = True  # Keras raises rather than fall back to its generic loop
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        check_same_weights(strategy, placed)
    return placed


def check_same_weights(strategy: tf.distribute.Strategy, model: CharGRU) -> None:
    """Multi-worker: every worker must start from the same weights (the same checkpoint, or the
    same seed when fresh); mirrored variables would otherwise stay different on each worker."""
    replicas = strategy.num_replicas_in_sync

    def replica_differs() -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        mine = tf.add_n([tf.reduce_sum(tf.cast(w, tf.float64)) * (i + 1)
                         for i, w in enumerate(model.weights)])
        mean = context.all_reduce(SUM, mine) / replicas
        return context.all_reduce(SUM, tf.cast(tf.abs(mine - mean) > 1e-9 * (1 + tf.abs(mean)), tf.float64))

    differs = strategy.experimental_local_results(tf.function(lambda: strategy.run(replica_differs))())[0]
    if float(differs) > 0:
        raise ConfigError("the workers start from different weights: every worker must read the same "
                          "corpus and checkpoint folder (one machine, or shared storage) and settings")


# ---------------------------------------------------------------- the step and validation


def replica_shard(batch: tf.Tensor, replica: tf.Tensor | int, replicas: int) -> tf.Tensor:
    """This replica's rows of the global batch, padded with <pad> rows to replicas equal shards."""
    rows = tf.shape(batch)[0]
    per_replica = (rows + replicas - 1) // replicas
    padded = tf.pad(batch, [[0, per_replica * replicas - rows], [0, 0]], constant_values=PAD)
    return padded[replica * per_replica : (replica + 1) * per_replica]


class DynamicLossScale:
    """mixed_float16's loss scale: float16 gradients of a small loss underflow to zero unless the
    loss is scaled up first. It starts at 2**15, halves after a step whose gradients overflow
    (that step's update is skipped, as Keras's LossScaleOptimizer does) and doubles after 2000
    finite steps in a row. It is not in checkpoints: a resumed run starts again at 2**15."""

    INITIAL = 2.0**15
    GROWTH_STEPS = 2000

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        with strategy.scope():
            self.value = tf.Variable(self.INITIAL, trainable=False, dtype=tf.float32)
            self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64)

    def update(self, finite: tf.Tensor) -> None:
        """After a step's gradients were checked (in a cross-replica context)."""
        good = tf.where(finite, self.good_steps + 1, 0)
        grow = good >= self.GROWTH_STEPS
        self.value.assign(tf.where(finite, tf.where(grow, self.value * 2, self.value), self.value / 2))
        self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good))


def make_train_step(strategy: tf.distribute.Strategy, settings: Settings, model: CharGRU,
                    optimizer: keras.optimizers.Optimizer) -> Callable:
    """The compiled step, with tweetgen.train.make_train_step's signature and results
    (batch, seed, fault loss multiplier) -> (loss, gradient norm, applied)."""
    loss_scale = DynamicLossScale(strategy) if settings.precision == "mixed_float16" else None
    # The CPU fast GRU path's multiplies (tweetgen.cpu); the Keras GRU layers ignore it.
    dtype = tf.bfloat16 if cpu.matmul_dtype_name(settings) == "bfloat16" else tf.float32
    if is_default(strategy) and loss_scale is None:
        return single_device_train_step(model, optimizer, settings.clip_norm, dtype,
                                        settings.embedding_lr_scale)
    variables = model.trainable_variables
    replicas = strategy.num_replicas_in_sync
    clip_norm = settings.clip_norm
    scale = settings.embedding_lr_scale  # as in tweetgen.train.make_train_step
    embedding = getattr(model.embed, "embeddings", None) if scale != 1.0 else None

    def apply_if_finite(distribution: tf.distribute.Strategy, grads: list, finite: Any) -> None:
        # In a cross-replica context: Keras applies (and sums) gradients in a replica context,
        # and a tf.cond in a replica context must not hold a step that synchronises replicas.
        ok = distribution.experimental_local_results(finite)[0]

        def apply() -> None:
            before = tf.identity(embedding.value) if embedding is not None else None
            distribution.extended.call_for_each_replica(lambda g: optimizer.apply(g, variables),
                                                        args=(grads,))
            if embedding is not None:  # every replica's copy, in this cross-replica context
                after = tf.convert_to_tensor(embedding.value)
                embedding.assign(before + scale * (after - before))

        tf.cond(ok, apply, lambda: None)
        if loss_scale is not None:
            loss_scale.update(ok)

    def replica_step(batch: tf.Tensor, seed: tf.Tensor, fault_scale: tf.Tensor):
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group
        shard = replica_shard(batch, replica, replicas)
        targets = tf.reduce_sum(loss_weights(batch[:, 1:]))
        dropout_seed = tf.random.experimental.stateless_fold_in(seed, replica)
        with tf.GradientTape() as tape:
            logits = model(model_inputs(shard), dropout_seed=dropout_seed, matmul_dtype=dtype)
            total, _ = masked_loss_sum(shard[:, 1:], logits)
            # This replica's share of the global batch's mean loss (fault_scale is 1.0 but in tests).
            loss = total / tf.maximum(targets, 1.0) * fault_scale
            scaled = loss * loss_scale.value if loss_scale is not None else loss
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
        if loss_scale is not None:
            grads = [g / loss_scale.value for g in grads]
        summed = context.all_reduce(SUM, [loss, *grads])
        global_loss, norm = summed[0], tf.linalg.global_norm(summed[1:])
        # The factor that clips the summed gradient, applied to each part: the parts still sum to it.
        clipped, _ = tf.clip_by_global_norm(grads, clip_norm, use_norm=norm)
        finite = tf.logical_and(tf.math.is_finite(global_loss), tf.math.is_finite(norm))
        context.merge_call(apply_if_finite, args=(clipped, finite))
        # With a loss scale an overflow is a skipped update, not a bad step.
        counted = tf.math.is_finite(global_loss) if loss_scale is not None else finite
        return global_loss, norm, counted

    @tf.function(
        input_signature=[tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((2,), tf.int64),
                         tf.TensorSpec((), tf.float32)],
        reduce_retracing=True,
    )
    def train_step(batch: tf.Tensor, seed: tf.Tensor, fault_scale: tf.Tensor):
        results = strategy.run(replica_step, args=(batch, seed, fault_scale))
        return tuple(strategy.experimental_local_results(r)[0] for r in results)

    return train_step


def make_eval_fn(strategy: tf.distribute.Strategy, model: CharGRU) -> Callable:
    """Validation's compiled batch: (batch) -> (summed masked loss, trained targets)."""
    if is_default(strategy):
        return single_device_eval_fn(model)
    replicas = strategy.num_replicas_in_sync

    def replica_eval(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        shard = replica_shard(batch, replica, replicas)
        return masked_loss_sum(shard[:, 1:], model(model_inputs(shard)))

    @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32)], reduce_retracing=True)
    def eval_batch(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        total, count = strategy.run(replica_eval, args=(batch,))
        return strategy.reduce(SUM, total, axis=None), strategy.reduce(SUM, count, axis=None)

    return eval_batch
