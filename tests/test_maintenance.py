"""Bounded growth: retention of losses, job events and rejected tweets, and the WAL checkpoint,
on real databases in a temp folder; and the daemon's maintenance job end to end."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import make_home, query, start_daemon, stop, tweetgen, wait_for

from tweetgen import maintenance
from tweetgen.config import Settings
from tweetgen.maintenance import first_run_delay, run_maintenance
from tweetgen.store import Store

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _ago(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat(timespec="microseconds")


def _settings(tmp_path: Path, **values) -> Settings:
    defaults = {"losses_keep_runs": 2, "losses_thin_every_steps": 200, "job_events_keep_days": 7.0,
                "rejected_keep_days": 7.0}
    return Settings(home=tmp_path, **{**defaults, **values})


def _runs_with_losses(store: Store, runs: int, last_step: int = 1010) -> list[int]:
    """Runs with a train loss every 50 steps up to `last_step` and one validation row each."""
    ids = []
    for _ in range(runs):
        run = store.start_run("finetune", 1)
        steps = [*range(0, last_step, 50), last_step]
        store.log_losses(run, [{"step": s, "loss": 1.0} for s in steps])
        store.log_losses(run, [{"step": 75, "kind": "validation", "val_bpc": 2.0}])
        ids.append(run)
    return ids


def _steps(store: Store, run: int, kind: str = "train") -> list[int]:
    return [r["step"] for r in store.losses(run) if r["kind"] == kind]


def test_old_runs_are_thinned_recent_runs_kept_whole_and_a_second_pass_deletes_nothing(
        tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with Store(settings.db_file) as store:
        runs = _runs_with_losses(store, 4)
        full = _steps(store, runs[-1])
        result = run_maintenance(settings, store, NOW)
        for old in runs[:2]:
            # Multiples of 200, the run's last step, and its validation row stay.
            assert _steps(store, old) == [0, 200, 400, 600, 800, 1000, 1010]
            assert _steps(store, old, "validation") == [75]
        for recent in runs[2:]:
            assert _steps(store, recent) == full
        assert result["deleted"]["losses"] == 2 * (len(full) - 7)
        assert run_maintenance(settings, store, NOW)["deleted"]["losses"] == 0
        # Each run is thinned once: the next pass only looks at runs that left the kept window.
        assert store.get_meta(maintenance.THINNED_KEY) == str(runs[1])
        newer = _runs_with_losses(store, 1)
        assert run_maintenance(settings, store, NOW)["deleted"]["losses"] == len(full) - 7
        assert _steps(store, runs[2]) == [0, 200, 400, 600, 800, 1000, 1010]
        assert _steps(store, newer[0]) == full


def test_thinning_every_step_keeps_all_losses(tmp_path: Path) -> None:
    settings = _settings(tmp_path, losses_thin_every_steps=1, losses_keep_runs=0)
    with Store(settings.db_file) as store:
        runs = _runs_with_losses(store, 2)
        before = [_steps(store, r) for r in runs]
        assert run_maintenance(settings, store, NOW)["deleted"]["losses"] == 0
        assert [_steps(store, r) for r in runs] == before


def _event_and_tweet_ages(store: Store) -> dict[str, int]:
    """Job events 1 and 10 days old; tweets rejected 1 and 10 days ago, one approved 10 days ago
    and one rejected long after it was made. Returns their ids by name."""
    ids = {}
    for name, days in (("event_new", 1), ("event_old", 10)):
        store.record_job_event("generate", "executed", None, 0.5)
        ids[name] = store.list_job_events(1)[0]["id"]
        store.db.execute("UPDATE job_events SET created = ? WHERE id = ?", [_ago(days), ids[name]])
    for name, status, made, reviewed in (("rejected_new", "rejected", 1, 1),
                                         ("rejected_old", "rejected", 10, 10),
                                         ("approved_old", "approved", 10, 10),
                                         ("rejected_late", "rejected", 30, 2)):
        [ids[name]] = store.add_samples([{"text": f"zebra {name}"}])
        store.review([ids[name]], status)
        store.db.execute("UPDATE samples SET created = ?, reviewed = ? WHERE id = ?",
                         [_ago(made), _ago(reviewed), ids[name]])
    store.db.conn.commit()
    return ids


def test_old_job_events_and_old_rejected_tweets_go_the_rest_stays(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with Store(settings.db_file) as store:
        ids = _event_and_tweet_ages(store)
        result = run_maintenance(settings, store, NOW)
        assert result["deleted"]["job_events"] == 1 and result["deleted"]["rejected_tweets"] == 1
        assert {e["id"] for e in store.list_job_events(10)} == {ids["event_new"]}
        left = {s["id"] for s in store.query_samples(limit=10)}
        assert left == {ids["rejected_new"], ids["approved_old"], ids["rejected_late"]}
        # The full-text index follows the deletion (its triggers), so search never finds it.
        assert ids["rejected_old"] not in {s["id"] for s in store.query_samples(search="zebra")}


def test_zero_days_keeps_events_and_rejected_tweets_for_ever(tmp_path: Path) -> None:
    settings = _settings(tmp_path, job_events_keep_days=0.0, rejected_keep_days=0.0)
    with Store(settings.db_file) as store:
        _event_and_tweet_ages(store)
        result = run_maintenance(settings, store, NOW)
        assert set(result["deleted"]) == {"losses"}
        assert store.count_samples() == 4 and len(store.list_job_events(10)) == 2


def test_deletes_in_batches_and_truncates_the_wal(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(maintenance, "BATCH_ROWS", 7)  # several batches, one partial
    settings = _settings(tmp_path, losses_keep_runs=0)
    wal = Path(f"{settings.db_file}-wal")
    with Store(settings.db_file) as store:
        run = _runs_with_losses(store, 1)[0]
        assert wal.stat().st_size > 0
        result = run_maintenance(settings, store, NOW)
        assert result["deleted"]["losses"] == 22 - 7 and result["wal"]["busy"] == 0
        assert _steps(store, run) == [0, 200, 400, 600, 800, 1000, 1010]
        assert wal.stat().st_size == 0
        assert store.get_meta(maintenance.LAST_RUN_KEY) is not None


def test_vacuum_when_asked_shrinks_the_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, losses_keep_runs=0, losses_thin_every_steps=10**6)
    with Store(settings.db_file) as store:
        _runs_with_losses(store, 30, last_step=50 * 400)
        store.checkpoint_wal()
        before = settings.db_file.stat().st_size
        run_maintenance(settings, store, NOW)
        assert settings.db_file.stat().st_size == before  # freed pages are kept for reuse
        run_maintenance(dataclasses.replace(settings, maintenance_vacuum=True), store, NOW)
        assert settings.db_file.stat().st_size < before / 2


def test_first_run_waits_for_the_interval_since_the_last_one() -> None:
    day = timedelta(hours=24)
    assert first_run_delay(None, day, NOW) == maintenance.FIRST_RUN_DELAY
    assert first_run_delay(_ago(0.25), day, NOW) == timedelta(hours=18)
    assert first_run_delay(_ago(3), day, NOW) == maintenance.FIRST_RUN_DELAY  # overdue: soon
    assert first_run_delay(None, timedelta(seconds=5), NOW) == timedelta(seconds=5)


def test_maintain_cli_applies_the_settings(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = _settings(home, job_events_keep_days=0.5)
    with Store(settings.db_file) as store:
        store.record_job_event("generate", "executed", None, 0.5)
        store.db.execute("UPDATE job_events SET created = '2000-01-01T00:00:00.000000+00:00'")
        store.db.conn.commit()
    out = tweetgen(home, "maintain", "--json")
    assert '"job_events": 1' in out.stdout
    assert query(home, "select count(*) as n from job_events")[0]["n"] == 0


@pytest.mark.slow
def test_the_daemon_runs_maintenance_as_a_job(tmp_path: Path) -> None:
    # Every 3.6 s; the first run comes one interval after the start.
    home = make_home(tmp_path, maintenance_interval_hours=0.001, losses_keep_runs=0,
                     losses_thin_every_steps=20)
    proc = start_daemon(home)
    try:
        wait_for(lambda: query(home, "select 1 from job_events where job_id = 'maintenance' "
                                     "and event = 'executed'"), what="a maintenance run", proc=proc)
    finally:
        assert stop(proc) == 0
    # The initial run (30 steps, a loss every 5) keeps the multiples of 20 and its last step.
    steps = [r["step"] for r in query(home, "select step from losses where kind = 'train' "
                                            "order by step")]
    assert 2 <= len(steps) <= 3 and all(s % 20 == 0 for s in steps[:-1]), steps
    assert query(home, "select value from meta where key = 'maintenance_last'")
