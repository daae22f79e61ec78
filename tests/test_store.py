"""Tests for tweetgen.store against real SQLite files."""

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
import sqlite_utils

from tweetgen import store as store_module
from tweetgen.store import SCHEMA_VERSION, Store, StoreError, fts_query, utc_now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db" / "x.db"


@pytest.fixture
def store(db_path: Path):
    s = Store(db_path)
    yield s
    s.close()


def add_checkpoint(store: Store, path: str, step: int = 100, **overrides) -> int:
    fields = {
        "path": path,
        "step": step,
        "run_id": None,
        "train_loss": 1.5,
        "val_bpc": 2.0,
        "corpus_cursor": 10,
        "vocab_hash": "abc",
        "vocab_size": 80,
        "config": {"hidden": 512},
        **overrides,
    }
    return store.record_checkpoint(**fields)


def sample(text: str, **overrides) -> dict:
    return {
        "text": text,
        "seed": "",
        "temperature": 0.8,
        "top_k": 40,
        "checkpoint_id": 1,
        "checkpoint_step": 100,
        "mean_logprob": -1.2,
        "copied": False,
        "novelty": 0.9,
        "source": "scheduled",
        "mode": "continue",
        **overrides,
    }


# --- opening, schema, refusals ------------------------------------------------


def test_creates_schema_and_reopens(db_path: Path):
    s = Store(db_path)
    assert db_path.exists()
    assert s.db.journal_mode == "wal"
    assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
    assert s.get_meta("app") == "tweetgen"
    tables = set(s.db.table_names())
    assert {
        "meta",
        "runs",
        "losses",
        "checkpoints",
        "ingests",
        "samples",
        "samples_fts",
    } <= tables
    assert {"daemon", "job_events"} <= tables
    indexes = {
        row["name"]
        for row in s.db.query("select name from sqlite_master where type = 'index'")
    }
    for name in [
        "idx_samples_created",
        "idx_samples_seed",
        "idx_samples_checkpoint_id",
        "idx_samples_status",
        "idx_losses_run_id_step",
        "idx_runs_status",
        "idx_ingests_file",
    ]:
        assert name in indexes
    run_id = s.start_run("initial", pid=1)
    s.close()

    with Store(db_path) as again:
        assert again.get_run(run_id)["kind"] == "initial"
        assert again.get_meta("schema_version") == str(SCHEMA_VERSION)


def test_busy_timeout_is_applied(tmp_path: Path):
    with Store(tmp_path / "x.db", busy_timeout_s=2.5) as s:
        assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] == 2500


def test_empty_file_is_treated_as_version_zero(db_path: Path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"")
    with Store(db_path) as s:
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)


