"""`tweetgen losses --plot`: a real PNG from a real store."""

import subprocess
import sys
from pathlib import Path

import pytest

from tweetgen.store import Store

pytest.importorskip("matplotlib")


def test_losses_plot_writes_a_png(tmp_path: Path) -> None:
    with Store(tmp_path / "db" / "tweetgen.db") as store:
        run = store.start_run("train", 1)
        store.log_losses(run, [{"step": s, "loss": 3.0 - s / 100, "learning_rate": 1e-3,
                                "grad_norm": 1.0} for s in range(10, 100, 10)])
        store.log_losses(run, [{"step": 50, "kind": "val", "val_bpc": 3.5}])
    out = tmp_path / "losses.png"
    result = subprocess.run([sys.executable, "-m", "tweetgen.cli", "--home", str(tmp_path), "losses",
                             "--plot", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_losses_plot_without_losses_is_a_clear_error(tmp_path: Path) -> None:
    Store(tmp_path / "db" / "tweetgen.db").close()
    result = subprocess.run([sys.executable, "-m", "tweetgen.cli", "--home", str(tmp_path), "losses",
                             "--plot", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no losses recorded yet" in result.stderr
