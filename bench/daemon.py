"""Daemon benchmark (issue 3): what a fine-tune costs, how fast a big append is ingested, and
what the daemon costs when it runs and when it idles. Everything is measured in this run.

    .venv/bin/python -m bench.daemon [--runs 3] [--json]      (or: python bench/daemon.py)

The model is the default one (`Settings()`: embedding 64, GRU 128 then 256, batch 64), on
synthetic tweet-like lines made of the words of the FreeBSD fortune file (seeded, 20 to 140
characters). Each measurement runs in its own child process, so TensorFlow's start-up and peak
RSS (`ru_maxrss`, TensorFlow's ~500 MB included) do not mix between them.

1. Fine-tune job cost for 100 new lines on corpora of 10k and 100k lines: a warm process (the
   daemon's situation: TensorFlow loaded, a checkpoint on disk, the trainer kept from the last
   job) appends 100 lines and runs the real job (`finetune.run_finetune`: scan, replay sample,
   validation before and after, the steps, checkpoint, promotion, ingest record). The first job
   in each process is a warm-up; the figure is the median of `--runs` more. Target: the same
   within noise (cost grows with the new lines, not with the corpus). The validation subset
   grows with the corpus up to `max_validation_lines` (default 1000), and 5% of 10k lines is
   only about 500: with the default the 10k job would validate on half as many lines as the
   100k one (about 0.8 s less here). So this comparison sets `max_validation_lines` to 500,
   which both corpora reach, and the table shows the counts.
2. Ingest of a 1-million-line append (about 60 MB) onto the 10k corpus: the streaming scan
   (`finetune.scan_range`: read, clean, count, look up the vocabulary) in lines/s, then the whole
   fine-tune job on that append (its step budget capped at 20 steps, so the figure is the
   ingest, not the training), with the peak RSS of its process, compared with the same job on
   a 100k-line append. Target: the peak does not grow with the size of the append.
3. The daemon itself (`run_daemon.py`, default intervals) on the 100k corpus with a checkpoint:
   start-up time to the scheduler and to the end of the first scheduled job (the start-up job:
   resume, then the first tweets), CPU used while it idles between jobs (`/proc/PID/stat`
   utime+stime over `--idle-seconds`, heartbeats included; target ~0), and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/daemon.py`
    sys.path[0] = str(REPO)

NEW_LINES = 100
FINETUNE_VALIDATION = 500  # max_validation_lines for the fine-tune comparison
ROLES = ("prepare", "finetune", "ingest")


# ---------------------------------------------------------------- helpers


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fortune_words() -> list[str]:
    from tweetgen import corpus

    text = corpus.default_fortune_file().read_bytes().decode("utf-8", "replace")
    entries, _ = corpus.fortune_entries(text)
    return [w for entry in entries for w in entry.split()]


def synthetic_lines(count: int, seed: int, words: list[str]):
    """Tweet-like lines of 20 to 140 characters, each ending with its number (so all differ)."""
    rng = random.Random(seed)
    for i in range(count):
        target = rng.randint(20, 140)
        line = ""
        while len(line) < target:
            line += rng.choice(words) + " "
        yield f"{line[: target - 8].strip()} {seed % 1000}-{i}"


def write_lines(path: Path, count: int, seed: int, words: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        batch = []
        for line in synthetic_lines(count, seed, words):
            batch.append(line)
            if len(batch) == 10_000:
                handle.write("\n".join(batch) + "\n")
                batch = []
        if batch:
            handle.write("\n".join(batch) + "\n")


def settings_for(home: Path, **overrides):
    from tweetgen.config import Settings

    return Settings(home=home, **overrides)


def run_child(role: str, home: Path, args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "bench.daemon", "--child", role, "--child-home", str(home),
           "--runs", str(args.runs), *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with open(home / f"{role}.log", "a") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"child {role} failed ({proc.returncode}); see {home / (role + '.log')}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- children


def child_prepare(home: Path, lines: int) -> dict:
    """A corpus of `lines` lines and a checkpoint trained 1 step on it, its ingest recorded."""
    from tweetgen import engine, finetune
    from tweetgen.store import Store

    settings = settings_for(home)
    settings.corpus_file.parent.mkdir(parents=True, exist_ok=True)
    write_lines(settings.corpus_file, lines, seed=lines, words=fortune_words())
    with Store(settings.db_file) as store:
        outcome = engine.train(settings, steps=1, store=store, kind="initial")
        manager = engine.checkpoint_manager(settings)
        manager.promote(outcome.result.checkpoint)
        engine.sync_checkpoint_flags(store, manager)
        finetune.reconcile_ingests(settings, store)
    return {"lines": lines, "bytes": settings.corpus_file.stat().st_size}


def child_finetune(home: Path, runs: int) -> dict:
    from tweetgen import corpus, engine, finetune
    from tweetgen.checkpoints import read_meta
    from tweetgen.store import Store

    # Both corpora validate on the same number of lines (see the docstring).
    settings = settings_for(home, max_validation_lines=FINETUNE_VALIDATION)
    words = fortune_words()
    seconds, steps = [], []
    trainers = engine.TrainerCache()  # as in the daemon: the trainer stays from job to job
    with Store(settings.db_file) as store:
        for run in range(runs + 1):
            corpus.append_lines(settings.corpus_file, list(synthetic_lines(NEW_LINES, 7000 + run, words)))
            started = time.perf_counter()
            result = finetune.run_finetune(settings, store, trainers=trainers)
            elapsed = time.perf_counter() - started
            assert result is not None and result["status"] == "completed", result
            if run > 0:  # the first one is the warm-up
                seconds.append(elapsed)
                steps.append(store.get_run(result["run"])["steps"])
    latest = engine.checkpoint_manager(settings).paths()[-1]
    return {"seconds": seconds, "median_s": statistics.median(seconds), "steps": steps,
            "validation_lines": len(read_meta(latest)["validation_lines"]), "peak_rss_mb": peak_rss_mb()}


def child_ingest(home: Path, append: int) -> dict:
    from tweetgen import corpus, engine, finetune
    from tweetgen.store import Store

    settings = settings_for(home, finetune_max_steps=20)
    start = corpus.complete_end(settings.corpus_file)
    write_lines(settings.corpus_file, append, seed=append + 1, words=fortune_words())
    end = corpus.complete_end(settings.corpus_file)
    trainer, _ = engine.latest_trainer(settings, engine.checkpoint_manager(settings))
    scan_started = time.perf_counter()
    scan = finetune.scan_range(settings, trainer, start, end)
    scan_s = time.perf_counter() - scan_started
    del trainer
    before_rss = rss_mb()
    with Store(settings.db_file) as store:
        job_started = time.perf_counter()
        result = finetune.run_finetune(settings, store)
        job_s = time.perf_counter() - job_started
        ingest = store.list_ingests(1)[0]
    assert result["status"] == "completed" and ingest["end_offset"] == end, (result, ingest)
    return {"append": append, "bytes": end - start, "scan_s": scan_s, "scan_lines": scan.lines,
            "scan_lines_per_s": scan.lines / scan_s, "job_s": job_s,
            "job_lines_per_s": (ingest["lines"] + ingest["rejected"]) / job_s,
            "rss_before_job_mb": before_rss, "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------- the daemon


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_daemon(home: Path, idle_seconds: float) -> dict:
    import sqlite3

    from tweetgen.store import utc_now

    log = open(home / "daemon.log", "ab")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "run_daemon.py", "--home", str(home)], cwd=REPO,
                            stdout=log, stderr=log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    marker = f"daemon started (pid {proc.pid})"
    scheduler_s = startup_s = None
    db = home / "db" / "tweetgen.db"
    try:
        while startup_s is None and proc.poll() is None:
            if scheduler_s is None and marker in (home / "daemon.log").read_text(errors="replace"):
                scheduler_s = time.perf_counter() - started
            with sqlite3.connect(db) as conn:
                done = conn.execute("select count(*) from job_events where job_id = 'startup' "
                                    "and event = 'executed'").fetchone()[0]
            if done:
                startup_s = time.perf_counter() - started
            time.sleep(0.05)
        time.sleep(1.0)  # let the start-up job's threads settle
        since = utc_now()
        cpu_before, idle_started = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(idle_seconds)
        idle_cpu = cpu_seconds(proc.pid) - cpu_before
        idle_wall = time.perf_counter() - idle_started
        with sqlite3.connect(db) as conn:
            jobs = conn.execute("select job_id, count(*) from job_events where created >= ? "
                                "group by job_id", [since]).fetchall()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        log.close()
    return {"scheduler_s": scheduler_s, "startup_job_s": startup_s, "idle_s": idle_wall,
            "idle_cpu_s": idle_cpu, "idle_cpu_percent": 100 * idle_cpu / idle_wall,
            "idle_jobs": dict(jobs), "peak_rss_mb": usage.ru_maxrss / 1024.0,
            "exit_code": os.waitstatus_to_exitcode(status)}


# ---------------------------------------------------------------- the run


def run_all(args: argparse.Namespace, workdir: Path) -> dict:
    import shutil

    out: dict = {"runs": args.runs}
    homes = {}
    for lines in (10_000, 100_000):
        home = workdir / f"corpus{lines // 1000}k"
        home.mkdir()
        run_child("prepare", home, args, "--lines", str(lines))
        homes[lines] = home
    # The ingest children get copies of the 10k home, so the fine-tune homes stay as prepared.
    for append in (100_000, 1_000_000):
        copy = workdir / f"append{append // 1000}k"
        shutil.copytree(homes[10_000], copy)
        fix_paths(copy, homes[10_000])
        out[f"ingest_{append}"] = run_child("ingest", copy, args, "--append", str(append))
    for lines, home in homes.items():
        out[f"finetune_{lines}"] = run_child("finetune", home, args)
    out["finetune_ratio"] = out["finetune_100000"]["median_s"] / out["finetune_10000"]["median_s"]
    out["ingest_rss_ratio"] = (out["ingest_1000000"]["peak_rss_mb"]
                               / out["ingest_100000"]["peak_rss_mb"])
    out["daemon"] = measure_daemon(homes[100_000], args.idle_seconds)
    return out


def fix_paths(copy: Path, original: Path) -> None:
    """A copied home's database names the original's files: point it at the copy's."""
    import sqlite3

    with sqlite3.connect(copy / "db" / "tweetgen.db") as conn:
        for table, column in (("ingests", "file"), ("checkpoints", "path")):
            conn.execute(f"update {table} set {column} = replace({column}, ?, ?)",
                         [str(original.absolute()), str(copy.absolute())])


