"""Run by tests/test_distribute.py in a Python of its own: the CPU is split into 2 logical devices,
which TensorFlow allows only before it starts, so the pytest process must not do it.

    python tests/distribute_check.py HOME      prints one JSON object of measured differences

1. One step on the same global batch (7 lines of varied length: an odd row count, so one replica
   gets a padding row, and shards with different target counts) by the single-device trainer and
   by the `mirrored` trainer on 2 replicas, with clipping active and inactive: the loss, gradient
   norm, weights and Adam's moments after the step. Adam's first moment after one step is
   0.1 x the applied gradient, so it shows a wrongly scaled gradient even where Adam's update
   (about lr x sign(gradient) at the first step) would not. As a control, the moment a wrong
   scaling would give (each replica's own mean loss, summed) is computed too.
2. Checkpoints across replica counts: 3 steps on 2 replicas then 3 more on 1 from its checkpoint,
   and 3 on 1 then 3 on 2, each against 6 straight steps on 1 replica.
3. One mixed_float16 and one mixed_bfloat16 step on 1 device and on 2 replicas.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import TINY, varied_lines, write_corpus  # noqa: E402

from tweetgen import corpus, distribute  # noqa: E402
from tweetgen.config import Settings  # noqa: E402


def max_diff(a: list, b: list) -> float:
    return float(max(abs(x.numpy() - y.numpy()).max() for x, y in zip(a, b, strict=True)))


def one_step(single: Settings, mirrored: Settings, lines: list[str]) -> dict:
    import tensorflow as tf

    from tweetgen.train import encode_lines, masked_loss_sum, pad_batch
    from tweetgen.trainer import Trainer
    from tweetgen.vocab import Vocab

    vocab = Vocab.build(lines)
    batch = pad_batch(encode_lines(lines, vocab, 280)[0])
    one, two = Trainer.fresh(single, vocab), Trainer.fresh(mirrored, vocab)
    start = max_diff(one.model.weights, two.model.weights)
    before = [w.numpy() for w in one.model.weights]
    seed, fault = tf.constant([5, 0], tf.int64), tf.constant(1.0)
    loss1, norm1, applied1 = one.train_step(tf.constant(batch), seed, fault)
    loss2, norm2, applied2 = two.train_step(tf.constant(batch), seed, fault)

    # The control: each replica's own mean loss (a classic mistake), gradients summed.
    control = Trainer.fresh(single, vocab)
    variables = control.model.trainable_variables
    with tf.GradientTape() as tape:
        wrong = 0.0
        for shard in (batch[:4], batch[4:]):
            logits = control.model(tf.constant(shard[:, :-1]))
            total, count = masked_loss_sum(tf.constant(shard[:, 1:]), logits)
            wrong += total / count
    wrong_grads = [tf.convert_to_tensor(g) for g in tape.gradient(wrong, variables)]
    wrong_grads, _ = tf.clip_by_global_norm(wrong_grads, single.clip_norm)
    moments = [v for v in one.optimizer.variables if v.name.endswith("_momentum")]
    wrong_moment = max(float(abs(m.numpy() - 0.1 * g.numpy()).max()) for m, g in zip(moments, wrong_grads,
                                                                                      strict=True))
    return {
        "rows": int(batch.shape[0]), "start_weights": start,
        "loss": [float(loss1), float(loss2)], "norm": [float(norm1), float(norm2)],
        "applied": [bool(applied1), bool(applied2)],
        "weights": max_diff(one.model.weights, two.model.weights),
        "moved": float(max(abs(w.numpy() - b).max() for w, b in zip(one.model.weights, before, strict=True))),
        "optimizer": max_diff(one.optimizer.variables, two.optimizer.variables),
        "wrong_scaling_moment": wrong_moment,
        "eval": [[float(x) for x in t.eval_fn(tf.constant(batch))] for t in (one, two)],
    }


def mixed_step(single: Settings, mirrored: Settings, lines: list[str]) -> dict:
    """One 16-bit step on 1 device and on 2 replicas (float16: the loss scale is updated across
    replicas): losses and weights agree to 16-bit precision."""
    import tensorflow as tf

    from tweetgen.train import encode_lines, pad_batch
    from tweetgen.trainer import Trainer
    from tweetgen.vocab import Vocab

    vocab = Vocab.build(lines)
    batch = tf.constant(pad_batch(encode_lines(lines, vocab, 280)[0]))
    one, two = Trainer.fresh(single, vocab), Trainer.fresh(mirrored, vocab)
    seed, fault = tf.constant([5, 0], tf.int64), tf.constant(1.0)
    results = [[float(x) for x in t.train_step(batch, seed, fault)] for t in (one, two)]
    # Adam's first moments are 0.1 x the applied gradients: their relative difference.
    moments = [[v.numpy() for v in t.optimizer.variables if v.name.endswith("_momentum")] for t in (one, two)]
    gap = sum(float(((a - b) ** 2).sum()) for a, b in zip(*moments, strict=True))
    size = sum(float((a**2).sum()) for a in moments[0])
    return {"results": results, "dtype": two.model.grus[0].compute_dtype, "gradient_gap": (gap / size) ** 0.5}


def across_replicas(single: Settings, mirrored: Settings) -> dict:
    from tweetgen.checkpoints import CheckpointManager
    from tweetgen.train import bits_per_char
    from tweetgen.trainer import Trainer, TrainJob, build_data
    from tweetgen.vocab import Vocab

    write_corpus(single.corpus_file, varied_lines(60))
    lines = corpus.read_lines(single.corpus_file).lines
    vocab = Vocab.build(lines)
    end = corpus.complete_end(single.corpus_file)

    def job(target: int) -> TrainJob:
        return TrainJob("train", 77, 0, end, target)

    data = build_data(single, vocab, job(6))
    straight = Trainer.fresh(single, vocab)
    straight.run(job(6), data, CheckpointManager(single.home / "straight"))
    out = {}
    for name, first, then in (("2to1", mirrored, single), ("1to2", single, mirrored)):
        manager = CheckpointManager(single.home / name)
        head = Trainer.fresh(first, vocab)
        # Stopped after 3 of the plan's 6 steps, then resumed: the same learning-rate schedule.
        head.run(job(6), data, manager, should_stop=lambda head=head: head.step >= 3)
        ckpt = manager.load_latest()
        resumed = Trainer.from_checkpoint(then, ckpt)
        resumed_job = TrainJob.from_dict(ckpt.meta["job"])
        result = resumed.run(resumed_job, data, manager)
        out[name] = {
            "checkpoint_step": ckpt.step, "steps": result.steps, "step": resumed.step,
            "replicas": [head.strategy.num_replicas_in_sync, resumed.strategy.num_replicas_in_sync],
            "weights": max_diff(straight.model.weights, resumed.model.weights),
            "optimizer": max_diff(straight.optimizer.variables, resumed.optimizer.variables),
            "iterations": int(resumed.optimizer.iterations.numpy()),
            # The checkpoint's validation figure, computed on its replicas, against one device's.
            "val_bpc": [ckpt.meta["val_bpc"],
                        bits_per_char(Trainer.from_checkpoint(single, ckpt).model, data.validation)],
        }
    return out


def main() -> None:
    home = Path(sys.argv[1])
    # float32 multiplies: bfloat16 (tweetgen.cpu) rounds differently on differently shaped shards.
    mirrored = Settings(home=home, **dict(TINY, strategy="mirrored", cpu_replicas=2, batch_size=8,
                                          checkpoint_every=10**6, cpu_matmul_precision="float32",
                                          embedding_lr_scale=3.0))  # its extrapolated step too
    strategy = distribute.strategy_for(mirrored)  # first: it splits the CPU before TensorFlow starts
    single = dataclasses.replace(mirrored, strategy="auto", cpu_replicas=1)
    lines = varied_lines(7)
    report = {
        "replicas": strategy.num_replicas_in_sync,
        "devices": list(strategy.extended.worker_devices),
        "clipped": one_step(dataclasses.replace(single, clip_norm=0.05),
                            dataclasses.replace(mirrored, clip_norm=0.05), lines),
        "unclipped": one_step(dataclasses.replace(single, clip_norm=100.0),
                              dataclasses.replace(mirrored, clip_norm=100.0), lines),
        "checkpoints": across_replicas(single, mirrored),
        **{precision: mixed_step(dataclasses.replace(single, precision=precision),
                                 dataclasses.replace(mirrored, precision=precision), lines)
           for precision in ("mixed_float16", "mixed_bfloat16")},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
