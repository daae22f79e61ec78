"""`tweetgen backup`: a consistent copy of the database (and checkpoints) while the daemon runs.

The copy goes through SQLite's online backup API (`sqlite3.Connection.backup`), in one step: it
reads the whole database inside one read transaction, so the copy is the database as it was at
one moment, however the daemon writes meanwhile (in WAL mode readers never block the writer).
It is written to a temporary file beside the target and renamed into place only once it has
passed `PRAGMA integrity_check`, so an interrupted backup never leaves a file that looks whole.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import PROMOTED_FILE, CheckpointManager
from .config import Settings
from .errors import BackupError


@dataclass
class BackupResult:
    file: Path
    bytes: int
    counts: dict[str, int]  # rows per table in the copy
    checkpoints: list[Path] = field(default_factory=list)  # files copied with --checkpoints

    def as_dict(self) -> dict:
        return {"file": str(self.file), "bytes": self.bytes, "counts": self.counts,
                "checkpoints": [str(p) for p in self.checkpoints]}


def backup(settings: Settings, target: Path, force: bool = False,
           checkpoint_dir: Path | None = None) -> BackupResult:
    """Copy the database to `target` (refused if it exists, unless `force`); with
    `checkpoint_dir`, also copy the promoted and the latest checkpoint files there."""
    target = Path(target)
    _check_target(target, force)
    if checkpoint_dir is not None and Path(checkpoint_dir).resolve() == settings.checkpoints.resolve():
        raise BackupError(f"--checkpoints {checkpoint_dir} is the live checkpoint folder; "
                          "give another folder")
    counts = backup_database(settings.db_file, target)
    result = BackupResult(target, target.stat().st_size, counts)
    if checkpoint_dir is not None:
        result.checkpoints = copy_checkpoints(settings.checkpoints, Path(checkpoint_dir))
    return result


def _check_target(target: Path, force: bool) -> None:
    if target.is_dir():
        raise BackupError(f"{target} is a directory: give a file name, e.g. {target / 'tweetgen.db'}")
    if target.exists() and not force:
        raise BackupError(f"{target} already exists: choose another name, or pass --force to replace it")
    if not target.parent.is_dir():
        raise BackupError(f"folder {target.parent} does not exist: create it first")


def backup_database(source: Path, target: Path) -> dict[str, int]:
    """The online backup of `source` into `target`; returns the row count of each table."""
    if not source.is_file():
        raise BackupError(f"database {source} not found: nothing to back up (check --home)")
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        # mode=rw: never create an empty database where the real one is missing.
        src = sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(temp)
            try:
                src.backup(dst)  # pages=-1 (the default): all pages in one step, one snapshot
                counts = _check_copy(dst, target)
            finally:
                dst.close()
        finally:
            src.close()
        _fsync(temp)
        # A -wal left beside a replaced copy would be replayed into the new file when opened.
        for stale in (Path(f"{target}-wal"), Path(f"{target}-shm")):
            stale.unlink(missing_ok=True)
        os.replace(temp, target)
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {source} to {target} failed ({exc}); "
                          f"nothing was written at {target}") from None
    finally:
        for leftover in (temp, Path(f"{temp}-wal"), Path(f"{temp}-shm")):
            leftover.unlink(missing_ok=True)
    return counts


def _check_copy(conn: sqlite3.Connection, target: Path) -> dict[str, int]:
    result = conn.execute("PRAGMA integrity_check").fetchall()
    if result != [("ok",)]:
        raise BackupError(f"the copy for {target} failed its integrity check ({result[:3]}); "
                          "nothing was written there; run the backup again")
    # The copy stays in WAL mode like its source: a rollback journal is simpler for a file that
    # is stored away, and opening it later with tweetgen turns WAL back on.
    conn.execute("PRAGMA journal_mode = DELETE")
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'samples_fts%' "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def copy_checkpoints(source_dir: Path, target_dir: Path) -> list[Path]:
    """Copy the promoted and the latest checkpoint (and the PROMOTED marker) to `target_dir`.
    A file the daemon rotates away meanwhile is looked up again once."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(2):
        manager = CheckpointManager(source_dir)
        wanted = {p for p in (manager.promoted_path(), *manager.paths()[-1:]) if p is not None}
        if not wanted:
            raise BackupError(f"no checkpoints in {source_dir} to copy (train first, or drop "
                              "--checkpoints)")
        try:
            copied = [_copy_file(path, target_dir / path.name) for path in sorted(wanted)]
        except FileNotFoundError:
            continue  # rotated away between the listing and the copy
        promoted = manager.promoted_path()
        if promoted is not None:
            (target_dir / PROMOTED_FILE).write_text(promoted.name + "\n")
        return copied
    raise BackupError(f"checkpoints in {source_dir} kept changing during the copy; run the "
                      "backup again")


def _copy_file(source: Path, target: Path) -> Path:
    """Copy through a temporary name, so a half-copied checkpoint never has a real name."""
    temp = target.with_name(f".{target.name}.tmp")
    try:
        shutil.copyfile(source, temp)
        _fsync(temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
