"""The SQLite record of everything tweetgen does.

Runs, losses, checkpoints, corpus ingests, generated samples and daemon liveness
all live in one database file. It is opened in WAL mode so the CLI and the HTTP
server can read while the daemon writes, and every write goes through one guard
that turns "database is locked" into a StoreError callers can catch and retry.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import sqlite_utils

from . import faults

SCHEMA_VERSION = 4
APP = "tweetgen"

RUN_KINDS = {"initial", "finetune", "train", "idle"}
RUN_STATUSES = {"running", "completed", "interrupted", "crashed", "failed", "rejected"}
REVIEW_STATUSES = {"approved", "rejected", "new"}
JOB_EVENTS = {"executed", "error", "missed", "skipped"}
OUTBOX_STATUSES = {"pending", "delivered", "failed", "cancelled"}
CRASHED_ERROR = "process died (found running at next start)"
SAMPLE_ORDERS = {"newest": "created DESC, id DESC",
                 "score": "score IS NULL, score DESC, created DESC, id DESC",
                 "reviewed": "reviewed IS NULL, reviewed DESC, id DESC"}

# Columns stored as JSON text; rows read back have them decoded again.
JSON_COLUMNS = {"config", "file_identity", "rejected_reasons", "next_jobs"}

# SQLite primary result codes for "someone else holds the lock".
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
# ... and for "the disk refused the write" (full, or over a file size limit).
_SQLITE_IOERR = 10
_SQLITE_FULL = 13


class StoreError(Exception):
    """A database problem explained in one line: which file, and what to do."""


def utc_now() -> str:
    """Current UTC time as a fixed-width ISO 8601 string, so strings sort as times."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def to_utc_iso(value: str) -> str:
    """Normalise any ISO 8601 time to the stored format; naive times are taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"{value!r} is not an ISO 8601 time") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def fts_query(text: str) -> str | None:
    """Turn user text into a safe FTS5 query: every word becomes a quoted phrase.

    Quoting disables FTS syntax (NOT, *, column filters, stray quotes). Words with
    no letters or digits are dropped because they would become empty phrases,
    which match nothing. Returns None when no searchable word is left.
    """
    words = [w for w in text.split() if any(ch.isalnum() for ch in w)]
    if not words:
        return None
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def _to_json(value: Any) -> str:
    # Scheduler next-run times arrive as datetimes; store them as ISO strings.
    def fallback(obj: Any) -> str:
        return obj.isoformat() if hasattr(obj, "isoformat") else str(obj)

    return json.dumps(value, sort_keys=True, default=fallback)


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _to_json(v) if isinstance(v, (dict, list)) else v for k, v in row.items()
    }


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in JSON_COLUMNS & row.keys():
        if isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row


def _check_choice(name: str, value: str, allowed: set[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, not {value!r}")


def _is_write_error(error: sqlite3.OperationalError) -> bool:
    """Disk full, or a write refused by the OS (e.g. a file size limit)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_IOERR, _SQLITE_FULL)
    return "disk" in str(error)