def test_newer_schema_version_is_refused(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path("db/x.db")
    newer = SCHEMA_VERSION + 1
    Store(path).set_meta("schema_version", str(newer))
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(info.value) == (
        f"db/x.db has schema version {newer}, newer than this tweetgen ({SCHEMA_VERSION}): "
        "upgrade tweetgen"
    )


def test_foreign_database_is_refused_and_left_alone(db_path: Path):
    db_path.parent.mkdir(parents=True)
    foreign = sqlite_utils.Database(db_path)
    foreign["people"].insert({"name": "Cleo"})
    foreign.close()
    with pytest.raises(StoreError, match="foreign") as info:
        Store(db_path)
    assert str(db_path) in str(info.value)
    # It must not have been switched to WAL or given tweetgen tables.
    check = sqlite_utils.Database(db_path)
    assert check.journal_mode == "delete"
    assert check.table_names() == ["people"]
    check.close()


def test_database_with_someone_elses_meta_table_is_foreign(db_path: Path):
    db_path.parent.mkdir(parents=True)
    foreign = sqlite_utils.Database(db_path)
    foreign["meta"].insert({"key": "app", "value": "other"})
    foreign.close()
    with pytest.raises(StoreError, match="foreign"):
        Store(db_path)


def test_garbage_file_is_refused(db_path: Path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite at all\x00\xff" * 200)
    with pytest.raises(StoreError, match="not a usable SQLite database") as info:
        Store(db_path)
    assert str(db_path) in str(info.value)


def test_migrations_run_in_order(db_path: Path, monkeypatch):
    Store(db_path).close()

    def migrate_to_next(db: sqlite_utils.Database) -> None:
        db.execute("ALTER TABLE samples ADD COLUMN language TEXT")

    following = SCHEMA_VERSION + 1
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", following)
    monkeypatch.setitem(store_module.MIGRATIONS, following, migrate_to_next)
    with Store(db_path) as s:
        assert s.get_meta("schema_version") == str(following)
        [sample_id] = s.add_samples([sample("hola", language="es")])
        assert s.get_sample(sample_id)["language"] == "es"


def test_version_1_database_gains_scores_text_keys_and_the_outbox(db_path: Path, monkeypatch):
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 1)
    with Store(db_path) as old:
        old_id = old.db.execute("INSERT INTO samples (text, created) VALUES ('Fix  typo.', ?)",
                                [utc_now()]).lastrowid
        old.db.conn.commit()
    monkeypatch.undo()
    with Store(db_path) as s:
        assert int(s.get_meta("schema_version")) >= 2
        row = s.get_sample(old_id)
        assert row["text_key"] == "fix typo" and row["score"] is None
        assert s.existing_text_keys(["fix typo", "other"]) == {"fix typo"}
        assert s.outbox_counts() == {"cancelled": 0, "delivered": 0, "failed": 0, "pending": 0}


def test_store_can_be_shared_between_threads(store: Store):
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(store.add_samples, [sample("from a thread")]) for _ in range(8)
        ]
        for future in futures:
            future.result()  # re-raises anything that went wrong in the thread
    assert store.count_samples() == 8


# --- runs ---------------------------------------------------------------------


def test_run_lifecycle(store: Store):
    run_id = store.start_run("finetune", pid=123, base_checkpoint_id=7)
    run = store.get_run(run_id)
    assert run["status"] == "running"
    assert run["pid"] == 123
    assert run["base_checkpoint_id"] == 7
    assert datetime.fromisoformat(run["started"]).tzinfo == UTC
    assert run["finished"] is None

    store.update_run(run_id, steps=50, new_lines=12, replay_lines=36)
    store.finish_run(
        run_id,
        "completed",
        val_bpc_before=2.1,
        val_bpc_after=2.0,
        promoted=1,
        checkpoint_id=3,
    )
    run = store.get_run(run_id)
    assert (run["status"], run["steps"], run["promoted"], run["val_bpc_after"]) == (
        "completed",
        50,
        1,
        2.0,
    )
    assert run["finished"] >= run["started"]

    second = store.start_run("train", pid=124, config={"lr": 0.001})
    assert [r["id"] for r in store.list_runs()] == [second, run_id]
    assert [r["id"] for r in store.list_runs(limit=1)] == [second]
    assert store.get_run(second)["config"] == {"lr": 0.001}
    assert store.get_run(999) is None


def test_run_arguments_are_checked(store: Store):
    with pytest.raises(ValueError, match="kind"):
        store.start_run("party", pid=1)
    run_id = store.start_run("train", pid=1)
    with pytest.raises(ValueError, match="status"):
        store.finish_run(run_id, "exploded")
    with pytest.raises(ValueError, match="unknown runs column"):
        store.update_run(run_id, colour="red")
    with pytest.raises(ValueError, match="no runs row"):
        store.finish_run(999, "failed", error="boom")


def test_mark_running_as_crashed(store: Store):
    done = store.start_run("initial", pid=1)
    store.finish_run(done, "completed")
    left_a = store.start_run("finetune", pid=2)
    left_b = store.start_run("finetune", pid=3)

    assert sorted(store.mark_running_as_crashed()) == [left_a, left_b]
    crashed = store.get_run(left_a)
    assert crashed["status"] == "crashed"
    assert crashed["error"] == "process died (found running at next start)"
    assert crashed["finished"] is not None
    assert store.get_run(done)["status"] == "completed"
    assert store.mark_running_as_crashed() == []


