"""How far a training run is and when it ends: steady-state speed, ETA, the progress bar.

A run's first logged window includes tracing the compiled step (seconds, on a slow machine
minutes), so speed is measured between logged steps, never from the start of the run; and a run
at its last step has no ETA. `tweetgen train` and the daemon print with `ProgressPrinter`;
`tweetgen status` computes the same ETA from the loss rows in the store (tweetgen.status).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # no TensorFlow import for `tweetgen status`
    from .train import StepLog

log = logging.getLogger("tweetgen.trainer")

LN2 = math.log(2.0)


def nats_to_bpc(loss: float | None) -> float | None:
    """The training loss (mean cross-entropy in nats per character) in bits per character,
    the unit of validation, so the two can be compared."""
    return loss / LN2 if loss is not None else None


def steady_eta(points: Sequence[tuple[float, int]], target_step: int | None) -> float | None:
    """Seconds from the last (time, step) point to `target_step` at the speed between the first
    and the last point. None when it cannot be known (no target, fewer than two points, no
    progress between them) or when the target is reached."""
    if target_step is None or len(points) < 2:
        return None
    (t0, s0), (t1, s1) = points[0], points[-1]
    if s1 >= target_step or s1 <= s0 or t1 <= t0:
        return None
    return (target_step - s1) * (t1 - t0) / (s1 - s0)


def duration_text(seconds: float) -> str:
    """Rounded for people: '45s', '4m10s', '2h05m'."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressPrinter:
    """A training run's progress: a tqdm bar on a terminal, plain log lines otherwise.

    `begin(first_step, target_step)` is called when the run starts (target None: a time
    budget), then the printer is called with every logged step. Used as a context manager with
    a bar, it sends log lines through tqdm, so they print above the bar instead of across it.
    """

    def __init__(self, bar: bool = False, stream: IO[str] = sys.stderr) -> None:
        self.use_bar, self.stream = bar, stream
        self.first_step, self.target_step = 0, None
        self.points: list[tuple[float, int]] = []
        self.bar = None
        self.redirect = contextlib.nullcontext()

    def __enter__(self) -> ProgressPrinter:
        if self.use_bar:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.redirect = logging_redirect_tqdm()
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.redirect.__exit__(*exc)

    def begin(self, first_step: int, target_step: int | None) -> None:
        self.first_step, self.target_step = first_step, target_step
        self.points = []

    def __call__(self, entry: StepLog) -> None:
        self.points.append((time.monotonic(), entry.step))
        bpc = nats_to_bpc(entry.loss)
        if self.use_bar:
            self._update_bar(entry, bpc)
            return
        total = f"/{self.target_step}" if self.target_step is not None else ""
        eta = steady_eta(self.points, self.target_step)
        log.info("step %d%s: training loss %.4f bits/char, lr %.2e, %s chars/s%s", entry.step, total,
                 bpc, entry.learning_rate, f"{entry.chars_per_s:,.0f}",
                 f", ETA {duration_text(eta)}" if eta is not None else "")

    def _update_bar(self, entry: StepLog, bpc: float) -> None:
        from tqdm import tqdm

        done = entry.step - self.first_step
        if self.bar is None:  # made at the first log, so the bar's speed leaves out the tracing
            total = self.target_step - self.first_step if self.target_step is not None else None
            self.bar = tqdm(total=total, initial=done, file=self.stream, unit="step",
                            dynamic_ncols=True, leave=True)
        else:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"loss {bpc:.4f} bits/char", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def bpc_text(value: float | None) -> str:
    """Bits per character for people: 4 decimals and the unit; '-' when there is none."""
    return f"{value:.4f} bits/char" if value is not None and math.isfinite(value) else "-"


def bpc_change_text(before: float | None, after: float | None) -> str:
    """'2.7478 -> 2.7000 bits/char' ('-' for a figure there is none of)."""
    def number(value: float | None) -> str:
        return f"{value:.4f}" if value is not None and math.isfinite(value) else "-"

    return f"{number(before)} -> {number(after)} bits/char"
