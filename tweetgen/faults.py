"""Fault injection for the fault suite (tests/test_faults.py, bench/faults.py). Off by default.

Two environment variables, read here and nowhere else (once per process, at first use):

    TWEETGEN_FAULT_KILL_AT=POINT:N   the process sends itself SIGKILL the Nth time (1-based) it
                                     reaches crash point POINT: a real kill -9, no cleanup runs
    TWEETGEN_FAULT_NAN_STEPS=SPEC    training-step attempts of this process (1-based, counted over
                                     all its runs) whose loss is multiplied by NaN, so the step is
                                     not applied; SPEC is a comma list of N, A-B or A- (no end)

Crash points (where the code calls `crash_point`):

    train-step        a training step was applied
    checkpoint-temp   a checkpoint's temp file is written and fsynced, not yet renamed into place
    checkpoint-saved  a checkpoint file is in place; the store does not know it yet
    ingest-started    a fine-tune scanned its new lines and recorded its run; no step yet
    ingest-record     a fine-tune's last checkpoint is written and promoted; its ingest unrecorded
    samples-insert    inside the transaction that stores tweets, after the first row

Unset (the normal case) every call is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_ENV = "TWEETGEN_FAULT_KILL_AT"
NAN_ENV = "TWEETGEN_FAULT_NAN_STEPS"
POINTS = ("train-step", "checkpoint-temp", "checkpoint-saved", "ingest-started", "ingest-record",
          "samples-insert")

_config: dict | None = None
_reached: Counter = Counter()
_attempts = 0


class FaultSpecError(ValueError):
    """A fault-injection variable that cannot be parsed."""


def _parse_kill(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    point, _, count = value.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise FaultSpecError(f"{KILL_ENV}={value!r}: expected POINT:N with POINT one of "
                             f"{', '.join(POINTS)} and N >= 1")
    return point, int(count)


def _parse_steps(value: str) -> list[tuple[int, float]]:
    """[(first, last)] attempt ranges; last is inf for an open range."""
    ranges = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise FaultSpecError(f"{NAN_ENV}={value!r}: expected a comma list of N, A-B or A-")
        ranges.append((int(first), float(last) if last else (float("inf") if dash else int(first))))
    return ranges


def _settings() -> dict:
    global _config
    if _config is None:
        _config = {"kill": _parse_kill(os.environ.get(KILL_ENV, "")),
                   "nan": _parse_steps(os.environ.get(NAN_ENV, ""))}
    return _config


def crash_point(name: str) -> None:
    """SIGKILL this process if TWEETGEN_FAULT_KILL_AT names this point and its count is reached."""
    kill = _settings()["kill"]
    if kill is None or kill[0] != name:
        return
    _reached[name] += 1
    if _reached[name] >= kill[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def nan_step() -> bool:
    """Count one training-step attempt; True if TWEETGEN_FAULT_NAN_STEPS makes it non-finite."""
    global _attempts
    ranges = _settings()["nan"]
    if not ranges:
        return False
    _attempts += 1
    return any(first <= _attempts <= last for first, last in ranges)
