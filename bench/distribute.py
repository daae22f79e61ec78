"""tf.distribute benchmark: training characters/s on 1 and 2 replicas, measured in the same run.

    .venv/bin/python -m bench.distribute [--steps 100] [--rounds 1] [--json]  (or python bench/distribute.py)
    .venv/bin/python -m bench.distribute --configs one --batch-size 1024 --gru-sizes 512,1024 \\
        --precision mixed_bfloat16                                              (the GPU check's form)

Each configuration trains in child processes of its own, one after the other, through the real
code path (`tweetgen.engine.train`: Trainer, Batcher, masked loss, Adam, clipping, the strategy),
from scratch on the default corpus (the FreeBSD fortunes, as `tweetgen train` writes it) with
the default model (embedding 64, GRU 128 then 256) and a global batch of 64 lines:

- `one`: strategy `auto`, one device: the single-device step (tweetgen.train);
- `mirrored-1`: strategy `mirrored` with one replica (the CPU, or the one GPU): the replicated
  step's own cost (the shard, two all-reduces, the cross-replica apply) with nothing to share;
- `mirrored-2`: strategy `mirrored` on 2 logical CPU devices (the same 2 cores: each replica
  gets half the batch, both run at once on TensorFlow's one thread pool);
- `workers-2`: strategy `multi-worker`, 2 worker processes on 127.0.0.1 (one replica each, all
  reduces over gRPC on loopback); the chief's figures are reported.

Characters/s = non-padding targets trained per second, whole global batch: the median over
windows of `--log-every` steps (the trainer's own StepLog.chars_per_s), the first window (tracing)
left out. The ratio is each configuration's figure over `one`'s in the same round (the median
over rounds; every other round runs the configurations in reverse order). The machine may be
shared: the load average before and after each configuration is in the report. Logical CPU
devices and local workers share the same cores, so the ratio is not a speed-up from more
hardware: below 1 it is the strategy's cost; above 1, cores that one device left idle (the GRU
recurrence is a chain of small matrix multiplies) which replicas running side by side fill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/distribute.py`: import from the repository root
    sys.path[0] = str(REPO)

CONFIGS = {
    "one": {"strategy": "auto"},
    "mirrored-1": {"strategy": "mirrored", "cpu_replicas": 1},
    "mirrored-2": {"strategy": "mirrored", "cpu_replicas": 2},
    "workers-2": {"strategy": "multi-worker"},
}
LABELS = {"one": "one device", "mirrored-1": "mirrored, 1 replica",
          "mirrored-2": "mirrored, 2 logical CPUs", "workers-2": "multi-worker, 2 processes"}


def settings_for(args: argparse.Namespace, config: str, home: Path, **extra):
    from tweetgen.config import Settings

    sizes = tuple(int(x) for x in args.gru_sizes.split(","))
    return Settings(home=home, corpus_path=args.workdir / "corpus.txt", checkpoint_every=10**9,
                    log_every=args.log_every, batch_size=args.batch_size, gru_sizes=sizes,
                    precision=args.precision, **CONFIGS[config], **extra)


# ---------------------------------------------------------------- a child: one training run


def child(args: argparse.Namespace) -> dict:
    from tweetgen import distribute

    extra = {}
    if args.child == "workers-2":
        extra = {"workers": tuple(args.workers.split(",")), "worker_index": args.worker_index}
    home = args.workdir / f"{args.child}-{args.worker_index}"
    shutil.rmtree(home, ignore_errors=True)
    settings = settings_for(args, args.child, home, **extra)
    strategy = distribute.strategy_for(settings)  # first: before TensorFlow starts its devices

    from tweetgen import engine

    windows: list[float] = []
    started = time.perf_counter()
    outcome = engine.train(settings, steps=args.steps, on_log=lambda entry: windows.append(entry.chars_per_s))
    return {
        "config": args.child, "strategy": distribute.describe(strategy),
        "replicas": strategy.num_replicas_in_sync, "chief": distribute.is_chief(strategy),
        "chars_per_s": statistics.median(windows[1:] or windows), "windows": [round(w) for w in windows],
        "steps": outcome.result.steps, "train_loss": outcome.result.train_loss,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
    }


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_config(config: str, args: argparse.Namespace) -> dict:
    """The configuration's child process(es); the chief's result."""
    base = [sys.executable, "-m", "bench.distribute", "--child", config, "--workdir", str(args.workdir),
            "--steps", str(args.steps), "--log-every", str(args.log_every), "--batch-size",
            str(args.batch_size), "--gru-sizes", args.gru_sizes, "--precision", args.precision]
    if config == "workers-2":
        workers = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
        commands = [base + ["--workers", workers, "--worker-index", str(i)] for i in range(2)]
    else:
        commands = [base]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWEETGEN_", "TF_CONFIG"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2")
    load_before = os.getloadavg()[0]
    logs = [open(args.workdir / f"{config}-{i}.log", "w") for i in range(len(commands))]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)
             for c, log in zip(commands, logs, strict=True)]
    deadline = time.monotonic() + args.timeout
    try:
        outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for log in logs:
            log.close()
    for i, p in enumerate(procs):
        if p.returncode != 0:
            tail = (args.workdir / f"{config}-{i}.log").read_text()[-3000:]
            raise SystemExit(f"{config} (process {i}) failed with exit {p.returncode}:\n{tail}")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    result = next(r for r in results if r["chief"])
    result["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if not args.json:
        before, after = result["load_avg_1min"]
        print(f"  {config}: {result['seconds']:.0f} s of training, load average {before:.1f} -> {after:.1f}",
              file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------- the parent


def run_all(args: argparse.Namespace) -> dict:
    from tweetgen import corpus

    corpus.ensure_corpus(args.workdir / "corpus.txt")
    rounds = []
    for number in range(args.rounds):  # every other round in reverse order: drifts in load cancel
        order = args.configs if number % 2 == 0 else list(reversed(args.configs))
        rounds.append({config: run_config(config, args) for config in order})
    summary = {}
    for config in args.configs:
        runs = [r[config] for r in rounds]
        entry = {"label": LABELS[config], "replicas": runs[0]["replicas"], "strategy": runs[0]["strategy"],
                 "chars_per_s": round(statistics.median(r["chars_per_s"] for r in runs)),
                 "per_round": [round(r["chars_per_s"]) for r in runs],
                 "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        if "one" in args.configs:
            entry["ratios"] = [round(r[config]["chars_per_s"] / r["one"]["chars_per_s"], 3) for r in rounds]
            entry["ratio_vs_one"] = statistics.median(entry["ratios"])
        summary[config] = entry
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "steps": args.steps, "log_every": args.log_every, "batch_size": args.batch_size,
        "gru_sizes": args.gru_sizes, "precision": args.precision, "rounds": rounds, "summary": summary,
    }


def print_table(report: dict) -> None:
    print(f"tf.distribute training benchmark, {report['date']}, {report['cpus']} CPUs; "
          f"GRU {report['gru_sizes']}, global batch {report['batch_size']}, {report['precision']}; "
          f"{report['steps']} steps a run, median of {report['log_every']}-step windows (the first left "
          f"out), {len(report['rounds'])} round(s)")
    print(f"{'configuration':<27} {'replicas':>8} {'chars/s':>8} {'vs one':>7} {'peak RSS':>9}   "
          "each round: chars/s (vs one device)")
    for entry in report["summary"].values():
        ratio = f"{entry['ratio_vs_one']:.2f}x" if "ratio_vs_one" in entry else "-"
        ratios = entry.get("ratios")
        rounds = ", ".join(f"{c:,}" + (f" ({ratios[i]:.2f}x)" if ratios else "")
                           for i, c in enumerate(entry["per_round"]))
        print(f"{entry['label']:<27} {entry['replicas']:>8} {entry['chars_per_s']:>8,} {ratio:>7} "
              f"{entry['peak_rss_mb']:>6} MB   {rounds}")
    print("chars/s: the median over rounds; vs one: the median of each round's ratio to one device")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (default 100)")
    parser.add_argument("--log-every", type=int, default=20, help="steps per measured window (default 20)")
    parser.add_argument("--rounds", type=int, default=1, help="times every configuration runs (default 1)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--gru-sizes", default="128,256", help="GRU layer sizes (default 128,256)")
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a configuration may take")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--workers", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    temporary = args.workdir is None
    args.workdir = Path(tempfile.mkdtemp(prefix="tweetgen-bench-distribute-")) if temporary else args.workdir
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = run_all(args)
    finally:
        if temporary:
            shutil.rmtree(args.workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