def table(r: dict) -> str:
    f10, f100 = r["finetune_10000"], r["finetune_100000"]
    i100, i1m = r["ingest_100000"], r["ingest_1000000"]
    d = r["daemon"]
    rows = [
        ("fine-tune job, 100 new lines, 10k-line corpus", f"{f10['median_s']:.2f} s",
         f"median of {len(f10['seconds'])}: " + ", ".join(f"{s:.2f}" for s in f10["seconds"])
         + f"; {f10['steps'][0]} steps, {f10['validation_lines']} validation lines"),
        ("fine-tune job, 100 new lines, 100k-line corpus", f"{f100['median_s']:.2f} s",
         f"median of {len(f100['seconds'])}: " + ", ".join(f"{s:.2f}" for s in f100["seconds"])
         + f"; {f100['steps'][0]} steps, {f100['validation_lines']} validation lines"),
        ("  ratio 100k / 10k (target ~1.0)", f"{r['finetune_ratio']:.3f}", ""),
        ("ingest scan, 1M-line append", f"{i1m['scan_lines_per_s']:,.0f} lines/s",
         f"{i1m['scan_lines']:,} lines, {i1m['bytes'] / 2**20:.0f} MB in {i1m['scan_s']:.1f} s"),
        ("whole fine-tune job on the 1M-line append", f"{i1m['job_lines_per_s']:,.0f} lines/s",
         f"{i1m['job_s']:.1f} s, 20 steps"),
        ("  peak RSS of that job's process", f"{i1m['peak_rss_mb']:.0f} MB",
         f"{i1m['rss_before_job_mb']:.0f} MB before the job"),
        ("  same job on a 100k-line append", f"{i100['peak_rss_mb']:.0f} MB",
         f"{i100['job_s']:.1f} s; scan {i100['scan_lines_per_s']:,.0f} lines/s"),
        ("  peak RSS ratio 1M / 100k (target ~1.0)", f"{r['ingest_rss_ratio']:.3f}", ""),
        ("daemon start-up to the scheduler", f"{d['scheduler_s']:.2f} s", "100k corpus, checkpoint on disk"),
        ("daemon start-up to the end of the first job", f"{d['startup_job_s']:.2f} s",
         "start-up job: resume, first tweets"),
        ("daemon idle CPU between jobs", f"{d['idle_cpu_percent']:.2f} % of a core",
         f"{d['idle_cpu_s']:.2f} s CPU in {d['idle_s']:.0f} s; jobs then: {d['idle_jobs'] or 'none'}"),
        ("daemon peak RSS", f"{d['peak_rss_mb']:.0f} MB", f"exit code {d['exit_code']} after SIGTERM"),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'measure':<{width}}  {'value':>20}  notes"]
    lines += [f"{name:<{width}}  {value:>20}  {note}" for name, value, note in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="measured fine-tunes per corpus size")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temp folder)")
    parser.add_argument("--child", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--child-home", help=argparse.SUPPRESS)
    parser.add_argument("--lines", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--append", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        home = Path(args.child_home)
        result = {"prepare": lambda: child_prepare(home, args.lines),
                  "finetune": lambda: child_finetune(home, args.runs),
                  "ingest": lambda: child_ingest(home, args.append)}[args.child]()
        print(json.dumps(result))
        return 0
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=False)
        result = run_all(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
            result = run_all(args, Path(tmp))
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
