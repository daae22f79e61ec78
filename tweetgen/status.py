"""`tweetgen status`: is the daemon alive, what generates, what waits, what ran."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from .checkpoints import CheckpointManager, process_alive
from .config import Settings
from .corpus import lines_waiting
from .store import Store


def _age_seconds(iso: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


def daemon_status(settings: Settings) -> dict[str, Any]:
    """Everything `tweetgen status` shows, as data (also served by the HTTP API)."""
    with Store(settings.db_file, settings.db_busy_timeout_seconds) as store:
        info = store.daemon_info()
        cursor = store.cursor(str(settings.corpus_file))
        promoted = store.promoted_checkpoint()
        runs = store.list_runs(5)
        samples = store.count_samples()
    alive = False
    if info is not None:
        fresh = _age_seconds(info["beat"]) < 3 * settings.heartbeat_seconds + 5
        same_host = info["host"] == socket.gethostname()
        alive = info["state"] == "running" and fresh and (not same_host or process_alive(info["pid"]))
    manager_dir = settings.checkpoints
    promoted_file = CheckpointManager(manager_dir).promoted_path() if manager_dir.is_dir() else None
    return {
        "daemon": {
            "alive": alive,
            "pid": info["pid"] if info else None,
            "host": info["host"] if info else None,
            "state": info["state"] if info else "never started",
            "last_heartbeat": info["beat"] if info else None,
            "started": info["started"] if info else None,
            "next_jobs": info["next_jobs"] if info and alive else {},
        },
        "promoted_checkpoint": {
            "id": promoted["id"], "path": promoted["path"], "step": promoted["step"],
            "val_bpc": promoted["val_bpc"],
        } if promoted else ({"path": str(promoted_file)} if promoted_file else None),
        "lines_waiting": lines_waiting(settings.corpus_file, cursor) if cursor else None,
        "samples": samples,
        "last_runs": [{k: r.get(k) for k in ("id", "kind", "status", "started", "finished", "steps",
                                               "val_bpc_before", "val_bpc_after", "promoted", "error")}
                      for r in runs],
    }


def format_status(data: dict[str, Any]) -> str:
    d = data["daemon"]
    lines = [
        f"daemon: {'ALIVE' if d['alive'] else 'not running'} (state {d['state']}, pid {d['pid']}, "
        f"last heartbeat {d['last_heartbeat']})",
    ]
    for job, when in sorted(d["next_jobs"].items()):
        lines.append(f"  next {job}: {when}")
    p = data["promoted_checkpoint"]
    if p:
        bpc = p.get("val_bpc")
        lines.append(f"promoted checkpoint: {p.get('path')} step {p.get('step')}, validation "
                     f"{bpc:.4f} bits/char" if bpc is not None else f"promoted checkpoint: {p.get('path')}")
    else:
        lines.append("promoted checkpoint: none yet")
    waiting = data["lines_waiting"]
    waiting_text = waiting if waiting is not None else "unknown (no ingest yet)"
    lines.append(f"lines waiting to be ingested: {waiting_text}")
    lines.append(f"tweets stored: {data['samples']}")
    lines.append("last runs:")
    for r in data["last_runs"]:
        lines.append(f"  #{r['id']} {r['kind']} {r['status']} started {r['started'][:19]} steps {r['steps']}"
                     + (f" bpc {r['val_bpc_before']} -> {r['val_bpc_after']}" if r["val_bpc_after"] else "")
                     + (f" error: {r['error']}" if r["error"] else ""))
    return "\n".join(lines)
