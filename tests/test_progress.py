"""Training progress for people: steady-state ETA (tracing left out, none at the end), losses in
bits/char, a tqdm bar on a terminal and plain log lines otherwise."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path
from types import SimpleNamespace

import pytest
from daemon_helpers import corpus_lines

from tweetgen import progress
from tweetgen.progress import ProgressPrinter, bpc_text, duration_text, steady_eta


def test_eta_uses_the_speed_between_logged_steps() -> None:
    # Tracing made the first 50 steps take 600 s; after it, 50 steps take 10 s.
    assert steady_eta([(600.0, 50), (610.0, 100)], 3000) == pytest.approx(580.0)
    assert steady_eta([(600.0, 50), (610.0, 100), (630.0, 200)], 300) == pytest.approx(20.0)


@pytest.mark.parametrize("points, target", [
    ([(600.0, 50)], 3000),  # one point: no speed yet
    ([(600.0, 50), (610.0, 100)], None),  # a time budget: no step target
    ([(600.0, 50), (610.0, 100)], 100),  # at the end: no ETA after the last step
    ([(600.0, 50), (600.0, 100)], 3000),  # rows written together: no time between them
])
def test_no_eta_when_it_cannot_be_known_or_the_run_is_done(points, target) -> None:
    assert steady_eta(points, target) is None


def test_durations_and_bits_per_char_are_rounded_for_people() -> None:
    assert [duration_text(s) for s in (4.4, 250, 7500)] == ["4s", "4m10s", "2h05m"]
    assert bpc_text(2.747828812310394) == "2.7478 bits/char"
    assert bpc_text(None) == bpc_text(math.nan) == "-"


def test_plain_progress_lines_have_units_and_a_steady_eta(monkeypatch, caplog) -> None:
    clock = iter([600.0, 610.0, 620.0])  # the first log comes after 600 s of tracing
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    printer = ProgressPrinter()
    printer.begin(0, 150)
    with caplog.at_level(logging.INFO, logger="tweetgen.trainer"):
        for step in (50, 100, 150):
            printer(SimpleNamespace(step=step, loss=math.log(2) * 2.5, learning_rate=0.002,
                                    chars_per_s=12345.6))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "step 50/150: training loss 2.5000 bits/char, lr 2.00e-03, 12,346 chars/s",
        "step 100/150: training loss 2.5000 bits/char, lr 2.00e-03, 12,346 chars/s, ETA 10s",
        "step 150/150: training loss 2.5000 bits/char, lr 2.00e-03, 12,346 chars/s",
    ]


def test_train_on_a_terminal_shows_a_progress_bar(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text("\n".join(corpus_lines(120)) + "\n")
    (tmp_path / "tweetgen.toml").write_text("gru_sizes = [8]\nembedding_dim = 4\nbatch_size = 8\n"
                                            "log_every = 2\ncheckpoint_every = 1000\n")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWEETGEN_", "TF_CPP"))}
    proc = subprocess.run([sys.executable, "-m", "tweetgen.cli", "--home", str(tmp_path), "train",
                           "--steps", "12"], stdout=subprocess.PIPE, stderr=follower, env=env,
                          timeout=300)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the pty is closed once everything is read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen
    assert re.search(r"100%\|[^|]*\| 12/12 \[", screen), screen  # tqdm's bar, steps of the run
    assert re.search(r"loss \d\.\d{4} bits/char", screen)
    assert "oneDNN custom operations" not in screen  # TensorFlow's start-up lines, unless -v
    assert "step 12/12: training loss" not in screen  # the bar replaces the log lines
