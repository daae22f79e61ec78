"""`tweetgen backup`: consistent copies of a database that another process is writing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from daemon_helpers import integrity_ok, make_home, start_daemon, stop, tweetgen, wait_for

from tweetgen.backup import backup, backup_database
from tweetgen.checkpoints import PROMOTED_FILE, load_checkpoint
from tweetgen.config import Settings
from tweetgen.errors import BackupError
from tweetgen.store import Store

LOSS_BATCH = 10  # the writer logs losses 10 rows per transaction


def _count(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _has_tweets(db: Path) -> bool:
    """The daemon's first tweets are stored (False while it is still making the database)."""
    try:
        return db.exists() and _count(db, "samples") > 0
    except sqlite3.OperationalError:  # the file is there, its tables not yet
        return False


def _filled_store(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path)
    with Store(settings.db_file) as store:
        run = store.start_run("train", 1)
        store.log_losses(run, [{"step": s, "loss": 1.0} for s in range(30)])
        store.add_samples([{"text": f"tweet {i}"} for i in range(7)])
    return settings


def test_backup_copies_every_row_and_refuses_to_overwrite(tmp_path: Path) -> None:
    settings = _filled_store(tmp_path)
    target = tmp_path / "copy.db"
    result = backup(settings, target)
    assert result.counts["losses"] == 30 and result.counts["samples"] == 7
    assert integrity_ok(target)
    with Store(target) as copy:  # a tweetgen database, not just a file that passes the check
        assert [s["text"] for s in copy.query_samples(search="tweet", limit=100)][-1] == "tweet 0"
    assert not Path(f"{target}-wal").exists()  # stored as one self-contained file

    with pytest.raises(BackupError, match="already exists.*--force"):
        backup(settings, target)
    with Store(settings.db_file) as store:
        store.add_samples([{"text": "one more"}])
    Path(f"{target}-wal").write_bytes(b"stale")  # as if the old copy had been opened and killed
    assert backup(settings, target, force=True).counts["samples"] == 8
    assert not Path(f"{target}-wal").exists() and integrity_ok(target)


def test_backup_explains_a_missing_database_or_folder(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with pytest.raises(BackupError, match="not found"):
        backup(settings, tmp_path / "copy.db")
    assert not settings.db_file.exists()  # the backup never creates an empty database
    assert not (tmp_path / "copy.db").exists()
    _filled_store(tmp_path)
    with pytest.raises(BackupError, match="does not exist"):
        backup(settings, tmp_path / "nowhere" / "copy.db")
    with pytest.raises(BackupError, match="is a directory"):
        backup(settings, tmp_path)


WRITER = textwrap.dedent(f"""
    import sys
    from tweetgen.store import Store
    store = Store(sys.argv[1])
    run = store.start_run("train", 1)
    step = 0
    print("ready", flush=True)
    while True:
        store.log_losses(run, [{{"step": step + i, "loss": 1.0}} for i in range({LOSS_BATCH})])
        store.add_samples([{{"text": f"tweet {{step}}"}}])
        step += {LOSS_BATCH}
""")


def test_twenty_backups_while_another_process_writes_are_whole_and_consistent(tmp_path: Path) -> None:
    db = _filled_store(tmp_path).db_file
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert writer.stdout.readline().strip() == b"ready"
        previous = 0
        for i in range(20):
            target = tmp_path / f"copy-{i}.db"
            counts = backup_database(db, target)
            assert integrity_ok(target)
            assert counts == {t: _count(target, t) for t in counts}
            # A transaction of 10 loss rows is in a copy whole or not at all, and copies only grow.
            assert counts["losses"] % LOSS_BATCH == 0 and counts["losses"] >= previous
            previous = counts["losses"]
        assert writer.poll() is None, "the writer stopped: the backups got in its way"
    finally:
        writer.kill()
        writer.wait()
    assert previous > 30, "the writer wrote nothing during the backups"
    assert integrity_ok(db)


@pytest.mark.slow
def test_backup_cli_while_the_daemon_runs_copies_db_and_checkpoints(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    db = home / "db" / "tweetgen.db"
    proc = start_daemon(home)
    try:
        wait_for(lambda: _has_tweets(db), what="the first tweets", proc=proc)
        samples = []
        for i in range(20):  # over 7 s: the daemon generates every 3 s and beats every second
            counts = backup_database(db, tmp_path / f"lib-{i}.db")
            assert integrity_ok(tmp_path / f"lib-{i}.db")
            samples.append(counts["samples"])
            time.sleep(0.35)
        assert samples == sorted(samples) and samples[-1] > samples[0], samples
        tweetgen(home, "backup", str(tmp_path / "copy-0.db"))
        out = tweetgen(home, "backup", str(tmp_path / "copy-0.db"), check=False)
        assert out.returncode == 2 and "already exists" in out.stderr
        saved = tmp_path / "saved"
        tweetgen(home, "backup", "--force", str(tmp_path / "copy-0.db"), "--checkpoints", str(saved))
    finally:
        assert stop(proc) == 0
    assert integrity_ok(tmp_path / "copy-0.db")
    with Store(tmp_path / "copy-0.db") as copy:
        assert copy.count_samples() > 0 and copy.promoted_checkpoint() is not None
    promoted = saved / (saved / PROMOTED_FILE).read_text().strip()
    assert load_checkpoint(promoted).step > 0
    assert {p.name for p in saved.iterdir()} - {PROMOTED_FILE} <= {
        p.name for p in (home / "checkpoints").iterdir()}
