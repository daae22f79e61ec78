"""Bounded growth: the daily maintenance job that applies the retention settings and keeps the
WAL small.

What grows with every job, and what is kept:
- `losses`: every row of the last `losses_keep_runs` runs; older runs keep only the rows at
  steps that are multiples of `losses_thin_every_steps`, their last row and their validation
  rows (so every run's curve can still be drawn, coarser). Thinning by step number, not by row
  order, makes it idempotent: a second pass deletes nothing more. Each run is thinned once: the
  meta key `losses_thinned_through` remembers the newest run already thinned, so the job's work
  follows what is new, not the table's size (a later, coarser `losses_thin_every_steps`
  applies to runs thinned from then on).
- `job_events`: the last `job_events_keep_days` days.
- rejected tweets: the last `rejected_keep_days` days (from their review).
Then `PRAGMA wal_checkpoint(TRUNCATE)` brings the WAL back to zero bytes. The freed pages are
reused by later inserts, so the file stops growing without `VACUUM` (which rewrites the whole
file and blocks writers meanwhile); set `maintenance_vacuum` to shrink it as well.
A setting of 0 days keeps those rows for ever.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import Settings
from .store import Store

log = logging.getLogger(__name__)

BATCH_ROWS = 5000  # rows deleted per transaction: a writer waits for one batch at most
LAST_RUN_KEY = "maintenance_last"  # meta key: when maintenance last finished (UTC ISO)
FIRST_RUN_DELAY = timedelta(minutes=1)  # an overdue maintenance runs this long after a start
THINNED_KEY = "losses_thinned_through"  # meta key: the newest run whose losses are thinned


def retention_rules(settings: Settings, now: datetime,
                    thinned_through: int = 0) -> list[tuple[str, str, str, list[Any]]]:
    """(name, table, WHERE clause, parameters) of the rows the settings let go; runs up to
    `thinned_through` were thinned by an earlier pass."""
    rules = [("losses", "losses",
              "run_id > ? AND kind = 'train' "
              "AND run_id NOT IN (SELECT id FROM runs ORDER BY id DESC LIMIT ?) "
              "AND step % ? != 0 "
              "AND step < (SELECT max(step) FROM losses AS last WHERE last.run_id = losses.run_id)",
              [thinned_through, settings.losses_keep_runs, settings.losses_thin_every_steps])]
    if settings.job_events_keep_days > 0:
        cutoff = _iso(now - timedelta(days=settings.job_events_keep_days))
        rules.append(("job_events", "job_events", "created < ?", [cutoff]))
    if settings.rejected_keep_days > 0:
        cutoff = _iso(now - timedelta(days=settings.rejected_keep_days))
        rules.append(("rejected_tweets", "samples",
                      "status = 'rejected' AND coalesce(reviewed, created) < ?", [cutoff]))
    return rules


def run_maintenance(settings: Settings, store: Store, now: datetime | None = None) -> dict[str, Any]:
    """Apply the retention settings, checkpoint the WAL (and VACUUM if set); what it did."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    thinned_through = int(store.get_meta(THINNED_KEY) or 0)
    deleted = {name: delete_all(store, table, where, params)
               for name, table, where, params in retention_rules(settings, now, thinned_through)}
    store.set_meta(THINNED_KEY, str(store.newest_run_before_last(settings.losses_keep_runs)))
    if settings.maintenance_vacuum:
        store.vacuum()
    store.set_meta(LAST_RUN_KEY, _iso(datetime.now(UTC)))  # before the checkpoint: it empties the WAL
    wal = store.checkpoint_wal()
    result = {"deleted": deleted, "wal": wal, "vacuum": settings.maintenance_vacuum,
              "seconds": round(time.monotonic() - started, 3)}
    log.info("maintenance: deleted %s; WAL checkpoint %s%s", deleted, wal,
             "; vacuumed" if settings.maintenance_vacuum else "")
    return result


def delete_all(store: Store, table: str, where: str, params: list[Any]) -> int:
    total = 0
    while True:
        count = store.delete_batch(table, where, params, BATCH_ROWS)
        total += count
        if count < BATCH_ROWS:
            return total


def first_run_delay(last_run: str | None, interval: timedelta, now: datetime) -> timedelta:
    """How long after a daemon start the first maintenance runs: when the interval since the
    last one is up (restarts do not postpone it), but not sooner than FIRST_RUN_DELAY (or the
    interval, if shorter), so the start-up's own work comes first."""
    soonest = min(FIRST_RUN_DELAY, interval)
    if last_run is None:
        return soonest
    due = datetime.fromisoformat(last_run) + interval
    return max(due - now, soonest)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
