"""float32 against bfloat16 multiplies on the CPU fast GRU path: speed and validation per step.

    .venv/bin/python -m bench.precision [--steps 400] [--chunk 50] [--cores 1]
    .venv/bin/python -m bench.precision --setting embedding_lr_scale --values 1 4   (any setting)

Two trainers of the default model, the same initial weights, the same batches (the fortune
corpus, as bench/engine.py), one with `cpu_matmul_precision = "float32"`, one with "bfloat16",
in ONE process pinned to `--cores` cores (one TensorFlow thread per core), trained in alternating
chunks of `--chunk` steps, so that the load of a shared machine falls on both alike. Prints
useful characters/s (median of the chunks' rates, the first left out: tracing), the ratio, and the
validation bits/char of both at the end (always scored in float32), at equal steps: a per-step
quality cost of bfloat16 rounding shows there. Equal wall time is bench/race.py's job:
`--against cpu_matmul_precision=bfloat16`. `--setting NAME --values A B` compares two values of
any other setting the same way (the model's initial weights and batches are the same for both).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path[0] = str(REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--setting", default="cpu_matmul_precision")
    parser.add_argument("--values", nargs=2, default=["float32", "bfloat16"])
    parser.add_argument("--report-every", type=int, default=0,
                        help="also print both sides' validation every this many steps")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tweetgen-precision"))
    args = parser.parse_args(argv)

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    from bench.engine import bench_settings, shared_data
    from tweetgen import config, corpus, cpu
    from tweetgen.checkpoints import CheckpointManager
    from tweetgen.trainer import Trainer, TrainJob, build_data

    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus_file = args.workdir / "corpus.txt"
    if not corpus_file.exists():
        corpus.import_fortunes(corpus.default_fortune_file(), corpus_file, 140)
    base = dataclasses.replace(bench_settings(args.workdir), cpu_threads=args.cores, log_every=args.chunk)
    cpu.configure_threads(base)
    vocab, _, _, _ = shared_data(base)
    sides = {}
    for name in args.values:
        settings = config.apply(base, {args.setting: name}, "--values")
        trainer = Trainer.fresh(settings, vocab)  # the same seed: the same initial weights
        job = TrainJob("train", settings.random_seed, 0, corpus.complete_end(corpus_file), 0)
        job.new_plan(0, steps=args.steps)
        sides[name] = (trainer, job, build_data(settings, vocab, job), [])
    manager = CheckpointManager(args.workdir / "checkpoints", keep=1)
    for target in range(args.chunk, args.steps + 1, args.chunk):
        for trainer, job, data, rates in sides.values():
            trainer.run(job, data, manager, on_log=lambda entry, rates=rates: rates.append(entry.chars_per_s),
                        should_stop=lambda trainer=trainer, target=target: trainer.step >= target)
        if args.report_every and target % args.report_every == 0 and target < args.steps:
            scores = "  ".join(f"{name} {t.validation_bpc(d):.4f}" for name, (t, _, d, _) in sides.items())
            print(f"  step {target:6d}: {args.setting} {scores}", flush=True)
    rows = {}
    for name, (trainer, _, data, rates) in sides.items():
        rows[name] = statistics.median(rates[1:] or rates), trainer.validation_bpc(data), trainer.step
    (f32_rate, f32_bpc, steps), (bf_rate, bf_bpc, _) = (rows[v] for v in args.values)
    print(f"{steps} steps each, chunks of {args.chunk}, {args.cores} core(s); CPU bfloat16 units: "
          f"{cpu.has_bf16_units()}; load average {os.getloadavg()[0]:.1f}")
    for name, (rate, bpc, _) in rows.items():
        print(f"  {args.setting} = {name:<9} {rate:8,.0f} useful chars/s   validation {bpc:.4f} bits/char")
    print(f"  {args.values[1]} speed {bf_rate / f32_rate:.2f}x {args.values[0]}; "
          f"validation difference {bf_bpc - f32_bpc:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
