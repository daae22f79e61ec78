"""Soak benchmark (issue 14): weeks of daemon life in an hour. Does anything grow with the jobs?

    .venv/bin/python -m bench.soak [--jobs 1000] [--quick] [--plot soak.png] [--json]

The real daemon (`run_daemon.py` with `--http` on 127.0.0.1) runs as a subprocess with a tiny
model (GRU 16+16) on a small synthetic corpus and an accelerated schedule: a fine-tune every
20 s fed by a writer that appends lines, a generate job every 3 s, idle training between jobs
where this tweetgen has it (settings `idle_*`), a maintenance job every 72 s
(retention and the WAL checkpoint, with retention set to minutes), while clients read the HTTP
API (tweets, status, losses, metrics), ask it for tweets and review tweets (some rejected, so
retention has something to delete). It stops after `--jobs` executed jobs (default 1000, about
45 minutes here; `--quick`: 110, about 5 minutes).

Every 2 s it samples the daemon from /proc/PID (RSS, open file descriptors, threads), the
database and WAL sizes and the checkpoint folder size; each job's duration comes from the
`job_events` table (read incrementally, so retention does not hide any). After a warm-up (the
first 20% of the jobs: TensorFlow's first traces, the first checkpoints), it prints for each
figure its value at the start and at the end (medians of 5 samples) and its least-squares slope
per 100 jobs, and checks the targets: RSS growth < 1 MB per 100 jobs, file descriptors and
threads constant, WAL below a fixed bound (8 MB: SQLite's automatic checkpoint keeps it near
4 MB), job durations without an upward trend (the median of each job's last third of runs at
most 25% + 5 ms above the median of its first third; the slope is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/soak.py`
    sys.path[0] = str(REPO)

SAMPLE_SECONDS = 2.0
WAL_BOUND_MB = 8.0
RSS_TARGET_MB = 1.0  # per 100 jobs
# No upward trend in a job's duration: the median of its last third of runs at most 25% (plus
# 5 ms, for jobs of a few ms) above the median of its first third; jobs run fewer than 10 times
# after the warm-up are shown but not judged.
DURATION_GROWTH = 0.25
DURATION_SLACK_S = 0.005
MIN_TREND_JOBS = 10
WORDS = ("the cat dog sat ran on a mat log fast slow big red sun moon sea wind rain tree bird "
         "fish star cold warm old new blue green why how when what").split()

CONFIG = """
gru_sizes = [16, 16]
embedding_dim = 8
batch_size = 8
initial_steps = 40
checkpoint_every = 40
keep_checkpoints = 3
log_every = 5
max_validation_lines = 10
finetune_interval_minutes = 0.3333
ingest_check_seconds = 5
min_new_lines = 1000000
finetune_min_steps = 5
finetune_max_steps = 20
generate_interval_minutes = 0.05
samples_per_seed = 1
temperatures = [1.0]
seeds = ["the", ""]
heartbeat_seconds = 2
http_address = "127.0.0.1:{port}"
maintenance_interval_hours = 0.02
losses_keep_runs = 5
losses_thin_every_steps = 20
job_events_keep_days = 0.007
rejected_keep_days = 0.003
"""


def lines(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Idle training (between jobs), where this tweetgen has it: short runs, checked every 10 s.
IDLE = {"idle_training": "true", "idle_check_seconds": "10", "idle_cycle_steps": "60"}


def make_home(root: Path, port: int) -> Path:
    from tweetgen.config import SETTING_NAMES

    home = root / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "corpus.txt").write_text("\n".join(lines(random.Random(1), 300)) + "\n")
    idle = "".join(f"{k} = {v}\n" for k, v in IDLE.items() if k in SETTING_NAMES)
    (home / "tweetgen.toml").write_text(CONFIG.format(port=port) + idle)
    return home


# ---------------------------------------------------------------- what the daemon looks like


def proc_sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 2**20
    return path.stat().st_size / 2**20 if path.exists() else 0.0


class JobLog:
    """Executed jobs with their durations, read incrementally from `job_events`."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.last_id = 0
        self.jobs: list[dict] = []  # {n, job, seconds, t}
        self.errors: list[str] = []

    def poll(self) -> None:
        if not self.db.exists():
            return
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT id, job_id, event, error, duration_s FROM job_events "
                                "WHERE id > ? ORDER BY id", [self.last_id]).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return
        finally:
            conn.close()
        for row_id, job, event, error, seconds in rows:
            self.last_id = row_id
            if event == "executed":
                self.jobs.append({"n": len(self.jobs) + 1, "job": job, "seconds": seconds,
                                  "t": time.monotonic()})
            else:
                self.errors.append(f"{job} {event}: {error}")


