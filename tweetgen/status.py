"""`tweetgen status`: is the daemon alive, what generates, what waits, what ran."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from typing import Any

from .checkpoints import NAME, CheckpointManager, process_alive
from .config import Settings
from .corpus import lines_waiting
from .progress import bpc_change_text, bpc_text, duration_text, nats_to_bpc, steady_eta
from .store import Store

IDLE_STATE_KEY = "idle_state"  # written by tweetgen.idle (which imports TensorFlow; this must not)

RUN_FIELDS = ("id", "kind", "status", "started", "finished", "steps", "val_bpc_before", "val_bpc_after",
              "val_new_bpc_before", "val_new_bpc_after", "promoted", "promotion", "error")
SPEED_WINDOW = 10  # the last logged steps that measure the running job's speed


def _age_seconds(iso: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


def daemon_status(settings: Settings) -> dict[str, Any]:
    """Everything `tweetgen status` shows, as data (also served by the HTTP API). Reads only:
    before the first start there is no database, and none is made."""
    info = cursor = promoted = running = idle = None
    runs: list[dict] = []
    samples = 0
    if settings.db_file.exists():
        with Store(settings.db_file, settings.db_busy_timeout_seconds) as store:
            info = store.daemon_info()
            cursor = store.cursor(str(settings.corpus_file))
            promoted = store.promoted_checkpoint()
            runs = store.list_runs(5)
            samples = store.count_samples()
            running = running_job(store, runs, info)
            idle = json.loads(store.get_meta(IDLE_STATE_KEY) or "null")
    alive = _daemon_alive(settings, info)
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
        "running": running,
        "promoted_checkpoint": {
            "id": promoted["id"], "path": promoted["path"], "step": promoted["step"],
            "val_bpc": promoted["val_bpc"],
        } if promoted else ({"path": str(promoted_file)} if promoted_file else None),
        "idle_training": idle if settings.idle_training else {"state": "off"},
        "lines_waiting": lines_waiting(settings.corpus_file, cursor) if cursor else None,
        "samples": samples,
        "last_runs": [{k: r.get(k) for k in RUN_FIELDS if k in r} for r in runs],
    }


def _daemon_alive(settings: Settings, info: dict | None) -> bool:
    if info is None:
        return False
    fresh = _age_seconds(info["beat"]) < 3 * settings.heartbeat_seconds + 5
    same_host = info["host"] == socket.gethostname()
    return info["state"] == "running" and fresh and (not same_host or process_alive(info["pid"]))


def running_job(store: Store, runs: list[dict], daemon: dict | None) -> dict[str, Any] | None:
    """The run in progress (the daemon's or a `tweetgen train`): step N of M or minutes, ETA
    from the speed between its recent logged steps, its last loss and validation."""
    run = next((r for r in runs if r["status"] == "running"), None)
    if run is None or not (process_alive(run["pid"]) or (daemon and daemon["pid"] == run["pid"]
                                                          and daemon["host"] != socket.gethostname())):
        return None  # none, or its process died (the next start marks it crashed)
    rows = store.losses(run["id"], limit=SPEED_WINDOW * 20)
    train = [r for r in rows if r["kind"] == "train" and r["loss"] is not None]
    validations = [r["val_bpc"] for r in rows if r["kind"] == "val" and r["val_bpc"] is not None]
    plan = run["config"] if isinstance(run.get("config"), dict) else {}
    target, ends_at = plan.get("target_step"), plan.get("ends_at")
    start = run.get("start_step") or 0
    step = train[-1]["step"] if train else start
    eta_at = None
    if target is not None:
        points = [(_timestamp(r["created"]), r["step"]) for r in train[-SPEED_WINDOW:]]
        eta = steady_eta(points, target)
        eta_at = points[-1][0] + eta if eta is not None else None
    elif ends_at:
        eta_at = _timestamp(ends_at)
    now = datetime.now(UTC).timestamp()
    return {
        "run": run["id"], "kind": run["kind"], "pid": run["pid"], "started": run["started"],
        "step": step, "start_step": start, "target_step": target,
        "steps_done": step - start, "steps_total": target - start if target is not None else None,
        "minutes_elapsed": _age_seconds(run["started"]) / 60,
        "minutes_total": (_timestamp(ends_at) - _timestamp(run["started"])) / 60 if ends_at else None,
        "eta": datetime.fromtimestamp(eta_at, UTC).isoformat() if eta_at is not None else None,
        "eta_seconds": max(eta_at - now, 0.0) if eta_at is not None else None,
        "train_bpc": nats_to_bpc(train[-1]["loss"]) if train else None,
        "val_bpc": validations[-1] if validations else run.get("val_bpc_before"),
    }


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def running_text(job: dict[str, Any]) -> str:
    """One line for people: what runs, how far, when it ends, how well."""
    if job["steps_total"] is not None:
        share = 100 * job["steps_done"] / max(job["steps_total"], 1)
        where = f"step {job['steps_done']} of {job['steps_total']} ({share:.0f}%)"
    else:
        where = f"step {job['steps_done']}"
    if job["minutes_total"] is not None:
        where += f", minute {job['minutes_elapsed']:.1f} of {job['minutes_total']:.1f}"
    if job["steps_total"] is not None and job["steps_done"] >= job["steps_total"]:
        eta = "finishing (validation and checkpoint)"
    elif job["eta_seconds"] is not None:
        eta = f"ETA {duration_text(job['eta_seconds'])} ({job['eta'][11:16]} UTC)"
    else:
        eta = "ETA not known yet (measuring speed)"
    return (f"{job['kind']} run #{job['run']}: {where}, {eta}; training loss {bpc_text(job['train_bpc'])}, "
            f"last validation {bpc_text(job['val_bpc'])}")


def promoted_text(value: int | None) -> str:
    return {None: "-", 0: "no"}.get(value, "yes")


def format_status(data: dict[str, Any]) -> str:
    d = data["daemon"]
    lines = [
        f"daemon: {'ALIVE' if d['alive'] else 'not running'} (state {d['state']}, pid {d['pid']}, "
        f"last heartbeat {d['last_heartbeat']})",
    ]
    for job, when in sorted(d["next_jobs"].items()):
        lines.append(f"  next {job}: {str(when)[:19]}")
    if data.get("running"):
        lines.append("running: " + running_text(data["running"]))
    if data.get("idle_training"):
        lines.append("idle training: " + idle_text(data["idle_training"]))
    p = data["promoted_checkpoint"]
    if p:
        bpc = p.get("val_bpc")
        lines.append(f"promoted checkpoint: {p.get('path')} step {p.get('step')}, validation "
                     f"{bpc_text(bpc)}" if bpc is not None else f"promoted checkpoint: {p.get('path')}")
    else:
        lines.append("promoted checkpoint: none yet")
    waiting = data["lines_waiting"]
    waiting_text = waiting if waiting is not None else "unknown (no ingest yet)"
    lines.append(f"lines waiting to be ingested: {waiting_text}")
    lines.append(f"tweets stored: {data['samples']}")
    lines.append("last runs:")
    for r in data["last_runs"]:
        lines.append("  " + run_text(r))
    return "\n".join(lines)


def idle_text(idle: dict[str, Any]) -> str:
    """What idle training is doing (tweetgen/idle.py writes it): training, waiting, stopped..."""
    text = idle.get("state", "-")
    if idle.get("step") is not None and idle.get("target_step") is not None:
        text += f" (step {idle['step']} of the run to {idle['target_step']})"
    if idle.get("best_bpc") is not None:
        text += f", best validation {bpc_text(idle['best_bpc'])}"
    if idle.get("stale_checkpoints") is not None:
        text += f", {idle['stale_checkpoints']} of {idle['patience']} checkpoints without a better one"
    if idle.get("reason"):
        text += f": {idle['reason']}"
    return text + (f", since {idle['since'][:19]}" if idle.get("since") else "")


def run_text(r: dict[str, Any]) -> str:
    """One run for people (`tweetgen runs`, `tweetgen status`): both validation figures rounded,
    whether it was promoted."""
    steps = r["steps"] if r["steps"] is not None else "-"
    text = (f"#{r['id']} {r['kind']} {r['status']}, started {r['started'][:19]}, steps {steps}, "
            f"validation {bpc_change_text(r['val_bpc_before'], r['val_bpc_after'])}")
    # The held-out new lines' figures, where the store records them (a fine-tune judged on them).
    before, after = r.get("val_new_bpc_before"), r.get("val_new_bpc_after")
    if before is not None or after is not None:
        text += f", new lines {bpc_change_text(before, after)}"
    text += f", promoted {promoted_text(r['promoted'])}"
    return (text + (f" ({r['promotion']})" if r.get("promotion") else "")
            + (f", error: {r['error']}" if r["error"] else ""))


def no_checkpoint_message(settings: Settings) -> str | None:
    """None when the checkpoint folder holds a checkpoint; else why there is none yet, and when
    there will be one (for `generate` and `chat`, which read and never create the folder)."""
    folder = settings.checkpoints
    if folder.is_dir() and any(NAME.match(path.name) for path in folder.iterdir()):
        return None
    data = daemon_status(settings)
    job, daemon = data["running"], data["daemon"]
    if job is not None:
        who = "the daemon" if daemon["alive"] and daemon["pid"] == job["pid"] else "`tweetgen train`"
        return (f"no usable checkpoint in {folder} yet: {who} (pid {job['pid']}) is training the "
                f"first one, {running_text(job)}; try again when it ends")
    if daemon["alive"]:
        return (f"no usable checkpoint in {folder} yet: the daemon (pid {daemon['pid']}) has not "
                "started training; see `tweetgen status`")
    return (f"no usable checkpoint in {folder} and no daemon is running: start `tweetgen daemon` "
            "or run `tweetgen train` first")