# --- losses -------------------------------------------------------------------


def test_losses_are_ordered_by_step(store: Store):
    run_a = store.start_run("initial", pid=1)
    run_b = store.start_run("finetune", pid=1)
    store.log_losses(
        run_a,
        [
            {"step": 20, "loss": 2.0, "learning_rate": 1e-3, "grad_norm": 0.5},
            {
                "step": 10,
                "loss": 3.0,
                "learning_rate": 1e-3,
                "grad_norm": 0.7,
                "chars_per_s": 900,
            },
            {"step": 20, "kind": "val", "val_bpc": 2.9},
        ],
    )
    store.log_losses(
        run_b, [{"step": 30, "loss": 1.5, "learning_rate": 5e-4, "grad_norm": 0.3}]
    )

    rows = store.losses(run_a)
    assert [(r["step"], r["kind"]) for r in rows] == [
        (10, "train"),
        (20, "train"),
        (20, "val"),
    ]
    assert rows[0]["chars_per_s"] == 900
    assert rows[2]["loss"] is None and rows[2]["val_bpc"] == 2.9
    assert [r["step"] for r in store.losses()] == [10, 20, 20, 30]
    # A limit keeps the most recent rows, still in step order.
    assert [r["step"] for r in store.losses(limit=2)] == [20, 30]
    store.log_losses(run_a, [])


# --- checkpoints --------------------------------------------------------------


def test_record_checkpoint_upserts_by_path(store: Store):
    first = add_checkpoint(store, "checkpoints/a", step=100)
    other = add_checkpoint(store, "checkpoints/b", step=200)
    again = add_checkpoint(store, "checkpoints/a", step=300, config={"hidden": 256})
    assert again == first != other
    row = store.get_checkpoint("checkpoints/a")
    assert row["step"] == 300
    assert row["config"] == {"hidden": 256}
    assert store.get_checkpoint(first)["path"] == "checkpoints/a"
    assert store.get_checkpoint(999) is None
    assert [c["path"] for c in store.list_checkpoints()] == [
        "checkpoints/a",
        "checkpoints/b",
    ]


def test_checkpoint_flags_are_exclusive(store: Store):
    for i, name in enumerate("abc"):
        add_checkpoint(store, name, step=i)
    store.set_checkpoint_flags(latest="a", best="a", promoted="a")
    store.set_checkpoint_flags(latest="b")
    store.set_checkpoint_flags(latest="c", best="b")

    def flagged(column):
        return [c["path"] for c in store.list_checkpoints() if c[column]]

    assert flagged("is_latest") == ["c"]
    assert flagged("is_best") == ["b"]
    assert flagged("is_promoted") == ["a"]
    assert store.promoted_checkpoint()["path"] == "a"
    assert store.latest_checkpoint()["path"] == "c"
    assert store.best_checkpoint()["path"] == "b"

    # An unknown path changes nothing, not even the flags given before it.
    with pytest.raises(ValueError, match="no checkpoint"):
        store.set_checkpoint_flags(latest="a", promoted="missing")
    assert flagged("is_latest") == ["c"]
    assert flagged("is_promoted") == ["a"]


def test_no_promoted_checkpoint_yet(store: Store):
    assert store.promoted_checkpoint() is None


def test_rotated_checkpoints_are_flagged_deleted(store: Store):
    for name in "abc":
        add_checkpoint(store, name)
    store.delete_checkpoint_rows_not_in(["b"])
    assert {c["path"]: c["deleted"] for c in store.list_checkpoints()} == {
        "a": 1,
        "b": 0,
        "c": 1,
    }
    add_checkpoint(store, "a")  # the file came back
    assert store.get_checkpoint("a")["deleted"] == 0


# --- ingests ------------------------------------------------------------------


