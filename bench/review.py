"""Review benchmark (issue 12): what candidate selection keeps out, what it costs, and the
webhook outbox's delivery across a receiver outage and a daemon kill -9.

    .venv/bin/python -m bench.review [--train-minutes 1.5] [--jobs 6] [--json]

1. Selection. A scratch home's corpus is the FreeBSD fortunes plus 40 short commit subjects
   ('fix typo', 'v2.12.0', 'Update README', ...) repeated 100 times each (a third of the
   lines), the kind of corpus whose short frequent lines a model learns by heart (issue 12 saw
   them stored as tweets). A model
   (embedding 32, GRU 64 then 128) trains for --train-minutes. Then --jobs scheduled generate
   jobs of each kind run alternately on the same generator (after one warm-up job of each, which
   traces the loop): "plain" is the job as it was before selection (generate, score novelty,
   store); "selected" is `engine.generate_scheduled` (candidates_per_tweet candidates per stored
   tweet, judged, ranked, stored). Printed for each: stored tweets that are copies of corpus
   lines (exact, or but for case/spacing/outer punctuation), near-duplicate pairs among a job's
   tweets (`selection.near_duplicates`), mean novelty of stored tweets, share of candidates
   kept, and wall time per stored tweet; then the ratio selected/plain.
2. Outbox. A tiny daemon home (tests/daemon_helpers) with webhook_url pointing at a loopback port
   where nothing listens yet. 100 tweets are approved while the receiver is down; it stays down
   for --down-seconds, then comes up (tests/webhook_receiver.py, 127.0.0.1 only); once some
   deliveries have arrived the daemon is killed with SIGKILL and started again; the run ends when
   the outbox says all 100 were delivered (or after a timeout). Printed: approved, delivered
   (distinct tweets the receiver got), lost, redeliveries, and whether every redelivery carried
   its tweet's one idempotency key.

Targets: 0 stored copies; near-duplicate pairs < 1%; selection's cost per stored tweet < 2x
plain; outbox 100 delivered, 0 lost. The machine is shared (2 cores): read the same-run ratio.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0:0] = [str(REPO), str(REPO / "tests")]

COMMIT_SUBJECTS = [
    "fix typo", "Fix typo", "v2.12.0", "v2.11.3", "simplify", "Update README", "update readme",
    "Add tests", "fix tests", "Bump version", "Merge branch 'main'", "wip", "cleanup", "refactor",
    "Fix build", "fix lint", "Update dependencies", "Add CHANGELOG entry", "docs: fix links",
    "Remove dead code", "Fix CI", "Add license", "Initial commit", "Fix crash on empty input",
    "Improve error message", "Rename variable", "Add logging", "Update copyright year",
    "Fix flaky test", "Format code", "Add type hints", "Fix memory leak", "Speed up startup",
    "Handle missing config", "Revert last commit", "Add docs", "Fix off by one", "Tidy imports",
    "Release 1.0", "Drop Python 3.8",
]
REPEATS = 100


# ---------------------------------------------------------------- 1. selection


def prepare_selection_home(home: Path, train_minutes: float):
    from tweetgen import corpus, engine
    from tweetgen.config import Settings
    from tweetgen.store import Store

    settings = Settings(home=home, gru_sizes=(64, 128), embedding_dim=32, batch_size=64,
                        checkpoint_every=10**6, log_every=200)
    corpus.import_fortunes(corpus.default_fortune_file(), settings.corpus_file, settings.max_tweet_chars)
    corpus.append_lines(settings.corpus_file, [s.encode() for s in COMMIT_SUBJECTS * REPEATS])
    with Store(settings.db_file) as store:
        outcome = engine.train(settings, minutes=train_minutes, store=store, kind="initial")
        manager = engine.checkpoint_manager(settings)
        manager.promote(outcome.result.checkpoint)
        engine.sync_checkpoint_flags(store, manager)
    return settings, outcome


def plain_job(settings, store, cache) -> tuple[list[dict], int]:
    """The scheduled job as it was before selection: every sample stored."""
    from tweetgen import engine

    generator, ckpt = cache.get()
    row = store.get_checkpoint(str(ckpt.path))
    rows = []
    for temperature in settings.temperatures:
        samples = generator.generate(engine.default_seeds(settings), settings.samples_per_seed,
                                     temperature, settings.top_k)
        rows += engine.sample_rows(samples, row["id"] if row else None, ckpt, "bench-plain")
    store.add_samples(rows)
    return rows, len(rows)


def selected_job(settings, store, cache) -> tuple[list[dict], int]:
    """`engine.generate_scheduled`: the job with candidate selection."""
    from tweetgen import engine

    before = store.count_samples()
    engine.generate_scheduled(settings, store, cache)
    rows = store.query_samples(limit=store.count_samples() - before)
    return rows, cache.last_selection["sampled"]


def measure_selection(args) -> dict:
    from tweetgen import corpus, engine, selection
    from tweetgen.novelty import NoveltyIndex
    from tweetgen.store import Store

    scratch = tempfile.TemporaryDirectory(prefix="bench-review-")
    home = Path(scratch.name) / "home"
    started = time.perf_counter()
    settings, outcome = prepare_selection_home(home, args.train_minutes)
    lines = set(corpus.read_lines(settings.corpus_file).lines)
    index = NoveltyIndex.from_lines(lines, settings.novelty_ngram)
    results = {"train": {"steps": outcome.result.steps, "val_bpc": outcome.result.val_bpc,
                         "seconds": time.perf_counter() - started},
               "candidates_per_tweet": settings.candidates_per_tweet,
               "seeds": engine.default_seeds(settings)}
    cache = engine.GeneratorCache(settings)
    kinds = {"plain": plain_job, "selected": selected_job}
    totals = {k: {"stored": 0, "sampled": 0, "seconds": 0.0, "copies": 0, "pairs": 0,
                  "near_pairs": 0, "novelty": 0.0} for k in kinds}
    with Store(settings.db_file) as store:
        for job in kinds.values():  # warm-up: the first job traces the loop
            job(settings, store, cache)
        for _ in range(args.jobs):
            for kind, job in kinds.items():
                t0 = time.perf_counter()
                rows, sampled = job(settings, store, cache)
                elapsed = time.perf_counter() - t0
                texts = [r["text"] for r in rows]
                t = totals[kind]
                t["seconds"] += elapsed
                t["stored"] += len(rows)
                t["sampled"] += sampled
                t["copies"] += sum(1 for text in texts if text in lines or index.near_copy(text))
                t["pairs"] += len(texts) * (len(texts) - 1) // 2
                t["near_pairs"] += selection.near_duplicates(texts)
                t["novelty"] += sum(index.score(text)[1] for text in texts)
    for t in totals.values():
        t["near_pair_share"] = t["near_pairs"] / max(t["pairs"], 1)
        t["mean_novelty"] = t["novelty"] / max(t["stored"], 1)
        t["kept_share"] = t["stored"] / max(t["sampled"], 1)
        t["ms_per_stored"] = 1000 * t["seconds"] / max(t["stored"], 1)
    results["jobs"] = args.jobs
    results["totals"] = totals
    results["cost_ratio"] = totals["selected"]["ms_per_stored"] / totals["plain"]["ms_per_stored"]
    scratch.cleanup()
    return results


# ---------------------------------------------------------------- 2. the outbox


def measure_outbox(args) -> dict:
    from daemon_helpers import make_home, query, start_daemon, stop, wait_for
    from webhook_receiver import Receiver, reserve_port

    from tweetgen.store import Store

    scratch = tempfile.TemporaryDirectory(prefix="bench-outbox-")
    tmp = Path(scratch.name)
    holder = reserve_port()
    port = holder.getsockname()[1]
    home = make_home(tmp, webhook_url=f"http://127.0.0.1:{port}/hook", webhook_poll_seconds=0.2,
                     webhook_retry_seconds=0.2, webhook_max_backoff_seconds=1.0,
                     generate_interval_minutes=60)
    db = home / "db" / "tweetgen.db"
    daemon = start_daemon(home)
    receiver = None
    started = time.perf_counter()
    try:
        wait_for(lambda: db.exists() and query(home, "select count(*) n from samples")[0]["n"] > 0,
                 what="the daemon's first tweets", proc=daemon, timeout=180)
        with Store(db) as store:
            ids = store.add_samples([{"text": f"approved tweet number {i}", "seed": ""}
                                     for i in range(args.approvals)])
            for i in range(0, len(ids), 10):  # approvals arrive over a few seconds
                store.review(ids[i:i + 10], "approved")
                time.sleep(0.1)
        time.sleep(args.down_seconds)
        failed_attempts = query(home, "select coalesce(sum(attempts), 0) n from outbox")[0]["n"]
        holder.close()
        receiver = Receiver.start(port)
        wait_for(lambda: len(receiver.received_ids()) >= args.approvals // 3, what="some deliveries",
                 proc=daemon, interval=0.05)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        delivered_at_kill = query(home, "select count(*) n from outbox where status = 'delivered'")[0]["n"]
        daemon = start_daemon(home)
        try:
            wait_for(lambda: query(home, "select count(*) n from outbox where status = 'delivered'"
                                   )[0]["n"] >= args.approvals, what="every delivery", proc=daemon,
                     timeout=args.timeout)
        except AssertionError as exc:
            print(f"outbox: {exc}", file=sys.stderr)
        got = receiver.received_ids()
        keys = receiver.keys_by_id()
        return {"approved": len(ids), "delivered": len(got & set(ids)), "lost": len(set(ids) - got),
                "deliveries": len(receiver.deliveries),
                "redeliveries": len(receiver.deliveries) - len(got),
                "one_key_per_tweet": all(len(k) == 1 for k in keys.values()),
                "failed_attempts_while_down": failed_attempts, "delivered_before_kill": delivered_at_kill,
                "seconds": time.perf_counter() - started}
    finally:
        stop(daemon)
        if receiver is not None:
            receiver.stop()
        scratch.cleanup()


# ---------------------------------------------------------------- report


def print_report(r: dict) -> None:
    s = r["selection"]
    print(f"model: {s['train']['steps']} steps in {s['train']['seconds']:.0f} s, "
          f"validation {s['train']['val_bpc']:.3f} bits/char; seeds {s['seeds']}; "
          f"{s['jobs']} jobs of each kind; candidates_per_tweet {s['candidates_per_tweet']}")
    print(f"{'':34}{'plain':>12}{'selected':>12}   target")
    p, q = s["totals"]["plain"], s["totals"]["selected"]
    rows = [
        ("stored tweets", p["stored"], q["stored"], ""),
        ("stored copies of corpus lines", p["copies"], q["copies"], "0"),
        ("near-duplicate pairs in a job", f"{p['near_pair_share']:.2%}", f"{q['near_pair_share']:.2%}",
         "< 1%"),
        ("mean novelty of stored tweets", f"{p['mean_novelty']:.3f}", f"{q['mean_novelty']:.3f}", ""),
        ("share of candidates kept", f"{p['kept_share']:.1%}", f"{q['kept_share']:.1%}", ""),
        ("ms per stored tweet", f"{p['ms_per_stored']:.1f}", f"{q['ms_per_stored']:.1f}", ""),
    ]
    for name, a, b, target in rows:
        print(f"{name:34}{a!s:>12}{b!s:>12}   {target}")
    print(f"selection's cost per stored tweet: {s['totals']['selected']['ms_per_stored']:.1f} ms vs "
          f"{s['totals']['plain']['ms_per_stored']:.1f} ms plain = {s['cost_ratio']:.2f}x (target < 2x)")
    o = r["outbox"]
    print(f"outbox: {o['approved']} approved, {o['delivered']} delivered, {o['lost']} lost "
          f"(target 100 delivered, 0 lost); {o['failed_attempts_while_down']} failed attempts while "
          f"the receiver was down; daemon killed after {o['delivered_before_kill']} delivered; "
          f"{o['redeliveries']} redeliveries, one key per tweet: {o['one_key_per_tweet']}; "
          f"{o['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-minutes", type=float, default=1.5)
    parser.add_argument("--jobs", type=int, default=6, help="measured jobs of each kind")
    parser.add_argument("--approvals", type=int, default=100)
    parser.add_argument("--down-seconds", type=float, default=4.0, help="receiver down after the approvals")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for every delivery")
    parser.add_argument("--skip-selection", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = {"selection": measure_selection(args) if not args.skip_selection else None,
               "outbox": measure_outbox(args)}
    if args.json:
        print(json.dumps(results, default=str))
    elif results["selection"] is None:
        print(json.dumps(results["outbox"]))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
