"""`tweetgen losses --plot FILE.png`: training loss and validation bits/char over steps.

matplotlib is an optional extra (`pip install -e '.[plot]'`); it is imported only here.
"""

from __future__ import annotations

import math
from pathlib import Path


class PlotUnavailableError(RuntimeError):
    pass


def plot_losses(rows: list[dict], path: Path) -> None:
    """One PNG: training loss and validation, both in bits/char, against the global step."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no screen on a server
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError("--plot needs matplotlib: pip install -e '.[plot]'") from None
    # Training loss is recorded in nats; shown in bits so both curves share one axis.
    train = [(r["step"], r["loss"] / math.log(2)) for r in rows
             if r["kind"] == "train" and r["loss"] is not None and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_bpc"]) for r in rows
           if r["kind"] == "val" and r["val_bpc"] is not None and math.isfinite(r["val_bpc"])]
    if not train and not val:
        raise PlotUnavailableError("no losses recorded yet: nothing to plot")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss (bits/char)", color="tab:blue", linewidth=1)
    if val:
        ax.plot(*zip(*val), label="validation (bits/char)", color="tab:orange", marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.set_title("tweetgen training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