def _is_lock_error(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


F = TypeVar("F", bound=Callable[..., Any])


def _guarded(method: F) -> F:
    """Serialise use of the shared connection across threads and translate lock errors."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self._lock, self._lock_errors_as_store_errors():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --- schema -----------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    started TEXT NOT NULL,
    finished TEXT,
    base_checkpoint_id INTEGER,
    start_step INTEGER,
    steps INTEGER,
    new_lines INTEGER,
    replay_lines INTEGER,
    val_bpc_before REAL,
    val_bpc_after REAL,
    promoted INTEGER,
    checkpoint_id INTEGER,
    bad_steps INTEGER,
    config TEXT,
    error TEXT
);
CREATE INDEX idx_runs_status ON runs (status);
CREATE TABLE losses (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'train',
    loss REAL,
    val_bpc REAL,
    learning_rate REAL,
    grad_norm REAL,
    chars_per_s REAL,
    created TEXT NOT NULL
);
CREATE INDEX idx_losses_run_id_step ON losses (run_id, step);
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    step INTEGER NOT NULL,
    run_id INTEGER,
    train_loss REAL,
    val_bpc REAL,
    corpus_cursor INTEGER NOT NULL,
    vocab_hash TEXT NOT NULL,
    vocab_size INTEGER NOT NULL,
    config TEXT NOT NULL,
    created TEXT NOT NULL,
    is_latest INTEGER NOT NULL DEFAULT 0,
    is_best INTEGER NOT NULL DEFAULT 0,
    is_promoted INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE ingests (
    id INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    unknown_chars INTEGER NOT NULL,
    new_chars TEXT NOT NULL,
    run_id INTEGER,
    file_identity TEXT NOT NULL,
    rejected_reasons TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX idx_ingests_file ON ingests (file);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    seed TEXT,
    temperature REAL,
    top_k INTEGER,
    checkpoint_id INTEGER,
    checkpoint_step INTEGER,
    mean_logprob REAL,
    copied INTEGER NOT NULL DEFAULT 0,
    novelty REAL,
    source TEXT,
    mode TEXT,
    ended TEXT,
    status TEXT NOT NULL DEFAULT 'new',
    created TEXT NOT NULL,
    reviewed TEXT
);
CREATE INDEX idx_samples_created ON samples (created);
CREATE INDEX idx_samples_seed ON samples (seed);
CREATE INDEX idx_samples_checkpoint_id ON samples (checkpoint_id);
CREATE INDEX idx_samples_status ON samples (status);
CREATE TABLE daemon (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    state TEXT NOT NULL,
    next_jobs TEXT NOT NULL,
    started TEXT NOT NULL,
    beat TEXT NOT NULL
);
CREATE TABLE job_events (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    event TEXT NOT NULL,
    error TEXT,
    duration_s REAL,
    created TEXT NOT NULL
);
"""


def _migrate_to_1(db: sqlite_utils.Database) -> None:
    db.executescript(_SCHEMA_V1)
    # Triggers keep samples_fts in sync with every insert, update and delete.
    db["samples"].enable_fts(["text"], create_triggers=True)
    db.execute("INSERT INTO meta (key, value) VALUES ('app', ?)", [APP])


# Version 2: fine-tunes judged on what was new and against the served model (issue 11).
_SCHEMA_V2 = """
ALTER TABLE runs ADD COLUMN val_new_bpc_before REAL;
ALTER TABLE runs ADD COLUMN val_new_bpc_after REAL;
ALTER TABLE runs ADD COLUMN new_val_lines INTEGER;
ALTER TABLE runs ADD COLUMN promotion TEXT;
ALTER TABLE checkpoints ADD COLUMN val_new_bpc REAL;
ALTER TABLE job_events ADD COLUMN delay_s REAL;
"""

# Version 3: indexes for the /metrics scrape: its counts read these narrow indexes only, and the
# last duration of each job is one index search, not a scan of job_events per job.
_METRICS_INDEXES = """
CREATE INDEX IF NOT EXISTS idx_job_events_job_id_event ON job_events (job_id, event);
CREATE INDEX IF NOT EXISTS idx_samples_status_source ON samples (status, source);
"""

# Version 4 (issue 12): candidate selection's score and its parts per tweet, the normalised text
# that finds repeats of stored tweets, and the webhook outbox.
_SCHEMA_SELECTION_OUTBOX = """
ALTER TABLE samples ADD COLUMN score REAL;
ALTER TABLE samples ADD COLUMN fluency REAL;
ALTER TABLE samples ADD COLUMN candidates INTEGER;
ALTER TABLE samples ADD COLUMN text_key TEXT;
CREATE INDEX idx_samples_text_key ON samples (text_key);
CREATE INDEX idx_samples_score ON samples (score);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    sample_id INTEGER NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT NOT NULL,
    last_error TEXT,
    created TEXT NOT NULL,
    delivered TEXT
);
CREATE INDEX idx_outbox_status_next ON outbox (status, next_attempt);
"""


def _migrate_to_2(db: sqlite_utils.Database) -> None:
    _run_statements(db, _SCHEMA_V2)


def _migrate_to_3(db: sqlite_utils.Database) -> None:
    _run_statements(db, _METRICS_INDEXES)


def _migrate_to_4(db: sqlite_utils.Database) -> None:
    from .novelty import text_key  # the one normalisation, also used for new tweets

    _run_statements(db, _SCHEMA_SELECTION_OUTBOX)
    for row_id, text in db.execute("SELECT id, text FROM samples").fetchall():
        db.execute("UPDATE samples SET text_key = ? WHERE id = ?", [text_key(text), row_id])


def _run_statements(db: sqlite_utils.Database, sql: str) -> None:
    # One statement at a time: executescript would commit the migration's transaction first.
    for statement in filter(str.strip, sql.split(";")):
        db.execute(statement)


# MIGRATIONS[n] upgrades a version n-1 database to version n. Version 0 is an
# empty file. To add version N: write _migrate_to_N, add it here, bump SCHEMA_VERSION.
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    1: _migrate_to_1,
    2: _migrate_to_2,
    3: _migrate_to_3,
    4: _migrate_to_4,
}