# ---------------------------------------------------------------- the load


class Load:
    """The writer and the HTTP clients, each a thread, until `stop` is set."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.base = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.counts = {"appended": 0, "reads": 0, "generated": 0, "reviewed": 0, "http_errors": 0}
        self.errors: list[tuple[float, str]] = []  # (monotonic time, what)
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self.writer, self.reader, self.generator, self.reviewer)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def every(self, seconds: float, action) -> None:
        while not self.stop.wait(seconds):
            try:
                action()
            except (OSError, ValueError):  # recorded by http(); the next turn tries again
                pass

    def http(self, path: str, body: dict | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                raw = answer.read()
        except (OSError, ValueError) as exc:  # refused before the server is up, or an error answer
            detail = exc.read().decode(errors="replace")[:200] if hasattr(exc, "read") else str(exc)
            self.counts["http_errors"] += 1
            self.errors.append((time.monotonic(), f"{path.split('?')[0]}: {getattr(exc, 'code', '')} "
                                                  f"{detail}"))
            raise
        return json.loads(raw) if answer.headers.get_content_type() == "application/json" else raw

    def writer(self) -> None:
        from tweetgen import corpus

        rng = random.Random(2)

        def append() -> None:
            self.counts["appended"] += corpus.append_lines(self.home / "data" / "corpus.txt",
                                                           lines(rng, 4)).added

        self.every(4.0, append)

    def reader(self) -> None:
        paths = ["/api/tweets?limit=20", "/api/status", "/api/losses?limit=200", "/metrics",
                 "/api/tweets?search=the&limit=5", "/api/runs", "/healthz"]
        turn = iter(range(10**9))

        def read() -> None:
            self.http(paths[next(turn) % len(paths)])
            self.counts["reads"] += 1

        self.every(0.5, read)

    def generator(self) -> None:
        def generate() -> None:
            self.http("/api/generate", {"seed": "the", "n": 2, "temperature": 1.0})
            self.counts["generated"] += 2

        self.every(7.0, generate)

    def reviewer(self) -> None:
        verdicts = iter(range(10**9))

        def review() -> None:
            for tweet in self.http("/api/tweets?status=new&limit=3")["tweets"]:
                status = "rejected" if next(verdicts) % 3 else "approved"
                self.http(f"/api/tweets/{tweet['id']}/review", {"status": status})
                self.counts["reviewed"] += 1

        self.every(5.0, review)


# ---------------------------------------------------------------- figures


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than 2 distinct xs)."""
    if len(set(xs)) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def summarise(samples: list[dict], jobs: list[dict], warmup: int) -> dict:
    steady = [s for s in samples if s["jobs"] >= warmup]
    out: dict = {"warmup_jobs": warmup, "samples": len(steady), "figures": {}, "durations": {}}
    if len(steady) < 2:
        return out
    xs = [s["jobs"] for s in steady]
    for key in ("rss_mb", "fds", "threads", "db_mb", "wal_mb", "ckpt_mb", "corpus_mb"):
        ys = [s[key] for s in steady]
        out["figures"][key] = {"start": statistics.median(ys[:5]), "end": statistics.median(ys[-5:]),
                               "min": min(ys), "max": max(ys), "per_100_jobs": 100 * slope(xs, ys)}
    for name in sorted({j["job"] for j in jobs}):
        mine = [j for j in jobs if j["job"] == name and j["n"] >= warmup and j["seconds"] is not None]
        if len(mine) < 2:
            continue
        ds = [j["seconds"] for j in mine]
        third = max(1, len(ds) // 3)  # medians of thirds: one slow job (a busy machine) moves neither
        out["durations"][name] = {"count": len(mine), "median": statistics.median(ds),
                                  "start": statistics.median(ds[:third]),
                                  "end": statistics.median(ds[-third:]),
                                  "per_100_jobs": 100 * slope([j["n"] for j in mine], ds)}
    return out


def verdicts(summary: dict) -> list[tuple[str, bool]]:
    f, checks = summary["figures"], []
    if not f:
        return [("enough samples after the warm-up", False)]
    checks.append((f"RSS growth {f['rss_mb']['per_100_jobs']:+.2f} MB/100 jobs < {RSS_TARGET_MB} MB",
                   f["rss_mb"]["per_100_jobs"] < RSS_TARGET_MB))
    for key in ("fds", "threads"):
        spread = f[key]["max"] - f[key]["min"]
        # A transient HTTP connection or a job's helper thread may show up in one sample; a leak
        # shows as a trend that keeps going.
        checks.append((f"{key} constant: {f[key]['min']:.0f}..{f[key]['max']:.0f}, trend "
                       f"{f[key]['per_100_jobs']:+.2f}/100 jobs", spread <= 4 and
                       abs(f[key]["per_100_jobs"]) < 1))
    checks.append((f"WAL max {f['wal_mb']['max']:.2f} MB < {WAL_BOUND_MB} MB",
                   f["wal_mb"]["max"] < WAL_BOUND_MB))
    for name, d in summary["durations"].items():
        if d["count"] < MIN_TREND_JOBS:
            continue
        limit = d["start"] * (1 + DURATION_GROWTH) + DURATION_SLACK_S
        checks.append((f"{name} duration: last third's median {d['end']:.3f} s <= first third's "
                       f"{d['start']:.3f} s + {DURATION_GROWTH:.0%} + {DURATION_SLACK_S * 1000:.0f} ms",
                       d["end"] <= limit))
    return checks


def report(summary: dict, load: dict, jobs: list[dict], errors: list[str], wall: float,
           http_errors: list[str]) -> str:
    out = [f"soak: {len(jobs)} jobs in {wall / 60:.1f} min, warm-up {summary['warmup_jobs']} jobs, "
           f"{summary['samples']} samples after it",
           "load: " + ", ".join(f"{k} {v}" for k, v in load.items()),
           f"HTTP errors after the warm-up: {len(http_errors)}"
           + (f" (last: {http_errors[-1]})" if http_errors else ""),
           f"job errors/misses: {len(errors)}" + (f" (last: {errors[-1]})" if errors else ""),
           "", f"{'figure':10} {'start':>9} {'end':>9} {'min':>9} {'max':>9} {'per 100 jobs':>13}"]
    for key, v in summary["figures"].items():
        out.append(f"{key:10} {v['start']:9.2f} {v['end']:9.2f} {v['min']:9.2f} {v['max']:9.2f} "
                   f"{v['per_100_jobs']:+13.3f}")
    out += ["", f"{'job (s)':10} {'count':>6} {'median':>8} {'start':>8} {'end':>8} {'per 100 jobs':>13}"]
    for name, d in summary["durations"].items():
        out.append(f"{name:10} {d['count']:6d} {d['median']:8.3f} {d['start']:8.3f} {d['end']:8.3f} "
                   f"{d['per_100_jobs']:+13.4f}")
    out.append("")
    out += [f"{'PASS' if ok else 'FAIL'}  {text}" for text, ok in verdicts(summary)]
    return "\n".join(out)


def plot(samples: list[dict], jobs: list[dict], warmup: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    xs = [s["jobs"] for s in samples]
    panels = [("rss_mb", "RSS (MB)"), ("fds", "open fds"), ("threads", "threads"),
              ("wal_mb", "WAL and db (MB)"), ("ckpt_mb", "checkpoint folder (MB)")]
    for ax, (key, title) in zip(axes.flat, panels):
        ax.plot(xs, [s[key] for s in samples], label=key)
        if key == "wal_mb":
            ax.plot(xs, [s["db_mb"] for s in samples], label="db_mb")
            ax.legend()
        ax.set_title(title)
    ax = axes.flat[5]
    for name in sorted({j["job"] for j in jobs}):
        mine = [j for j in jobs if j["job"] == name and j["seconds"] is not None]
        ax.scatter([j["n"] for j in mine], [j["seconds"] for j in mine], s=6, label=name)
    ax.set_title("job duration (s)")
    ax.legend()
    for ax in axes.flat:
        ax.axvline(warmup, color="grey", linestyle=":")
        ax.set_xlabel("jobs executed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------- the run


def soak(target_jobs: int, max_minutes: float, workdir: Path) -> tuple[list, JobLog, Load, float]:
    port = free_port()
    home = make_home(workdir, port)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    log = open(home / "daemon.log", "ab")
    daemon = subprocess.Popen([sys.executable, "run_daemon.py", "--home", str(home)], cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    job_log, load = JobLog(home / "db" / "tweetgen.db"), Load(home, port)
    samples: list[dict] = []
    started = time.monotonic()
    try:
        load.start()
        while len(job_log.jobs) < target_jobs:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with {daemon.returncode}; see {home}/daemon.log")
            if time.monotonic() - started > max_minutes * 60:
                print(f"soak: stopped after {max_minutes} minutes with {len(job_log.jobs)} jobs",
                      file=sys.stderr)
                break
            time.sleep(SAMPLE_SECONDS)
            job_log.poll()
            db = home / "db" / "tweetgen.db"
            samples.append({"t": time.monotonic() - started, "jobs": len(job_log.jobs),
                            **proc_sample(daemon.pid), "db_mb": size_mb(db),
                            "wal_mb": size_mb(Path(f"{db}-wal")),
                            "ckpt_mb": size_mb(home / "checkpoints"),
                            "corpus_mb": size_mb(home / "data" / "corpus.txt")})
            if len(samples) % 30 == 0:
                print(f"soak: {samples[-1]['t']:.0f} s, {len(job_log.jobs)} jobs, "
                      f"RSS {samples[-1]['rss_mb']:.0f} MB", file=sys.stderr)
    finally:
        load.finish()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(120)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
    return samples, job_log, load, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="executed jobs to run for")
    parser.add_argument("--quick", action="store_true", help="110 jobs (about 5 minutes)")
    parser.add_argument("--max-minutes", type=float, help="stop by then whatever the job count")
    parser.add_argument("--plot", help="write a PNG of the samples here (matplotlib)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--samples", help="write every sample to this CSV file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (printed)")
    args = parser.parse_args(argv)
    jobs = 110 if args.quick else args.jobs
    max_minutes = args.max_minutes or max(10.0, jobs * 0.12)
    workdir = Path(tempfile.mkdtemp(prefix="tweetgen-soak-"))
    samples, job_log, load, wall = soak(jobs, max_minutes, workdir)
    warmup = max(10, len(job_log.jobs) // 5)
    summary = summarise(samples, job_log.jobs, warmup)
    # Before the first checkpoint the server answers 503 to generate requests: that is expected.
    warm_at = next((j["t"] for j in job_log.jobs if j["n"] >= warmup), float("inf"))
    http_errors = [what for at, what in load.errors if at >= warm_at]
    if args.samples:
        with open(args.samples, "w") as handle:
            handle.write(",".join(samples[0]) + "\n")
            handle.writelines(",".join(f"{v:.3f}" for v in s.values()) + "\n" for s in samples)
    if args.json:
        print(json.dumps({"summary": summary, "load": load.counts, "errors": job_log.errors,
                          "http_errors": http_errors, "checks": verdicts(summary)}, indent=2))
    else:
        print(report(summary, load.counts, job_log.jobs, job_log.errors, wall, http_errors))
    if args.plot:
        plot(samples, job_log.jobs, warmup, Path(args.plot))
        print(f"wrote {args.plot}")
    if args.keep:
        print(f"home kept at {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(ok for _, ok in verdicts(summary)) and not http_errors else 1


if __name__ == "__main__":
    sys.exit(main())
