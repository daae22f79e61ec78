"""Which checkpoint generates tweets: the promotion rule, in one place.

A candidate checkpoint (a fine-tune's, an idle run's) is judged against the model that is served
now (the promoted checkpoint), measured on the same validation lines with the same vocabulary,
never against the latest checkpoint, which may be one that was rejected: otherwise a rejected run
becomes the next one's baseline and the served model can get worse step by step.

- Nothing served yet: the candidate is promoted if its validation is known.
- A fine-tune must make the held-out new lines better (when it has some) and keep the old
  validation within `promote_tolerance_bpc` of the served model, counted over the fine-tunes
  in a row: the served model carries its drift (how much worse its old validation is than the
  model the last consolidation left, summed over the fine-tunes promoted since), so weeks of
  fine-tunes each within the tolerance cannot add up to a model much worse on the old lines.
  Idle training that improves the old validation pays the drift back (never below 0).
- Idle training (more steps on the same lines) must make the old validation strictly better.
- An unknown figure (missing, NaN, infinite) of the candidate counts as worse.

A rejected fine-tune's weights stay the latest checkpoint, and the next fine-tune or idle run
continues from them: the corpus cursor has moved past its new lines, so restarting from the
served model would drop them from the model for good, while judging every candidate against the
served model keeps what is served from getting worse.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .checkpoints import CheckpointError, CheckpointManager, load_checkpoint
from .model import CharGRU, grow_model
from .train import bits_per_char, make_eval_fn
from .vocab import Vocab

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figures:
    """Validation bits/char of one model: on the old validation lines, and on the held-out
    new lines of a fine-tune (None where there are none)."""

    old_bpc: float | None
    new_bpc: float | None = None
    drift: float = 0.0  # the served model's: see the module docstring (DRIFT_KEY in the store's meta)


DRIFT_KEY = "old_validation_drift"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    drift: float = 0.0  # the drift the candidate carries once promoted


def with_drift(served: Figures | None, drift: float) -> Figures | None:
    return Figures(served.old_bpc, served.new_bpc, drift) if served is not None else None


def promote(store: Store, manager: CheckpointManager, checkpoint: Path, decision: Decision) -> None:
    """Serve `checkpoint` and record the drift it carries."""
    manager.promote(checkpoint)
    store.set_meta(DRIFT_KEY, f"{decision.drift:.6f}")


def read_drift(meta_value: str | None) -> float:
    """The stored drift (the store's meta value under DRIFT_KEY); 0 when none or unreadable."""
    try:
        return max(0.0, float(meta_value)) if meta_value else 0.0
    except ValueError:
        return 0.0


def known(value: float | None) -> float | None:
    """The value if it is a finite number, else None."""
    return value if value is not None and math.isfinite(value) else None


def decide(kind: str, served: Figures | None, candidate: Figures, tolerance: float) -> Decision:
    """Promote `candidate` (a run of `kind`: finetune, idle, initial, train) over `served`?"""
    old = known(candidate.old_bpc)
    if old is None:
        return Decision(False, "its validation bits/char is unknown")
    if served is None:
        return Decision(True, "no model is served yet")
    served_old = known(served.old_bpc)
    if served_old is None:
        return Decision(True, "the served model could not be measured on these lines")
    drift = max(0.0, served.drift + old - served_old)
    if kind != "finetune":
        if old < served_old:
            return Decision(True, f"validation {old:.4f} < served {served_old:.4f}", drift)
        return Decision(False, f"validation {old:.4f} not below served {served_old:.4f}")
    if served.new_bpc is not None:
        new, served_new = known(candidate.new_bpc), known(served.new_bpc)
        if new is None:
            return Decision(False, "its bits/char on the held-out new lines is unknown")
        if served_new is not None and new >= served_new:
            return Decision(False, f"new lines {new:.4f} not below served {served_new:.4f}")
    if old > served_old + tolerance - served.drift:
        return Decision(False, f"old validation {old:.4f} worse than served {served_old:.4f} by more "
                               f"than {tolerance} less the {served.drift:.4f} earlier fine-tunes used")
    return Decision(True, f"old validation {old:.4f} (served {served_old:.4f}, drift {drift:.4f})"
                    + (f", new lines {candidate.new_bpc:.4f} (served {served.new_bpc:.4f})"
                       if served.new_bpc is not None else ""), drift)


class ServedModel:
    """The promoted checkpoint's model, measured on any validation lines in a (possibly grown)
    vocabulary. One model is kept and its weights reassigned when another checkpoint is promoted
    (building a model and tracing its evaluation per job would leak memory for weeks); figures
    are cached per (checkpoint, lines)."""

    def __init__(self) -> None:
        self.model: CharGRU | None = None
        self.eval_fn = None
        self.loaded: tuple | None = None  # (path, mtime) of the checkpoint in `model`
        self.figures: dict[tuple, Figures] = {}

    def figures_on(self, manager: CheckpointManager, vocab: Vocab, old: Sequence[np.ndarray],
                   new: Sequence[np.ndarray] = ()) -> Figures | None:
        """The served model's figures on `old` and `new` (encoded with `vocab`); None when
        nothing is promoted."""
        path = manager.promoted_path()
        if path is None:
            return None
        key = (_stamp(path), vocab.hash, _digest(old), _digest(new))
        if key not in self.figures:
            self.figures = {key: self._measure(path, vocab, old, new)}
        return self.figures[key]

    def _measure(self, path: Path, vocab: Vocab, old: Sequence[np.ndarray],
                 new: Sequence[np.ndarray]) -> Figures:
        try:
            self._load(path, vocab)
        except (CheckpointError, KeyError, ValueError) as exc:
            log.warning("the served checkpoint %s cannot be measured (%s)", path.name, exc)
            return Figures(None, None)
        old_bpc = bits_per_char(self.model, old, eval_fn=self.eval_fn) if old else None
        new_bpc = bits_per_char(self.model, new, eval_fn=self.eval_fn) if new else None
        return Figures(known(old_bpc), known(new_bpc) if new else None)

    def _load(self, path: Path, vocab: Vocab) -> None:
        from .trainer import model_from_checkpoint

        stamp = _stamp(path)
        if self.loaded == (stamp, vocab.hash):
            return
        ckpt = load_checkpoint(path)
        served_vocab = Vocab.from_json(ckpt.meta["vocab"])
        if served_vocab.chars != vocab.chars[: len(served_vocab.chars)]:
            raise ValueError("its vocabulary is not a prefix of the current one")
        model = self.model
        if model is not None and model.vocab_size == vocab.size and \
                [tuple(w.shape) for w in model.weights] == [tuple(w.shape) for w in ckpt.weights]:
            for variable, value in zip(model.weights, ckpt.weights):
                variable.assign(value)
        else:
            model = model_from_checkpoint(ckpt)
            if served_vocab.size < vocab.size:  # measured as it would serve the grown vocabulary
                model = grow_model(model, vocab.size, ckpt.meta["model_config"])
            self.model, self.eval_fn = model, make_eval_fn(model)
        self.loaded = (stamp, vocab.hash)


def _stamp(path: Path) -> tuple:
    try:
        return (path.name, path.stat().st_mtime_ns)
    except OSError:
        return (path.name, None)


def _digest(sequences: Sequence[np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for seq in sequences:
        h.update(np.asarray(seq, np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()