def record(store: Store, file: str, start: int, end: int, inode: int = 1) -> int:
    return store.record_ingest(
        file=file,
        start_offset=start,
        end_offset=end,
        lines=3,
        rejected=1,
        unknown_chars=2,
        new_chars="éß",
        run_id=None,
        file_identity={"inode": inode, "size": end},
        rejected_reasons={"invalid utf-8": 1},
    )


def test_cursor_comes_from_latest_ingest(store: Store):
    assert store.cursor("data/corpus.txt") is None
    record(store, "data/corpus.txt", 0, 100)
    record(store, "data/other.txt", 0, 7)
    record(store, "data/corpus.txt", 100, 250, inode=2)
    assert store.cursor("data/corpus.txt") == {
        "offset": 250,
        "identity": {"inode": 2, "size": 250},
    }
    assert store.cursor("data/other.txt")["offset"] == 7
    latest = store.list_ingests()
    assert [i["end_offset"] for i in latest] == [250, 7, 100]
    assert latest[0]["rejected_reasons"] == {"invalid utf-8": 1}
    assert latest[0]["new_chars"] == "éß"
    assert len(store.list_ingests(limit=1)) == 1


# --- samples ------------------------------------------------------------------


def test_add_and_get_samples(store: Store):
    ids = store.add_samples([sample("one"), sample("two", copied=True)])
    assert len(ids) == 2
    row = store.get_sample(ids[1])
    assert row["text"] == "two"
    assert row["copied"] == 1
    assert row["status"] == "new"
    assert row["reviewed"] is None
    assert datetime.fromisoformat(row["created"]).tzinfo == UTC
    assert store.get_sample(999) is None
    assert store.add_samples([]) == []


def test_add_samples_is_one_transaction(store: Store):
    with pytest.raises(sqlite3.IntegrityError):
        store.add_samples([sample("fine"), {"seed": "no text"}])
    assert store.count_samples() == 0


def test_query_samples_filters(store: Store):
    (old_id,) = store.add_samples([sample("old one", seed="cats", checkpoint_id=1)])
    store.db.execute("UPDATE samples SET created = '2020-01-01T00:00:00.000000+00:00'")
    mid_time = utc_now()
    ids = store.add_samples(
        [
            sample("cats are great", seed="cats", checkpoint_id=2),
            sample("dogs are fine", seed="dogs", checkpoint_id=2, copied=True),
            sample("birds sing", seed="", checkpoint_id=3),
        ]
    )
    store.review([ids[2]], "approved")

    def texts(**filters):
        return [r["text"] for r in store.query_samples(**filters)]

    assert texts() == ["birds sing", "dogs are fine", "cats are great", "old one"]
    assert texts(seed="cats") == ["cats are great", "old one"]
    assert texts(checkpoint_id=2) == ["dogs are fine", "cats are great"]
    assert texts(status="approved") == ["birds sing"]
    assert texts(novel_only=True) == ["birds sing", "cats are great", "old one"]
    assert texts(since=mid_time) == ["birds sing", "dogs are fine", "cats are great"]
    assert texts(since="2019-12-31") == texts()  # dates and naive times mean UTC
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert texts(since=later) == []
    assert texts(search="are") == ["dogs are fine", "cats are great"]
    assert texts(search="CATS great") == ["cats are great"]
    assert texts(seed="cats", since=mid_time, novel_only=True) == ["cats are great"]
    assert texts(limit=2) == ["birds sing", "dogs are fine"]
    assert texts(limit=2, offset=2) == ["cats are great", "old one"]
    assert store.count_samples() == 4
    assert store.count_samples(seed="cats", since=mid_time) == 1
    assert store.count_samples(search="are", novel_only=True) == 1
    assert store.get_sample(old_id)["seed"] == "cats"
    with pytest.raises(ValueError, match="ISO 8601"):
        store.query_samples(since="yesterday")


