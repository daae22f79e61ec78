"""A seeded campaign of kill -9s against a real daemon, with the checks after each one.

Used by tests/test_faults.py (20 kills) and bench/faults.py (the long run). Each cycle appends
lines (some invalid, some left without their newline for a while), starts the daemon, kills it
with SIGKILL in a chosen phase, then checks what the kill left:

- the database passes PRAGMA integrity_check;
- the newest checkpoint loads (checkpoints are written atomically, so none may be half-written);
- the ingests' byte ranges run on from 0 with no gap or overlap, each ending after a newline
  and counting exactly the lines it holds;
- every tweet seen in the database before the kill is still there, with the same text;
- once the next daemon has started, no run of a dead daemon still says 'running'.

A kill lands either from outside (the test sends SIGKILL at a random delay after the log shows
the phase has begun) or at a crash point inside the phase (TWEETGEN_FAULT_KILL_AT: the daemon
sends itself SIGKILL when it reaches that point for the Nth time; see tweetgen.faults).

Some cycles also meet other faults before their kill (each drawn with its own probability):
NaN losses in the first training steps (TWEETGEN_FAULT_NAN_STEPS), the database locked by
another writer for a second or two, the disk full for a second or two (the daemon's file size
limit lowered to 1 byte with prlimit), and a garbage file named like a newer checkpoint. Before
the first daemon start and some later ones (drawn from a second generator, so the kills stay
those of the seed), a `tweetgen append` runs under a file size limit its batch does not fit:
it must fail, say so, and leave the corpus byte-identical.

At the end a daemon runs without faults until every complete line is ingested and new tweets
are stored; the ingests must then cover every complete line of the corpus exactly once.
"""

from __future__ import annotations

import random
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from daemon_helpers import (
    complete_lines_end,
    ingest_gaps,
    ingested_through,
    integrity_ok,
    loadable_checkpoint,
    log_text,
    make_home,
    query,
    samples_snapshot,
    start_daemon,
    stop,
    wait_for,
)

from tweetgen.faults import KILL_ENV, NAN_ENV

# For each phase, the ways to kill in it: ("timed", log pattern that starts the phase, max delay)
# or ("point", crash point, highest N).
PHASES: dict[str, list[tuple[str, str, float]]] = {
    "training": [("timed", r"initial training:|fine-tune run \d+:", 0.6), ("point", "train-step", 4)],
    "checkpoint": [("point", "checkpoint-temp", 2), ("point", "checkpoint-saved", 2)],
    "ingest": [("timed", r"new lines waiting", 0.8), ("point", "ingest-started", 1),
               ("point", "ingest-record", 2)],
    "samples": [("timed", r"generating from checkpoint", 0.5), ("point", "samples-insert", 2)],
}
CONFIG = """
keep_checkpoints = 2
max_bad_steps = 4
db_busy_timeout_seconds = 0.5
"""
# Other faults a cycle may meet before its kill, with their probabilities.
EXTRAS = {"nan losses": 0.15, "database locked": 0.15, "disk full": 0.15, "garbage checkpoint": 0.1}
APPEND_OVER_LIMIT = 0.25  # the chance of a `tweetgen append` over a file size limit per cycle
GARBAGE = "ckpt-99999999.npz"
WORDS = "the cat dog sat ran on a mat log fast slow big red fox jumps over lazy hen".split()


@dataclass
class Report:
    kills: Counter = field(default_factory=Counter)  # "phase: how" -> count
    faults: Counter = field(default_factory=Counter)  # other faults met before a kill
    fallbacks: int = 0  # crash points not reached in time, killed from outside instead
    restarts: int = 0
    lines_appended: int = 0  # complete lines in the corpus at the end (initial ones included)
    lines_ingested: int = 0  # lines + rejected lines over all ingests
    samples_before: int = 0  # tweets seen before the last kill
    samples_after: int = 0  # tweets in the database at the end
    samples_lost: int = 0
    failed_appends: int = 0  # `tweetgen append` runs a file size limit made fail
    failed_appends_intact: int = 0  # of them, those that left the corpus byte-identical
    checks_passed: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, ok: bool, what: str) -> None:
        if ok:
            self.checks_passed += 1
        else:
            self.failures.append(what)