TABLES = (
    "meta",
    "runs",
    "losses",
    "checkpoints",
    "ingests",
    "samples",
    "daemon",
    "job_events",
    "outbox",
)


class Store:
    """One open tweetgen database. Safe to share between threads of one process."""

    path: Path
    db: sqlite_utils.Database

    def __init__(self, path: Path, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False because the daemon's scheduler and HTTP threads
        # share this Store; self._lock makes sure only one uses the connection at a time.
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            with self._lock_errors_as_store_errors():
                self.db = sqlite_utils.Database(conn)
                self._open()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(
                f"{self.path} is not a usable SQLite database ({e}): "
                "move it aside or point tweetgen at another db file"
            ) from e
        except BaseException:
            conn.close()
            raise

    def _open(self) -> None:
        self.db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        # Check ownership and version before WAL, so a foreign or newer file is never modified.
        if self._schema_version() < SCHEMA_VERSION or self.db.journal_mode != "wal":
            self._migrate()  # a new file, an older tweetgen's, or a restored backup
        self._columns = {t: set(self.db[t].columns_dict) for t in TABLES}

    def _schema_version(self) -> int:
        tables = set(self.db.table_names())
        if not tables:
            return 0
        has_meta = "meta" in tables and {"key", "value"} <= set(
            self.db["meta"].columns_dict
        )
        if not has_meta or self._meta("app") != APP:
            raise StoreError(
                f"{self.path} is a foreign database (not created by tweetgen): "
                "point tweetgen at another db file"
            )
        version = int(self._meta("schema_version") or 0)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this tweetgen "
                f"({SCHEMA_VERSION}): upgrade tweetgen"
            )
        return version

    def _migrate(self) -> None:
        """Brings the file to WAL mode and the current schema."""
        # One process migrates at a time: some steps (executescript, sqlite-utils' FTS setup)
        # commit on their own, so the write lock alone would let a second process see, and
        # migrate again, a half-made schema. The switch to WAL is made under the flock too:
        # SQLite answers "database is locked" at once, without waiting out the busy timeout,
        # to connections that switch the same file at the same moment (measured: 5 of 1,200
        # concurrent first opens). The flock is dropped by the kernel if we die.
        with open(self.path.with_name(self.path.name + ".migrate.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.db.enable_wal()
            with self._transaction():
                # Re-read under both locks: another process may have migrated meanwhile.
                for version in range(self._schema_version() + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[version](self.db)
                    self._put_meta("schema_version", str(version))

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _lock_errors_as_store_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as e:
            if _is_write_error(e):
                raise StoreError(
                    f"cannot write {self.path} ({e}): free disk space; nothing stored is lost "
                    "and the job will retry"
                ) from e
            if not _is_lock_error(e):
                raise
            raise StoreError(
                f"{self.path} is locked by another writer "
                f"(busy for {self.busy_timeout_s:g}s): the job will retry"
            ) from e

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """All-or-nothing block of writes.

        BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
        timeout); a deferred BEGIN that reads first can fail at once with
        SQLITE_BUSY when it later tries to write. Nested use becomes a savepoint.
        """
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return [_decode(row) for row in self.db.query(sql, params or [])]

    def _one(self, sql: str, params: list[Any] | None = None) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _check_columns(self, table: str, row: dict[str, Any]) -> None:
        # Column names end up in SQL text, so only known ones are allowed.
        unknown = set(row) - self._columns[table]
        if unknown:
            raise ValueError(f"unknown {table} column(s): {', '.join(sorted(unknown))}")

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        self._check_columns(table, row)
        row = _encode(row)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
        return self.db.execute(sql, list(row.values())).lastrowid

    def _update(self, table: str, row_id: int, fields: dict[str, Any]) -> None:
        self._check_columns(table, fields)
        if not fields:
            return
        fields = _encode(fields)
        sets = ", ".join(f"{column} = ?" for column in fields)
        sql = f"UPDATE {table} SET {sets} WHERE id = ?"
        if self.db.execute(sql, [*fields.values(), row_id]).rowcount == 0:
            raise ValueError(f"no {table} row with id {row_id}")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def _put_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )

    # --- runs ---------------------------------------------------------------

    @_guarded
    def start_run(self, kind: str, pid: int, **fields: Any) -> int:
        _check_choice("kind", kind, RUN_KINDS)
        row = {
            **fields,
            "kind": kind,
            "pid": pid,
            "status": "running",
            "started": utc_now(),
        }
        return self._insert("runs", row)

    @_guarded
    def finish_run(self, run_id: int, status: str, **fields: Any) -> None:
        _check_choice("status", status, RUN_STATUSES)
        self._update(
            "runs", run_id, {**fields, "status": status, "finished": utc_now()}
        )

    @_guarded
    def update_run(self, run_id: int, **fields: Any) -> None:
        if "status" in fields:
            _check_choice("status", fields["status"], RUN_STATUSES)
        self._update("runs", run_id, fields)

    @_guarded
    def mark_running_as_crashed(self) -> list[int]:
        with self._transaction():
            ids = [
                r["id"]
                for r in self._rows("SELECT id FROM runs WHERE status = 'running'")
            ]
            self.db.execute(
                "UPDATE runs SET status = 'crashed', finished = ?, error = ? "
                "WHERE status = 'running'",
                [utc_now(), CRASHED_ERROR],
            )
        return ids

    @_guarded
    def fail_running_runs(self, pid: int, error: str) -> list[int]:
        """Runs of process `pid` still 'running' once its job has ended (a database error kept
        the job from recording its end): marked failed with `error`."""
        with self._transaction():
            ids = [r["id"] for r in self._rows(
                "SELECT id FROM runs WHERE status = 'running' AND pid = ?", [pid])]
            self.db.execute(
                "UPDATE runs SET status = 'failed', finished = ?, error = ? "
                "WHERE status = 'running' AND pid = ?",
                [utc_now(), error, pid],
            )
        return ids

    @_guarded
    def list_runs(self, limit: int = 20) -> list[dict]:
        return self._rows("SELECT * FROM runs ORDER BY id DESC LIMIT ?", [limit])

    @_guarded
    def last_run(self, kind: str, status: str) -> dict | None:
        return self._one("SELECT * FROM runs WHERE kind = ? AND status = ? ORDER BY id DESC LIMIT 1",
                         [kind, status])

    @_guarded
    def get_run(self, run_id: int) -> dict | None:
        return self._one("SELECT * FROM runs WHERE id = ?", [run_id])

    # --- losses -------------------------------------------------------------

    @_guarded
    def log_losses(self, run_id: int, rows: list[dict]) -> None:
        now = utc_now()
        with self._transaction():
            for row in rows:
                self._insert(
                    "losses", {"kind": "train", **row, "run_id": run_id, "created": now}
                )

    @_guarded
    def losses(self, run_id: int | None = None, limit: int | None = None) -> list[dict]:
        """Loss rows in step order; with a limit, the last `limit` of them (for charts)."""
        where, params = (
            ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
        )
        latest = f"SELECT * FROM losses {where} ORDER BY step DESC, id DESC LIMIT ?"
        params.append(-1 if limit is None else limit)
        return self._rows(f"SELECT * FROM ({latest}) ORDER BY step, id", params)

    # --- checkpoints --------------------------------------------------------

    @_guarded
    def record_checkpoint(
        self,
        path: str,
        step: int,
        run_id: int | None,
        train_loss: float | None,
        val_bpc: float | None,
        corpus_cursor: int,
        vocab_hash: str,
        vocab_size: int,
        config: dict,
        val_new_bpc: float | None = None,
    ) -> int:
        row = {
            "path": str(path),
            "step": step,
            "run_id": run_id,
            "train_loss": train_loss,
            "val_bpc": val_bpc,
            "corpus_cursor": corpus_cursor,
            "vocab_hash": vocab_hash,
            "vocab_size": vocab_size,
            "config": _to_json(config),
            "val_new_bpc": val_new_bpc,
            "created": utc_now(),
        }
        # Re-recording a path (the file was overwritten) updates that row in place,
        # keeping its id and flags, so samples that reference it stay valid.
        updates = ", ".join(f"{c} = excluded.{c}" for c in row if c != "path")
        with self._transaction():
            self.db.execute(
                f"INSERT INTO checkpoints ({', '.join(row)}) "
                f"VALUES ({', '.join('?' for _ in row)}) "
                f"ON CONFLICT (path) DO UPDATE SET {updates}, deleted = 0",
                list(row.values()),
            )
            found = self.db.execute(
                "SELECT id FROM checkpoints WHERE path = ?", [row["path"]]
            )
            return found.fetchone()[0]

    @_guarded
    def set_checkpoint_flags(
        self,
        latest: str | None = None,
        best: str | None = None,
        promoted: str | None = None,
    ) -> None:
        flags = {"is_latest": latest, "is_best": best, "is_promoted": promoted}
        with self._transaction():
            for column, path in flags.items():
                if path is None:
                    continue
                path = str(path)
                known = self.db.execute(
                    "SELECT 1 FROM checkpoints WHERE path = ?", [path]
                ).fetchone()
                if known is None:
                    raise ValueError(f"no checkpoint recorded at {path}")
                # (path = ?) is 1 for the chosen row and 0 for the one that had the flag.
                self.db.execute(
                    f"UPDATE checkpoints SET {column} = (path = ?) WHERE {column} = 1 OR path = ?",
                    [path, path],
                )

    @_guarded
    def delete_checkpoint_rows_not_in(self, existing_paths: list[str]) -> None:
        # Rows are only flagged: samples keep referring to checkpoints whose files rotated away.
        self.db.execute(
            "UPDATE checkpoints SET deleted = (path NOT IN (SELECT value FROM json_each(?)))",
            [json.dumps([str(p) for p in existing_paths])],
        )

    @_guarded
    def get_checkpoint(self, id_or_path: int | str) -> dict | None:
        column = "id" if isinstance(id_or_path, int) else "path"
        value = id_or_path if column == "id" else str(id_or_path)
        return self._one(f"SELECT * FROM checkpoints WHERE {column} = ?", [value])

    @_guarded
    def promoted_checkpoint(self) -> dict | None:
        return self._one("SELECT * FROM checkpoints WHERE is_promoted = 1")

    @_guarded
    def latest_checkpoint(self) -> dict | None:
        return self._one("SELECT * FROM checkpoints WHERE is_latest = 1")

    @_guarded
    def best_checkpoint(self) -> dict | None:
        return self._one("SELECT * FROM checkpoints WHERE is_best = 1")

    @_guarded
    def list_checkpoints(self) -> list[dict]:
        """All checkpoints, newest step first, including rotated-away (deleted=1) ones."""
        return self._rows("SELECT * FROM checkpoints ORDER BY step DESC, id DESC")

    # --- ingests ------------------------------------------------------------

    @_guarded
    def record_ingest(
        self,
        file: str,
        start_offset: int,
        end_offset: int,
        lines: int,
        rejected: int,
        unknown_chars: int,
        new_chars: str,
        run_id: int | None,
        file_identity: dict,
        rejected_reasons: dict,
        meta: dict[str, str] | None = None,
    ) -> int:
        """One ingest row; `meta` keys are set in the same transaction (all or nothing)."""
        row = {
            "file": str(file),
            "start_offset": start_offset,
            "end_offset": end_offset,
            "lines": lines,
            "rejected": rejected,
            "unknown_chars": unknown_chars,
            "new_chars": new_chars,
            "run_id": run_id,
            "file_identity": _to_json(file_identity),
            "rejected_reasons": _to_json(rejected_reasons),
            "created": utc_now(),
        }
        with self._transaction():
            for key, value in (meta or {}).items():
                self._put_meta(key, value)
            return self._insert("ingests", row)

    @_guarded
    def cursor(self, file: str) -> dict | None:
        row = self._one(
            "SELECT end_offset, file_identity FROM ingests WHERE file = ? ORDER BY id DESC LIMIT 1",
            [str(file)],
        )
        if row is None:
            return None
        return {"offset": row["end_offset"], "identity": row["file_identity"]}

    @_guarded
    def list_ingests(self, limit: int = 20) -> list[dict]:
        return self._rows("SELECT * FROM ingests ORDER BY id DESC LIMIT ?", [limit])

    # --- samples ------------------------------------------------------------

    @_guarded
    def add_samples(self, rows: list[dict]) -> list[int]:
        from .novelty import text_key

        now = utc_now()
        ids = []
        with self._transaction():
            for row in rows:
                key = text_key(row["text"]) if isinstance(row.get("text"), str) else None
                row = {"status": "new", "text_key": key, **row, "created": now}
                ids.append(self._insert("samples", row))
                faults.crash_point("samples-insert")
        return ids

    @staticmethod
    def _sample_filters(
        since: str | None = None,
        seed: str | None = None,
        checkpoint_id: int | None = None,
        status: str | None = None,
        search: str | None = None,
        novel_only: bool = False,
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("created >= ?")
            params.append(to_utc_iso(since))
        for column, value in (
            ("seed", seed),
            ("checkpoint_id", checkpoint_id),
            ("status", status),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if search is not None:
            query = fts_query(search)
            if query is None:
                clauses.append("0")  # nothing searchable in it, so nothing matches
            else:
                clauses.append(
                    "id IN (SELECT rowid FROM samples_fts WHERE samples_fts MATCH ?)"
                )
                params.append(query)
        if novel_only:
            clauses.append("copied = 0")
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

    @_guarded
    def query_samples(
        self,
        since: str | None = None,
        seed: str | None = None,
        checkpoint_id: int | None = None,
        status: str | None = None,
        search: str | None = None,
        novel_only: bool = False,
        limit: int = 50,
        offset: int = 0,
        order: str = "newest",
    ) -> list[dict]:
        """Matching tweets, newest first; order="score": best first (unscored last);
        order="reviewed": latest reviewed first."""
        _check_choice("order", order, set(SAMPLE_ORDERS))
        where, params = self._sample_filters(
            since, seed, checkpoint_id, status, search, novel_only
        )
        sql = f"SELECT * FROM samples {where} ORDER BY {SAMPLE_ORDERS[order]} LIMIT ? OFFSET ?"
        return self._rows(sql, [*params, limit, offset])

    @_guarded
    def count_samples(
        self,
        since: str | None = None,
        seed: str | None = None,
        checkpoint_id: int | None = None,
        status: str | None = None,
        search: str | None = None,
        novel_only: bool = False,
    ) -> int:
        where, params = self._sample_filters(
            since, seed, checkpoint_id, status, search, novel_only
        )
        return self.db.execute(
            f"SELECT count(*) FROM samples {where}", params
        ).fetchone()[0]

    @_guarded
    def get_sample(self, sample_id: int) -> dict | None:
        return self._one("SELECT * FROM samples WHERE id = ?", [sample_id])

    @_guarded
    def review(self, sample_ids: list[int], status: str) -> int:
        _check_choice("status", status, REVIEW_STATUSES)
        cursor = self.db.execute(
            "UPDATE samples SET status = ?, reviewed = ? "
            "WHERE id IN (SELECT value FROM json_each(?))",
            [status, utc_now(), json.dumps([int(i) for i in sample_ids])],
        )
        return cursor.rowcount

    @_guarded
    def existing_text_keys(self, keys: list[str]) -> set[str]:
        """Which of these text keys (novelty.text_key) stored tweets already have."""
        rows = self.db.execute(
            "SELECT DISTINCT text_key FROM samples WHERE text_key IN (SELECT value FROM json_each(?))",
            [json.dumps(keys)],
        )
        return {row[0] for row in rows}

    @_guarded
    def status_counts(self) -> dict[str, int]:
        """Tweets per review status, every status present (0 when none)."""
        return self._counts_by_status("samples", REVIEW_STATUSES)

    @_guarded
    def export_samples(self, status: str, since: str | None = None) -> list[dict]:
        """Every tweet with `status`, oldest first; `since` keeps those that reached the status
        (were reviewed, or for new ones created) at or after that time."""
        _check_choice("status", status, REVIEW_STATUSES)
        column = "created" if status == "new" else "reviewed"
        where, params = "WHERE status = ?", [status]
        if since is not None:
            where += f" AND {column} >= ?"
            params.append(to_utc_iso(since))
        return self._rows(f"SELECT * FROM samples {where} ORDER BY {column}, id", params)

    # --- aggregates (for the Prometheus endpoint) ---------------------------

    @_guarded
    def count_by(self, table: str, *columns: str) -> list[dict]:
        """Row counts of `table` grouped by `columns`: [{column: value, ..., "count": n}]."""
        self._check_columns(table, dict.fromkeys(columns))
        names = ", ".join(columns)
        return self._rows(f"SELECT {names}, count(*) AS count FROM {table} GROUP BY {names}")

    @_guarded
    def job_durations(self) -> list[dict]:
        """Per job: executed runs, their total and their last duration in seconds."""
        return self._rows(
            "SELECT job_id, count(*) AS count, total(duration_s) AS total_s, "
            "(SELECT duration_s FROM job_events AS last WHERE last.job_id = e.job_id "
            "AND last.event = 'executed' ORDER BY last.id DESC LIMIT 1) AS last_s "
            "FROM job_events AS e WHERE event = 'executed' GROUP BY job_id"
        )

    # --- the webhook outbox (tweetgen.outbox) -------------------------------

    @_guarded
    def instance_id(self) -> str:
        """A random id of this database, made once: feed entry ids and idempotency keys use it."""
        with self._transaction():
            value = self._meta("instance_id")
            if value is None:
                import uuid

                value = str(uuid.uuid4())
                self._put_meta("instance_id", value)
        return value

    @_guarded
    def enqueue_approved(self, message: Callable[[dict], tuple[str, dict]]) -> int:
        """An outbox row for each approved tweet that has none yet; `message(tweet)` gives its
        idempotency key and payload. Returns how many were added."""
        now = utc_now()
        with self._transaction():
            rows = self._rows(
                "SELECT * FROM samples WHERE status = 'approved' "
                "AND id NOT IN (SELECT sample_id FROM outbox) ORDER BY reviewed, id"
            )
            for row in rows:
                key, payload = message(row)
                self._insert("outbox", {"sample_id": row["id"], "idempotency_key": key,
                                        "payload": _to_json(payload), "status": "pending",
                                        "next_attempt": now, "created": now})
        return len(rows)

    @_guarded
    def due_outbox(self, limit: int = 100) -> list[dict]:
        """Pending messages whose next attempt is due, oldest first, with their tweet's status."""
        return self._rows(
            "SELECT outbox.*, samples.status AS tweet_status FROM outbox "
            "LEFT JOIN samples ON samples.id = outbox.sample_id "
            "WHERE outbox.status = 'pending' AND next_attempt <= ? ORDER BY outbox.id LIMIT ?",
            [utc_now(), limit],
        )

    @_guarded
    def outbox_attempted(self, outbox_id: int, status: str, error: str | None = None,
                         next_attempt: str | None = None) -> None:
        """Record one delivery attempt's outcome: delivered, failed, cancelled, or pending again
        (then `next_attempt` says when)."""
        _check_choice("status", status, OUTBOX_STATUSES)
        now = utc_now()
        self.db.execute(
            "UPDATE outbox SET status = ?, attempts = attempts + ?, last_error = ?, "
            "next_attempt = coalesce(?, next_attempt), delivered = ? WHERE id = ?",
            [status, 0 if status == "cancelled" else 1, error, next_attempt,
             now if status == "delivered" else None, outbox_id],
        )

    @_guarded
    def outbox_rows(self, statuses: list[str], limit: int = 100) -> list[dict]:
        return self._rows(
            "SELECT id, sample_id, idempotency_key, status, attempts, next_attempt, last_error, "
            "created, delivered FROM outbox WHERE status IN (SELECT value FROM json_each(?)) "
            "ORDER BY id LIMIT ?",
            [json.dumps(statuses), limit],
        )

    @_guarded
    def outbox_counts(self) -> dict[str, int]:
        return self._counts_by_status("outbox", OUTBOX_STATUSES)

    def _counts_by_status(self, table: str, statuses: set[str]) -> dict[str, int]:
        """Rows of `table` (a fixed name, never user input) per status, every status present."""
        counts = dict.fromkeys(sorted(statuses), 0)
        for status, count in self.db.execute(f"SELECT status, count(*) FROM {table} GROUP BY status"):
            counts[status] = count
        return counts

    @_guarded
    def retry_failed_outbox(self) -> int:
        """Failed messages made pending again, due now."""
        return self.db.execute(
            "UPDATE outbox SET status = 'pending', next_attempt = ? WHERE status = 'failed'",
            [utc_now()],
        ).rowcount

    # --- daemon liveness and scheduler events -------------------------------

    @_guarded
    def heartbeat(
        self, pid: int, host: str, next_jobs: dict, state: str = "running"
    ) -> None:
        now = utc_now()
        # `started` survives beats from the same pid, so it tells how long this daemon is up.
        self.db.execute(
            "INSERT INTO daemon (id, pid, host, state, next_jobs, started, beat) "
            "VALUES (1, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, host = excluded.host, "
            "state = excluded.state, next_jobs = excluded.next_jobs, beat = excluded.beat, "
            "started = CASE WHEN daemon.pid = excluded.pid AND daemon.host = excluded.host "
            "THEN daemon.started ELSE excluded.started END",
            [pid, host, state, _to_json(next_jobs), now, now],
        )

    @_guarded
    def daemon_info(self) -> dict | None:
        return self._one("SELECT * FROM daemon WHERE id = 1")

    @_guarded
    def record_job_event(
        self,
        job_id: str,
        event: str,
        error: str | None = None,
        duration_s: float | None = None,
        delay_s: float | None = None,
    ) -> None:
        _check_choice("event", event, JOB_EVENTS)
        row = {
            "job_id": job_id,
            "event": event,
            "error": error,
            "duration_s": duration_s,
            "delay_s": delay_s,
            "created": utc_now(),
        }
        self._insert("job_events", row)

    @_guarded
    def list_job_events(self, limit: int = 20) -> list[dict]:
        return self._rows("SELECT * FROM job_events ORDER BY id DESC LIMIT ?", [limit])

    # --- meta ---------------------------------------------------------------

    @_guarded
    def get_meta(self, key: str) -> str | None:
        return self._meta(key)

    @_guarded
    def set_meta(self, key: str, value: str) -> None:
        self._put_meta(key, value)

    # --- read-only use ------------------------------------------------------

    def read_only(self) -> Self:
        """Make this connection refuse writes (PRAGMA query_only), for a second Store that
        serves reads: in WAL mode they then never queue behind a write waiting for the lock."""
        with self._lock:
            self.db.execute("PRAGMA query_only = 1")
        return self

    # --- maintenance (tweetgen.maintenance) ---------------------------------

    @_guarded
    def delete_batch(self, table: str, where: str, params: list[Any], limit: int) -> int:
        """Delete at most `limit` rows of `table` matching `where` (SQL from tweetgen.maintenance,
        never from user input); one short transaction, so other writers wait one batch at most."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        with self._transaction():
            return self.db.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} LIMIT ?)",
                [*params, limit],
            ).rowcount

    @_guarded
    def newest_run_before_last(self, count: int) -> int:
        """The id of the newest run that is not among the last `count` runs (0: none)."""
        row = self.db.execute("SELECT coalesce(max(id), 0) FROM runs WHERE id NOT IN "
                              "(SELECT id FROM runs ORDER BY id DESC LIMIT ?)", [count]).fetchone()
        return int(row[0])

    @_guarded
    def checkpoint_wal(self) -> dict[str, int]:
        """Copy the WAL into the database and truncate it to zero bytes. `busy` is 1 when a
        reader kept part of it (the next checkpoint gets the rest)."""
        busy, log_pages, done = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return {"busy": busy, "wal_pages": log_pages, "checkpointed_pages": done}

    @_guarded
    def vacuum(self) -> None:
        """Rewrite the file without its free pages (needs its size again in free disk space)."""
        self.db.execute("VACUUM")