@pytest.mark.parametrize(
    "query, expected",
    [
        ("don't \"quote", ['don\'t "quote me"']),
        ("<script>", ["<script>alert(1)</script>"]),
        ("alert(1)", ["<script>alert(1)</script>"]),
        ("NOT", ["NOT a keyword"]),
        ('"', []),
        ("*", []),
        ("text:quote", []),
        ("a OR", []),  # every word is required; OR is just a word
        ("keyword NOT a", ["NOT a keyword"]),
        ("(", []),
        ("", []),
        ("   ", []),
        ("naïve café", ["naïve café"]),
    ],
)
def test_search_never_raises_on_punctuation(
    store: Store, query: str, expected: list[str]
):
    store.add_samples(
        [
            sample('don\'t "quote me"'),
            sample("<script>alert(1)</script>"),
            sample("NOT a keyword"),
            sample("naïve café"),
        ]
    )
    assert sorted(r["text"] for r in store.query_samples(search=query)) == sorted(
        expected
    )
    assert store.count_samples(search=query) == len(expected)


def test_fts_query_quotes_every_word():
    assert fts_query("don't \"quote") == '"don\'t" """quote"'
    assert fts_query("<> ! ?") is None


def test_search_index_follows_deletes(store: Store):
    [sample_id] = store.add_samples([sample("ephemeral words")])
    store.db.execute("DELETE FROM samples WHERE id = ?", [sample_id])
    assert store.query_samples(search="ephemeral") == []


def test_review(store: Store):
    ids = store.add_samples([sample("a"), sample("b"), sample("c")])
    assert store.review(ids[:2], "approved") == 2
    assert store.review([ids[2], 999], "rejected") == 1
    assert store.review([], "approved") == 0
    statuses = {
        r["id"]: (r["status"], r["reviewed"] is not None) for r in store.query_samples()
    }
    assert statuses == {
        ids[0]: ("approved", True),
        ids[1]: ("approved", True),
        ids[2]: ("rejected", True),
    }
    assert store.review([ids[0]], "new") == 1
    assert store.get_sample(ids[0])["status"] == "new"
    with pytest.raises(ValueError, match="status"):
        store.review(ids, "maybe")


# --- daemon, job events, meta ---------------------------------------------------


def test_heartbeat(store: Store):
    assert store.daemon_info() is None
    next_run = datetime(2030, 1, 1, tzinfo=UTC)
    store.heartbeat(pid=10, host="box", next_jobs={"finetune": next_run})
    first = store.daemon_info()
    assert first["pid"] == 10 and first["state"] == "running"
    assert first["next_jobs"] == {"finetune": "2030-01-01T00:00:00+00:00"}

    store.heartbeat(pid=10, host="box", next_jobs={}, state="stopping")
    second = store.daemon_info()
    assert second["state"] == "stopping"
    assert second["beat"] >= first["beat"]
    assert second["started"] == first["started"]

    store.heartbeat(pid=11, host="box", next_jobs={})
    third = store.daemon_info()
    assert third["pid"] == 11
    assert third["started"] == third["beat"]
    assert store.db.execute("SELECT count(*) FROM daemon").fetchone()[0] == 1


def test_job_events(store: Store):
    store.record_job_event("generate", "executed", duration_s=1.5)
    store.record_job_event("finetune", "error", error="boom")
    store.record_job_event("generate", "missed")
    events = store.list_job_events()
    assert [(e["job_id"], e["event"]) for e in events] == [
        ("generate", "missed"),
        ("finetune", "error"),
        ("generate", "executed"),
    ]
    assert events[1]["error"] == "boom"
    assert events[2]["duration_s"] == 1.5
    assert len(store.list_job_events(limit=1)) == 1
    with pytest.raises(ValueError, match="event"):
        store.record_job_event("generate", "exploded")


def test_meta(store: Store):
    assert store.get_meta("missing") is None
    store.set_meta("corpus", "data/corpus.txt")
    store.set_meta("corpus", "data/other.txt")
    assert store.get_meta("corpus") == "data/other.txt"


