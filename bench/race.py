"""Race: tweetgen's trainer against the lecture-style Keras baseline, at equal wall time.

    .venv/bin/python -m bench.race [--minutes 10] [--cores 1|2] [--plot race.png] [--json]
    .venv/bin/python -m bench.race --minutes 1                  (a smoke run, about 3 minutes)
    .venv/bin/python -m bench.race --against cpu_matmul_precision=bfloat16   (ours against ours)
    .venv/bin/python -m bench.race --scaling        (ours on two cores against ours on one, in turn)

Both sides train from scratch on the default corpus (the FreeBSD `fortunes` file, as in
bench/engine.py) for `--minutes` of training time each, and are scored on the *same* validation
lines (tweetgen's own split and bounded subset) by the same code (`tweetgen.train.bits_per_char`:
masked bits/char, end-of-text included), once a minute and at the end. The clock of each side
stops while it is scored, so scoring costs neither side training time.

- *Ours*: `tweetgen.trainer.Trainer` with the default settings and a timed plan of `--minutes`
  (the learning-rate schedule anneals over it); the run is stopped at each minute mark, scored
  (the trainer's own checkpoint validation) and resumed, which continues the same plan.
- *Baseline*: bench/engine.py's lecture-style trainer (one text cut into 50-character windows,
  one-hot inputs, Keras GRU 128 -> GRU 256 -> Dense, `model.fit`, Adam 2e-3 with clipping, no
  decay, no dropout), on our vocabulary, its line separator our end-of-text.
- `--against KEY=VALUE` (repeatable) races ours against ours with those settings instead of the
  baseline: how bench/README.md's comparisons were made.

`--scaling` races ours on both cores against ours pinned to one core, one after the other (the
issue 10 target: two cores at least 0.03 bits/char better than one at equal time).

`--cores 1` (default): the sides run at the same time, each in its own process pinned to its own
core (`os.sched_setaffinity`) with one TensorFlow thread. `--cores 2`: each side gets both cores
(two threads), one side after the other. Prints validation bits/char of both sides each minute,
the final and best figures, steps, useful characters/s (median of 25-step windows, the first
left out) and the differences; `--plot FILE.png` draws both curves (needs matplotlib: the `plot`
extra). The machine may be shared: read the load average printed with the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/race.py`: import from the repository root
    sys.path[0] = str(REPO)

import numpy as np  # noqa: E402

from bench.engine import (  # noqa: E402
    BATCH,
    LOG_WINDOW,
    STRIDE,
    WINDOW,
    baseline_model,
    bench_settings,
    shared_data,
    steady_rate,
)


def pin(cpus: list[int]) -> None:
    """This process on these cores only, TensorFlow with as many threads (call before it starts)."""
    os.sched_setaffinity(0, cpus)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(len(cpus))
    tf.config.threading.set_inter_op_parallelism_threads(1 if len(cpus) == 1 else 2)


# ---------------------------------------------------------------- the two sides (child processes)


def child_ours(workdir: Path, home: str, minutes: float, cpus: list[int], overrides: dict) -> dict:
    from tweetgen import config, corpus, distribute
    from tweetgen.checkpoints import CheckpointManager
    from tweetgen.trainer import Trainer, TrainJob, build_data

    settings = config.apply(bench_settings(workdir, home), overrides, "--against")
    # Pinned to its cores, tweetgen chooses its replicas and threads as it does on a machine with
    # that many (tweetgen.cpu): the strategy first, before TensorFlow starts its devices.
    os.sched_setaffinity(0, cpus)
    strategy = distribute.strategy_for(settings)
    vocab, _, _, _ = shared_data(settings)
    trainer = Trainer.fresh(settings, vocab)
    job = TrainJob("train", settings.random_seed, 0, corpus.complete_end(settings.corpus_file), 0)
    job.new_plan(0, seconds=minutes * 60)
    data = build_data(settings, vocab, job)
    manager = CheckpointManager(settings.checkpoints, keep=2)
    logs, curve = [], []
    for minute in range(1, math.ceil(minutes) + 1):
        mark = min(minute, minutes) * 60
        # Stopped at the mark (not at the plan's end, which the plan itself stops at), scored
        # by the checkpoint the stop writes, then resumed: the same plan continues.
        def at_mark(mark: float = mark) -> bool:
            return mark < minutes * 60 and job.elapsed_seconds >= mark

        result = trainer.run(job, data, manager, on_log=logs.append, should_stop=at_mark)
        curve.append([round(job.elapsed_seconds / 60, 3), result.val_bpc, trainer.step])
        if job.done:
            break
    return {"curve": curve, "steps": trainer.step, "chars_per_s": steady_rate([e.chars_per_s for e in logs]),
            "trained_s": job.elapsed_seconds, "settings": overrides,
            "matmul": settings.cpu_matmul_precision, "fast_gru": bool(trainer.model.fast_gru),
            "strategy": distribute.describe(strategy)}


def child_base(workdir: Path, minutes: float, cpus: list[int]) -> dict:
    pin(cpus)
    import keras
    import tensorflow as tf

    from tweetgen.train import bits_per_char, masked_loss_sum
    from tweetgen.vocab import EOS

    settings = bench_settings(workdir, "base")
    vocab, train_lines, _, val_seqs = shared_data(settings)
    keras.utils.set_random_seed(settings.random_seed)
    started = time.perf_counter()
    ids = np.concatenate([np.concatenate([[EOS], vocab.encode(line)[0]]) for line in train_lines] + [[EOS]])
    starts = np.arange(0, len(ids) - WINDOW - 1, STRIDE)
    windows = ids[starts[:, None] + np.arange(WINDOW + 1)]
    x = np.eye(vocab.size, dtype=np.float32)[windows[:, :-1]]
    y = windows[:, 1:].astype(np.int32)
    model = baseline_model(vocab.size, settings.gru_sizes)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate,
                                                  global_clipnorm=settings.clip_norm),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32)], reduce_retracing=True)
    def eval_batch(batch):
        return masked_loss_sum(batch[:, 1:], model(tf.one_hot(batch[:, :-1], vocab.size), training=False))

    class Clock(keras.callbacks.Callback):
        """Counts training time (scoring excluded), scores each minute, stops at the budget."""

        def __init__(self) -> None:
            super().__init__()
            self.batches, self.rates, self.curve = 0, [], []
            self.paused, self.mark, self.next_minute = 0.0, time.perf_counter(), 1

        def trained(self) -> float:
            return time.perf_counter() - started - self.paused

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.batches += 1
            if self.batches % LOG_WINDOW == 0:
                now = time.perf_counter()
                self.rates.append(LOG_WINDOW * BATCH * WINDOW / (now - self.mark))
                self.mark = now
            trained = self.trained()
            if trained >= min(self.next_minute, minutes) * 60:
                t = time.perf_counter()
                self.curve.append([round(trained / 60, 3), bits_per_char(model, val_seqs, eval_fn=eval_batch),
                                   self.batches])
                self.paused += time.perf_counter() - t
                self.mark += time.perf_counter() - t
                self.next_minute += 1
                if trained >= minutes * 60:
                    self.model.stop_training = True

    clock = Clock()
    model.fit(x, y, batch_size=BATCH, epochs=10**6, shuffle=True, verbose=0, callbacks=[clock])
    return {"curve": clock.curve, "steps": clock.batches, "chars_per_s": steady_rate(clock.rates),
            "trained_s": clock.trained()}


# ---------------------------------------------------------------- the parent


def start_child(side: str, workdir: Path, args: argparse.Namespace, cpus: list[int]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench.race", "--child", side, "--workdir", str(workdir),
           "--minutes", str(args.minutes), "--cpus", ",".join(map(str, cpus))]
    for item in args.against or []:
        cmd += ["--against", item]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if side == "base":
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # the lecture's way: TensorFlow's defaults
    log = open(workdir / f"{side}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)


def finish(side: str, proc: subprocess.Popen, workdir: Path) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        tail = (workdir / f"{side}.log").read_text()[-3000:]
        raise SystemExit(f"side {side} failed (exit {proc.returncode}); log {workdir / side}.log:\n{tail}")
    return json.loads(out.strip().splitlines()[-1])


def race(args: argparse.Namespace, workdir: Path) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < args.cores or len(cores) < 2:
        raise SystemExit(f"this process may use cores {cores}: --cores {args.cores} needs "
                         f"{max(2, args.cores)}")
    other = "ours-b" if args.against or args.scaling else "base"
    load = [os.getloadavg()[0]]
    if args.scaling:  # ours on both cores, then ours on one core
        results = {"ours": finish("ours", start_child("ours", workdir, args, cores[:2]), workdir),
                   other: finish(other, start_child(other, workdir, args, cores[:1]), workdir)}
    elif args.cores == 1:  # side by side, one core each
        procs = {"ours": start_child("ours", workdir, args, cores[:1]),
                 other: start_child(other, workdir, args, cores[1:2])}
        results = {side: finish(side, proc, workdir) for side, proc in procs.items()}
    else:  # both cores each, one side after the other
        results = {}
        for side in ("ours", other):
            results[side] = finish(side, start_child(side, workdir, args, cores[:args.cores]), workdir)
    load.append(os.getloadavg()[0])
    return {"minutes": args.minutes, "cores": 2 if args.scaling else args.cores, "scaling": args.scaling,
            "other": other, "against": args.against or [],
            "load_avg_1min": [round(x, 2) for x in load], **results}


def summary(r: dict) -> dict:
    out = {}
    for side in ("ours", r["other"]):
        bpcs = [point[1] for point in r[side]["curve"]]
        out[side] = {"final": bpcs[-1], "best": min(bpcs)}
    ours, other = out["ours"], out[r["other"]]
    out["final_difference"] = ours["final"] - other["final"]
    out["best_difference"] = ours["best"] - other["best"]
    speeds = r["ours"]["chars_per_s"], r[r["other"]]["chars_per_s"]
    out["speed_ratio"] = speeds[0] / speeds[1] if all(speeds) else None
    return out


def print_report(r: dict, s: dict) -> None:
    other = r["other"]
    name = "ours-b (" + ", ".join(r["against"]) + ")" if r["against"] else "baseline"
    layout = "one core each, side by side" if r["cores"] == 1 else f"{r['cores']} cores each, in turn"
    if r.get("scaling"):
        name, layout = "ours, one core", "ours on 2 cores, then on one core"
    print(f"race: {r['minutes']:g} min of training per side, {layout}; load average "
          f"{r['load_avg_1min'][0]:.1f} -> {r['load_avg_1min'][1]:.1f}")
    print(f"validation bits/char        ours    {name}")
    curves = r["ours"]["curve"], r[other]["curve"]
    for i in range(max(len(c) for c in curves)):
        cells = [f"{c[i][1]:.4f} ({c[i][0]:.1f} min)" if i < len(c) else "-" for c in curves]
        print(f"  minute {i + 1:<3}               {cells[0]}   {cells[1]}")
    print(f"  final                     {s['ours']['final']:.4f}            {s[other]['final']:.4f}"
          f"   difference {s['final_difference']:+.4f}")
    print(f"  best                      {s['ours']['best']:.4f}            {s[other]['best']:.4f}"
          f"   difference {s['best_difference']:+.4f}")
    print(f"steps                       {r['ours']['steps']:<16,} {r[other]['steps']:,}")
    speed = [f"{r[x]['chars_per_s']:,.0f}" if r[x]["chars_per_s"] else "-" for x in ("ours", other)]
    ratio = f"   ratio {s['speed_ratio']:.2f}x" if s["speed_ratio"] else ""
    print(f"useful chars/s              {speed[0]:<16} {speed[1]}{ratio}")
    final_vs_best = s["ours"]["final"] - s["ours"]["best"]
    if r.get("scaling"):
        print(f"strategies: two cores {r['ours'].get('strategy')}, one core {r[other].get('strategy')}")
        print(f"ours final - ours best: {final_vs_best:+.4f} (target <= 0); "
              f"two cores - one core at the end: {s['final_difference']:+.4f} (target <= -0.03)")
        return
    print(f"ours final - ours best: {final_vs_best:+.4f} (target <= 0); "
          f"ours - baseline at the end: {s['final_difference']:+.4f} (target <= -0.10)")


def plot(r: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'tweetgen[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {"ours": "tweetgen", "base": "lecture-style baseline",
              "ours-b": "tweetgen, " + ", ".join(r["against"])}
    if r.get("scaling"):
        labels.update(ours="tweetgen, 2 cores", **{"ours-b": "tweetgen, 1 core"})
    for side in ("ours", r["other"]):
        curve = r[side]["curve"]
        ax.plot([p[0] for p in curve], [p[1] for p in curve], marker="o", label=labels[side])
    ax.set_xlabel("training time, minutes")
    ax.set_ylabel("validation bits/char")
    ax.set_title(f"{r['minutes']:g} min, {r['cores']} core(s) per side")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parse_against(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--against takes KEY=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per side (default 10)")
    parser.add_argument("--cores", type=int, choices=(1, 2), default=1,
                        help="1: one core each, side by side (default); 2: both cores each, in turn")
    parser.add_argument("--plot", type=Path, help="write both validation curves to this PNG")
    parser.add_argument("--against", action="append", metavar="KEY=VALUE",
                        help="race ours against ours with this setting changed (repeatable)")
    parser.add_argument("--scaling", action="store_true",
                        help="ours on two cores against ours on one core, in turn")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", choices=("ours", "ours-b", "base"), help=argparse.SUPPRESS)
    parser.add_argument("--cpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
        cpus = [int(c) for c in args.cpus.split(",")]
        if args.child == "base":
            result = child_base(args.workdir, args.minutes, cpus)
        else:
            overrides = parse_against(args.against) if args.child == "ours-b" else {}
            result = child_ours(args.workdir, args.child, args.minutes, cpus, overrides)
        print(json.dumps(result))
        return 0

    from tweetgen import corpus

    parse_against(args.against)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tweetgen-race-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for home in ("ours", "ours-b", "base"):  # from scratch, never from a previous race
        shutil.rmtree(workdir / home, ignore_errors=True)
    corpus_file = workdir / "corpus.txt"
    if not corpus_file.exists():
        corpus.import_fortunes(corpus.default_fortune_file(), corpus_file, 140)
    results = race(args, workdir)
    results["summary"] = summary(results)
    (workdir / "race.json").write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
    if args.json:
        print(json.dumps(results))
    else:
        print_report(results, results["summary"])
        print(f"results: {workdir / 'race.json'}" + (f"; plot: {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
