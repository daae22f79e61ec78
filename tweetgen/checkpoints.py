"""Checkpoints on disk: save, load, rotate; atomic; latest, best and promoted.

One checkpoint is one `.npz` file holding everything needed to resume exactly: the model's
weights, the optimizer's variables, and a JSON `meta` entry (step, vocabulary, model config,
the training job and its data position, corpus cursor, losses). It is written to a temporary
file, fsynced and renamed, so a crash mid-write leaves the previous checkpoint as it was. The
zip container checks CRCs on read, so a truncated or overwritten file is detected.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import write_atomic

log = logging.getLogger(__name__)

FORMAT = 1
NAME = re.compile(r"^ckpt-(\d{8,})\.npz$")
PROMOTED_FILE = "PROMOTED"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def name(self) -> str:
        return self.path.name


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.npz"


def checkpoint_step(path: Path) -> int:
    return int(NAME.match(path.name).group(1))


def encode_checkpoint(meta: dict[str, Any], weights: list[np.ndarray], optimizer: list[np.ndarray]) -> bytes:
    arrays = {f"w{i}": w for i, w in enumerate(weights)}
    arrays.update({f"o{i}": v for i, v in enumerate(optimizer)})
    meta = dict(meta, format=FORMAT, n_weights=len(weights), n_optimizer=len(optimizer))
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def read_meta(path: Path) -> dict[str, Any]:
    """Just the meta entry (cheap: the weights are not read)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as exc:  # zipfile, numpy and json all raise their own kinds on garbage
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def load_checkpoint(path: Path) -> Checkpoint:
    meta = read_meta(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = [data[f"w{i}"] for i in range(meta["n_weights"])]
            optimizer = [data[f"o{i}"] for i in range(meta["n_optimizer"])]
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(exc).__name__}: {exc})") from None
    return Checkpoint(path, meta, weights, optimizer)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointManager:
    """The checkpoint folder: rotation keeps the last `keep`, the best and the promoted one.

    Making one deletes nothing: readers (status, generate, the HTTP API) make one for every
    request and may run in another PID namespace or on another host sharing the folder, where
    a writer's temp file looks abandoned. Only the holder of the instance lock cleans up.
    """

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)

    def remove_stale_temp_files(self) -> list[Path]:
        """Remove what a crash left mid-write; the removed files. Call it only while holding the
        instance lock (the daemon, `tweetgen train`): then no other tweetgen writer is running
        here, and a temp file of a live local process is still kept, in case one is."""
        removed = []
        for tmp in self.directory.glob(".*.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and process_alive(int(pid))):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        if removed:
            log.info("removed %d temporary files a crash left in %s", len(removed), self.directory)
        return removed

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        found = [p for p in self.directory.iterdir() if NAME.match(p.name)]
        return sorted(found, key=checkpoint_step)

    def save(self, meta: dict[str, Any], weights: list[np.ndarray], optimizer: list[np.ndarray]) -> Path:
        path = self.directory / checkpoint_name(int(meta["step"]))
        try:
            write_atomic(path, encode_checkpoint(meta, weights, optimizer), "checkpoint-temp")
        except OSError as exc:  # disk full, file size limit, permissions: the old files stay
            raise CheckpointError(f"could not write checkpoint {path} ({exc.strerror or exc}); free "
                                  "disk space: the previous checkpoint is kept and the job retries "
                                  "at its next run") from exc
        self.rotate()
        return path

    def load_latest(self, check: Callable[[Checkpoint], Any] | None = None) -> Checkpoint | None:
        """The newest checkpoint that loads; corrupt ones are logged and skipped.

        `check`, when given, may raise CheckpointError for a checkpoint that loads but does not
        fit (e.g. its weights do not match its model config): it is skipped the same way.
        """
        return self._first_loadable(reversed(self.paths()), check)

    def _first_loadable(self, candidates, check: Callable[[Checkpoint], Any] | None = None
                        ) -> Checkpoint | None:
        for path in candidates:
            try:
                ckpt = load_checkpoint(path)
                if check is not None:
                    check(ckpt)
                return ckpt
            except CheckpointError as exc:
                log.error("%s; falling back to the previous checkpoint", exc)
        return None

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move an unusable checkpoint aside (as NAME.corrupt, kept for inspection), so that it is
        never again taken for the latest, best or promoted one."""
        target = path.with_name(path.name + ".corrupt")
        os.replace(path, target)
        log.error("checkpoint %s is unusable (%s): moved aside to %s; using the previous one",
                  path.name, reason, target.name)
        return target

    def best(self) -> Path | None:
        scored = []
        for path in self.paths():
            try:
                bpc = read_meta(path).get("val_bpc")
            except CheckpointError:
                continue
            if bpc is not None and np.isfinite(bpc):
                scored.append((bpc, path))
        return min(scored)[1] if scored else None

    # ---- promotion: the checkpoint that generates

    def promote(self, path: Path) -> None:
        write_atomic(self.directory / PROMOTED_FILE, (Path(path).name + "\n").encode())

    def promoted_path(self) -> Path | None:
        marker = self.directory / PROMOTED_FILE
        try:
            name = marker.read_text().strip()
        except FileNotFoundError:
            return None
        path = self.directory / name
        return path if NAME.match(name) and path.exists() else None

    def load_for_generation(self, name: str | None = None,
                            check: Callable[[Checkpoint], Any] | None = None) -> Checkpoint | None:
        """A named checkpoint, else the promoted one, else the latest; falling back when corrupt
        (or when `check` raises CheckpointError, see load_latest). A named one never falls back."""
        if name:
            path = Path(name) if os.sep in name else self.directory / name
            if not path.exists() and name.isdigit():
                path = self.directory / checkpoint_name(int(name))
            ckpt = load_checkpoint(path)
            if check is not None:
                check(ckpt)
            return ckpt
        promoted = self.promoted_path()
        candidates = list(reversed(self.paths()))
        if promoted is not None:
            step = checkpoint_step(promoted)
            candidates = [promoted] + [p for p in candidates if checkpoint_step(p) < step]
        return self._first_loadable(candidates, check)

    def rotate(self) -> None:
        paths = self.paths()
        keep = set(paths[-self.keep :])
        for special in (self.best(), self.promoted_path()):
            if special is not None:
                keep.add(special)
        for path in paths:
            if path not in keep:
                path.unlink(missing_ok=True)
                log.info("rotated away checkpoint %s", path.name)