class KillCampaign:
    def __init__(self, tmp_path: Path, seed: int, kills: int, cycle_timeout: float = 40) -> None:
        self.home = make_home(tmp_path, initial_steps=60, checkpoint_every=10, extra=CONFIG)
        self.db = self.home / "db" / "tweetgen.db"
        self.interference: dict | None = None  # a lock or a size limit on the daemon, and when
        self.corpus = self.home / "data" / "corpus.txt"
        self.rng = random.Random(seed)
        self.kills = kills
        self.cycle_timeout = cycle_timeout
        self.report = Report()
        self.seen: dict[int, str] = {}  # tweets seen so far: id -> text
        self.partial = b""  # the rest of a line written without its newline
        self.counter = 0
        self.append_rng = random.Random(f"{seed}-append")  # the limited appends: apart from the kills

    # ---- the campaign

    def run(self) -> Report:
        started = time.monotonic()
        plan = [phase for phase in PHASES for _ in range(self.kills // len(PHASES))]
        plan += [self.rng.choice(list(PHASES)) for _ in range(self.kills - len(plan))]
        self.rng.shuffle(plan)
        for phase in plan:
            self.cycle(phase)
        self.settle()
        self.report.seconds = time.monotonic() - started
        return self.report

    def cycle(self, phase: str) -> None:
        how, target, limit = self.rng.choice(PHASES[phase])
        extras = [name for name, chance in EXTRAS.items() if self.rng.random() < chance]
        self.append_some()
        if not self.report.failed_appends or self.append_rng.random() < APPEND_OVER_LIMIT:
            self.append_over_file_limit()
        env = {}
        if how == "point":
            env[KILL_ENV] = f"{target}:{self.rng.randint(1, int(limit))}"
        if "nan losses" in extras:
            env[NAN_ENV] = f"1-{self.rng.randint(2, 6)}"
        if "garbage checkpoint" in extras:
            (self.home / "checkpoints").mkdir(exist_ok=True)
            (self.home / "checkpoints" / GARBAGE).write_bytes(b"\x00not a checkpoint" * 64)
        log_start = len(log_text(self.home))
        daemon = start_daemon(self.home, env=env, log_through_pipe=True)
        try:
            self.report.restarts += 1
            self.check_runs_after_start(daemon)
            for name in extras:
                self.report.faults[name] += 1
            self.plan_interference(daemon, extras)
            if how == "timed":
                killed = self.kill_after_pattern(daemon, target, limit, log_start)
            else:
                killed = self.wait_for_crash_point(daemon)
            code = daemon.wait(30)
        finally:
            self.end_interference()
            if daemon.poll() is None:  # never leave a daemon behind, whatever went wrong
                daemon.kill()
                daemon.wait(30)
        label = f"{phase}: {env.get(KILL_ENV) or 'kill -9 after /' + target + '/'} {extras}"
        self.report.kills[f"{phase}: {'crash point' if how == 'point' else 'kill -9 from outside'}"] += 1
        if not killed:
            self.report.fallbacks += 1
        self.report.check(code == -signal.SIGKILL, f"{label}: daemon exited with {code}, not SIGKILL")
        if "garbage checkpoint" in extras and (self.home / "checkpoints" / GARBAGE).exists():
            # Killed before it looked at its checkpoints: the next start must deal with it.
            self.report.faults["garbage checkpoint"] -= 1
            (self.home / "checkpoints" / GARBAGE).unlink()
        self.check_after_kill(label)

    def settle(self) -> None:
        """A daemon without faults: it must ingest every complete line and store new tweets."""
        self.finish_partial()
        daemon = start_daemon(self.home)
        self.report.restarts += 1
        try:
            self.check_runs_after_start(daemon)
            end = complete_lines_end(self.corpus)
            before = len(samples_snapshot(self.home))
            wait_for(lambda: ingested_through(self.home) == end, timeout=90, proc=daemon,
                     what="the last lines to be ingested")
            wait_for(lambda: len(samples_snapshot(self.home)) > before, timeout=60, proc=daemon,
                     what="new tweets after the last restart")
        finally:
            code = stop(daemon)
            if daemon.poll() is None:
                daemon.kill()
        self.report.check(code == 0, f"final daemon exited with {code} after SIGTERM")
        self.check_after_kill("final stop")
        problems = ingest_gaps(self.home)
        data = self.corpus.read_bytes()
        self.report.lines_appended = data[: complete_lines_end(self.corpus)].count(b"\n")
        self.report.lines_ingested = query(
            self.home, "select coalesce(sum(lines + rejected), 0) n from ingests")[0]["n"]
        self.report.check(self.report.lines_ingested == self.report.lines_appended and not problems,
                          f"ingests cover {self.report.lines_ingested} of "
                          f"{self.report.lines_appended} lines: {problems}")
        leftovers = [p.name for p in (self.home / "checkpoints").iterdir() if ".tmp-" in p.name]
        self.report.check(not leftovers, f"temporary files left in checkpoints/: {leftovers}")
        self.report.samples_after = len(samples_snapshot(self.home))

    # ---- killing

    def kill_after_pattern(self, daemon: subprocess.Popen, pattern: str, max_delay: float,
                           log_start: int) -> bool:
        """SIGKILL at a random delay after the phase's log line; False if it never showed."""
        regex = re.compile(pattern)
        delay = self.rng.uniform(0, max_delay)
        deadline = time.monotonic() + self.cycle_timeout
        seen = False
        while time.monotonic() < deadline and daemon.poll() is None:
            if regex.search(log_text(self.home)[log_start:]):
                seen = True
                break
            self.remember_samples()
            self.interfere()
            time.sleep(0.05)
        if seen:
            time.sleep(delay)
        self.remember_samples()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGKILL)
        return seen

    def wait_for_crash_point(self, daemon: subprocess.Popen) -> bool:
        """Wait for the daemon to kill itself at its crash point, appending lines meanwhile (so
        later fine-tunes reach the point again); SIGKILL from outside if it never does."""
        deadline = time.monotonic() + self.cycle_timeout
        next_append = time.monotonic() + self.rng.uniform(0.5, 2)
        while time.monotonic() < deadline and daemon.poll() is None:
            self.remember_samples()
            self.interfere()
            if time.monotonic() > next_append:
                self.append_some(partial_ok=False)
                next_append = time.monotonic() + self.rng.uniform(0.5, 2)
            time.sleep(0.05)
        if daemon.poll() is None:
            self.remember_samples()
            daemon.send_signal(signal.SIGKILL)
            return False
        return True

    # ---- other faults while the daemon runs

    def plan_interference(self, daemon: subprocess.Popen, extras: list[str]) -> None:
        kinds = [k for k in ("database locked", "disk full") if k in extras]
        if kinds:
            start = time.monotonic() + self.rng.uniform(0, 2)
            self.interference = {"kind": self.rng.choice(kinds), "daemon": daemon, "start": start,
                                 "end": start + self.rng.uniform(0.5, 2.5), "active": None}

    def interfere(self) -> None:
        """Start or end the planned lock or size limit, as the clock says."""
        plan = self.interference
        if plan is None:
            return
        now = time.monotonic()
        if plan["active"] is None and now >= plan["start"]:
            if plan["kind"] == "database locked":
                blocker = sqlite3.connect(self.db, isolation_level=None, timeout=5)
                blocker.execute("BEGIN IMMEDIATE")
                plan["active"] = blocker
            else:
                plan["active"] = self.set_file_limit(plan["daemon"], 1)
        if plan["active"] is not None and now >= plan["end"]:
            self.end_interference()

    def end_interference(self) -> None:
        plan, self.interference = self.interference, None
        if plan is None or plan["active"] is None:
            return
        if plan["kind"] == "database locked":
            plan["active"].execute("ROLLBACK")
            plan["active"].close()
        else:
            self.set_file_limit(plan["daemon"], resource.RLIM_INFINITY)

    @staticmethod
    def set_file_limit(daemon: subprocess.Popen, limit: int) -> bool:
        try:
            hard = resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE)[1]
            resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (min(limit, hard), hard))
        except ProcessLookupError:  # it died meanwhile
            pass
        return True

    # ---- checks

    def check_runs_after_start(self, daemon: subprocess.Popen) -> None:
        marker = f"daemon started (pid {daemon.pid})"
        wait_for(lambda: marker in log_text(self.home), timeout=60, proc=daemon, interval=0.05,
                 what="the daemon to start")
        stale = query(self.home, "select id, pid from runs where status = 'running' and pid != ?",
                      [daemon.pid])
        self.report.check(not stale, f"runs left running by a dead daemon: {stale}")

    def check_after_kill(self, label: str) -> None:
        db = self.home / "db" / "tweetgen.db"
        if not db.exists():
            return
        self.report.check(integrity_ok(db), f"{label}: PRAGMA integrity_check failed")
        path, failed = loadable_checkpoint(self.home)
        any_files = any((self.home / "checkpoints").glob("ckpt-*.npz"))
        self.report.check((path is not None or not any_files) and not failed,
                          f"{label}: checkpoints that do not load: {failed}")
        problems = ingest_gaps(self.home)
        self.report.check(not problems, f"{label}: ingests {problems}")
        garbage = self.home / "checkpoints" / GARBAGE
        self.report.check(not garbage.exists(), f"{label}: {GARBAGE} was not moved aside")
        now = samples_snapshot(self.home)
        lost = [i for i, text in self.seen.items() if now.get(i) != text]
        self.report.samples_lost = len(lost)
        self.report.check(not lost, f"{label}: {len(lost)} stored tweets lost")
        self.report.samples_before = len(self.seen)

    def remember_samples(self) -> None:
        self.seen.update(samples_snapshot(self.home))

    # ---- appending

    def append_some(self, partial_ok: bool = True) -> None:
        """A few lines as any writer might: mostly valid, some invalid, maybe a partial one."""
        self.finish_partial()
        raw = []
        for _ in range(self.rng.randint(3, 8)):
            self.counter += 1
            kind = self.rng.random()
            if kind < 0.08:
                raw.append(b"bad \xff\xfe bytes %d\n" % self.counter)
            elif kind < 0.12:
                raw.append(b"   \t \n")
            else:
                words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(2, 7)))
                raw.append(f"{words} {self.counter}\n".encode())
        if partial_ok and self.rng.random() < 0.3:
            line = raw.pop()
            cut = self.rng.randint(1, len(line) - 1)
            raw.append(line[:cut])
            self.partial = line[cut:]
        with open(self.corpus, "ab") as handle:
            handle.write(b"".join(raw))

    def append_over_file_limit(self) -> None:
        """`tweetgen append` of a batch bigger than its file size limit allows: all or nothing."""
        before = self.corpus.read_bytes()
        limit = len(before) + self.append_rng.randint(1, 4000)
        batch = "".join(f"over the limit {i} {self.append_rng.choice(WORDS)}\n" for i in range(400))

        def limit_file_size() -> None:  # in the child: a write past the limit fails with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        result = subprocess.run([sys.executable, "-m", "tweetgen.cli", "--home", str(self.home), "append"],
                                input=batch, capture_output=True, text=True, timeout=60,
                                preexec_fn=limit_file_size)
        self.report.failed_appends += 1
        intact = self.corpus.read_bytes() == before
        self.report.failed_appends_intact += intact
        self.report.check(result.returncode == 2 and "nothing was added" in result.stderr and intact,
                          f"append over a {limit}-byte limit: exit {result.returncode}, corpus "
                          f"{'intact' if intact else 'CHANGED'}: {result.stderr.strip()[-300:]}")

    def finish_partial(self) -> None:
        if self.partial:
            with open(self.corpus, "ab") as handle:
                handle.write(self.partial)
            self.partial = b""


def run_campaign(tmp_path: Path, seed: int, kills: int) -> Report:
    return KillCampaign(tmp_path, seed, kills).run()