# --- concurrency --------------------------------------------------------------


def test_reader_is_not_blocked_by_open_write(db_path: Path):
    writer = Store(db_path)
    reader = Store(db_path, busy_timeout_s=0.2)
    with writer.db.atomic():
        writer.add_samples([sample("in flight")])
        # WAL: the reader sees the last committed state without waiting.
        assert reader.count_samples() == 0
    assert reader.count_samples() == 1
    assert reader.query_samples(search="flight")[0]["text"] == "in flight"
    writer.close()
    reader.close()


def test_lock_held_elsewhere_gives_store_error(db_path: Path):
    Store(db_path).close()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        s = Store(
            db_path, busy_timeout_s=0.2
        )  # opening an up-to-date db needs no write
        expected = (
            f"{db_path} is locked by another writer (busy for 0.2s): the job will retry"
        )
        with pytest.raises(StoreError) as info:
            s.start_run("train", pid=1)
        assert str(info.value) == expected
        with pytest.raises(StoreError, match="locked"):
            s.add_samples([sample("waiting")])
        assert s.list_runs() == []  # reads still work
    finally:
        other.execute("ROLLBACK")
        other.close()
    s.start_run("train", pid=1)
    assert len(s.list_runs()) == 1
    s.close()


def test_a_version_1_database_migrates_to_the_current_schema(db_path: Path):
    """Every migration runs on a database made by the first schema, keeping its rows."""
    db_path.parent.mkdir(parents=True)
    db = sqlite_utils.Database(db_path)
    store_module.MIGRATIONS[1](db)
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    db.execute("INSERT INTO runs (kind, status, started) VALUES ('initial', 'completed', 'x')")
    db.conn.commit()
    db.close()
    with Store(db_path) as s:
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert s.get_run(1)["kind"] == "initial"
        assert {"idx_job_events_job_id_event", "idx_samples_status_source"} <= {
            index.name for table in ("job_events", "samples") for index in s.db[table].indexes}
        assert "outbox" in s.db.table_names() and "val_new_bpc" in s.db["checkpoints"].columns_dict


# --- the /metrics scrape --------------------------------------------------------


def test_a_metrics_scrape_reads_indexes_not_the_tables(store: Store, make_settings, tmp_path: Path):
    """The scrape counts samples and job events at every poll: it must read narrow indexes
    (and find each job's last duration by an index search), never scan those tables."""
    from tweetgen.web.metrics import StoreCollector

    store.record_job_event("generate", "executed", duration_s=1.5)
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        list(StoreCollector(make_settings(tmp_path), store).collect())
    finally:
        store.db.conn.set_trace_callback(None)
    plans = {}
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT") and ("samples" in sql or "job_events" in sql):
            plans[sql] = [row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
    assert len(plans) == 3, plans  # tweets by status, job durations, job events
    for sql, plan in plans.items():
        scans = [step for step in plan if step.startswith("SCAN") and "COVERING INDEX" not in step
                 and "USING INDEX idx_job_events" not in step]
        assert not scans, f"{sql}: {plan}"


def _open_store(path: str, start_together: Barrier) -> None:
    start_together.wait()
    Store(Path(path)).close()


def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path: Path):
    """Some migration steps commit on their own (executescript, the FTS setup): without the
    migration flock a second process saw a half-made schema and failed or waited it out. And
    SQLite refuses at once (no busy wait) connections that switch one file to WAL together:
    the switch is under the flock too (before, about 1 in 250 first opens failed so)."""
    import multiprocessing

    # forkserver: no forking of this process's TensorFlow threads, and cheap starts.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tweetgen.store"])
    for attempt in range(60):
        path = tmp_path / f"race{attempt}" / "tweetgen.db"
        path.parent.mkdir()
        start_together = context.Barrier(8)
        workers = [
            context.Process(target=_open_store, args=(str(path), start_together))
            for _ in range(8)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0] * 8
        with Store(path) as s:
            assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
