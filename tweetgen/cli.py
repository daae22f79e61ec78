"""The `tweetgen` command: a thin layer over the library. TensorFlow is imported only by the
commands that need it, so `--help`, `tweets`, `status`, `append` answer at once."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import corpus
from .config import ConfigError, Settings, load_settings

log = logging.getLogger("tweetgen")


class UsageError(ValueError):
    """Bad command-line input; printed as one line."""


def setup_logging(verbose: bool = False) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The scheduler's own lines for every heartbeat and job run would drown the daemon's events
    # (a job that fails is still logged, at ERROR with its traceback).
    for noisy in ("apscheduler.scheduler", "apscheduler.executors.light",
                  "apscheduler.executors.default", "absl", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {"home": args.home, **extra}
    return load_settings(Path(args.config) if args.config else None, overrides)


def emit(data: Any, as_json: bool, text: Callable[[Any], str] | None = None) -> None:
    if as_json or text is None:
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        print(text(data))


def open_store(settings: Settings):
    from .store import Store

    return Store(settings.db_file, settings.db_busy_timeout_seconds)


# ---------------------------------------------------------------- engine commands


def cmd_train(args: argparse.Namespace) -> int:
    from . import distribute, engine
    from .daemon import InstanceLock
    from .trainer import progress_printer

    settings = settings_from(args)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    # The strategy first: logical CPU devices and workers are set up before TensorFlow starts.
    # Of a multi-worker run's processes only the chief holds the lock and records the run.
    chief = distribute.is_chief(distribute.strategy_for(settings))
    with (InstanceLock(settings) if chief else contextlib.nullcontext(),
          open_store(settings) if chief else contextlib.nullcontext() as store):
        total = args.steps if args.steps else (None if args.minutes else settings.initial_steps)
        outcome = engine.train(settings, args.steps, args.minutes, store=store,
                               on_log=progress_printer(total))
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    r = outcome.result
    data = {"run": outcome.run_id, "status": r.status, "steps": r.steps, "step": outcome.trainer.step,
            "train_loss": r.train_loss, "val_bpc": r.val_bpc,
            "checkpoint": str(r.checkpoint) if r.checkpoint else None}
    emit(data, args.json, lambda d: f"trained {d['steps']} steps to step {d['step']}: loss "
         f"{d['train_loss']:.4f}, validation {d['val_bpc']:.4f} bits/char, {d['checkpoint']}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from . import engine

    settings = settings_from(args)
    seeds = args.seed if args.seed else [""]
    generator, ckpt = engine.open_generator(settings, args.checkpoint)
    samples = generator.generate(seeds, args.n, args.temperature, args.top_k, args.random_seed, args.mode)
    if not args.no_store:
        with open_store(settings) as store:
            ids = engine.store_samples(store, samples, ckpt, "cli")
    else:
        ids = [None] * len(samples)
    rows = [dict(s.as_dict(), id=i, checkpoint=ckpt.name) for s, i in zip(samples, ids)]
    emit(rows, args.json, lambda rs: "\n".join(r["text"] for r in rs))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import engine

    settings = settings_from(args)
    result = engine.evaluate_file(settings, Path(args.file), args.checkpoint)
    emit(result, args.json, lambda d: f"{d['file']}: {d['bits_per_char']} bits/char over "
         f"{d['characters']} characters in {d['lines']} lines ({d['checkpoint']}, step {d['step']})")
    return 0


def cmd_import_fortunes(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    source = Path(args.path) if args.path else corpus.default_fortune_file()
    result = corpus.import_fortunes(source, settings.corpus_file, settings.max_tweet_chars)
    emit({"added": result.added, "rejected": dict(result.rejected)}, args.json,
         lambda d: f"{result.summary()} to {settings.corpus_file}")
    return 0


# ---------------------------------------------------------------- corpus and store commands


def cmd_append(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.file == "-" or args.text == ["-"] or (not args.text and not args.file):
        lines: Sequence[bytes] = sys.stdin.buffer.read().split(b"\n")
        lines = lines[:-1] if lines and lines[-1] == b"" else lines
    elif args.file:
        try:
            lines = Path(args.file).read_bytes().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        lines = args.text
    result = corpus.append_lines(settings.corpus_file, lines)
    emit({"added": result.added, "rejected": dict(result.rejected), "file": str(settings.corpus_file)},
         args.json, lambda d: result.summary())
    return 0


def cmd_tweets(args: argparse.Namespace) -> int:
    from .store import to_utc_iso

    settings = settings_from(args)
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    try:
        since = to_utc_iso(args.since) if args.since else None
    except ValueError:
        raise UsageError(f"--since {args.since!r} is not an ISO 8601 time; "
                         "use e.g. 2026-12-01 or 2026-12-01T10:00") from None
    with open_store(settings) as store:
        rows = store.query_samples(
            since=since, seed=args.seed,
            checkpoint_id=args.checkpoint, status=args.status, search=args.search,
            novel_only=args.novel_only, limit=args.limit)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        emit(rows, True)
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(out.getvalue())
    else:
        print(tweet_table(rows))
    return 0


def tweet_table(rows: list[dict]) -> str:
    if not rows:
        return "no tweets match"
    lines = [f"{'id':>6}  {'status':8}  {'temp':>4}  {'novel':>5}  text"]
    for r in rows:
        novelty = "copy" if r.get("copied") else f"{(r.get('novelty') or 0):.2f}"
        lines.append(f"{r['id']:>6}  {r['status']:8}  {r['temperature']:>4.2f}  {novelty:>5}  {r['text']}")
    return "\n".join(lines)


def cmd_review(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with open_store(settings) as store:
        if args.interactive:
            return review_interactive(store)
        if not args.ids or args.approve == args.reject:
            raise UsageError("give tweet ids and exactly one of --approve or --reject")
        changed = store.review(args.ids, "approved" if args.approve else "rejected")
    missing = len(set(args.ids)) - changed
    emit({"changed": changed, "missing": missing}, args.json,
         lambda d: f"{d['changed']} tweets marked" + (f", {missing} ids not found" if missing else ""))
    return 0 if not missing else 1


def review_interactive(store) -> int:
    rows = store.query_samples(status="new", limit=1000)
    print(f"{len(rows)} new tweets. a = approve, r = reject, s = skip, q = quit")
    done = 0
    for row in reversed(rows):
        print(f"\n#{row['id']} (seed {row['seed']!r}, T={row['temperature']}):\n  {row['text']}")
        answer = input("[a/r/s/q]? ").strip().lower()[:1]
        if answer == "q":
            break
        if answer in ("a", "r"):
            store.review([row["id"]], "approved" if answer == "a" else "rejected")
            done += 1
    print(f"reviewed {done}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .status import daemon_status, format_status

    settings = settings_from(args)
    data = daemon_status(settings)
    emit(data, args.json, format_status)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with open_store(settings) as store:
        rows = store.list_runs(args.limit)
    emit(rows, args.json, lambda rs: "\n".join(
        f"{r['id']:>4} {r['kind']:8} {r['status']:11} {r['started'][:19]} steps={r.get('steps')} "
        f"bpc {r.get('val_bpc_before')} -> {r.get('val_bpc_after')} {r.get('error') or ''}" for r in rs)
        or "no runs yet")
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with open_store(settings) as store:
        rows = store.losses(args.run)
    if args.plot:
        from .plot import plot_losses

        plot_losses(rows, Path(args.plot))
        print(f"wrote {args.plot}")
        return 0
    emit(rows, args.json, lambda rs: "\n".join(
        f"run {r['run_id']} step {r['step']:>7} " + (f"loss {r['loss']:.4f} lr {r['learning_rate']:.2e}"
        if r["kind"] == "train" else f"validation {r['val_bpc']} bits/char") for r in rs)
        or "no losses yet")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import backup

    result = backup(settings_from(args), Path(args.file), args.force,
                    Path(args.checkpoints) if args.checkpoints else None)
    emit(result.as_dict(), args.json, lambda d: (
        f"backed up {sum(d['counts'].values())} rows ({d['bytes']} bytes, integrity ok) to {d['file']}"
        + "".join(f"\ncopied {path}" for path in d["checkpoints"])))
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    from .maintenance import run_maintenance

    settings = settings_from(args, maintenance_vacuum=True if args.vacuum else None)
    with open_store(settings) as store:
        result = run_maintenance(settings, store)
    emit(result, args.json, lambda d: f"deleted {d['deleted']}; WAL checkpoint {d['wal']}"
         + ("; vacuumed" if d["vacuum"] else ""))
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from .daemon import run_daemon

    names = (*DAEMON_FLAGS, "http_address")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    return run_daemon(settings_from(args, **overrides))


# ---------------------------------------------------------------- HTTP and chat


def cmd_serve(args: argparse.Namespace) -> int:
    from .web.server import serve

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    return serve(settings_from(args), args.host, args.port)


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    if not args.verbose:
        logging.getLogger("tweetgen").setLevel(logging.WARNING)  # keep the conversation readable
    return run_chat(settings_from(args), args.temperature, args.mode)


DAEMON_FLAGS = ("finetune_interval_minutes", "generate_interval_minutes", "min_new_lines",
                "initial_steps", "initial_minutes", "samples_per_seed")


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    # The global options work before or after the command name (`tweetgen daemon --home X`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=argparse.SUPPRESS,
                        help="folder holding data/, checkpoints/, db/ (env TWEETGEN_HOME)")
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="a TOML settings file (default: tweetgen.toml under home)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="tweetgen", parents=[common],
                                     description="Self-hosted char-GRU tweet generator.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
        return p

    p = command("train", cmd_train, "train from scratch or continue from the latest checkpoint")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int)
    budget.add_argument("--minutes", type=float)

    p = command("generate", cmd_generate, "generate seeded tweets")
    p.add_argument("--seed", action="append", help="a seed text (repeatable; default: empty)")
    p.add_argument("-n", type=int, default=1, help="samples per seed")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--random-seed", type=int)
    p.add_argument("--mode", choices=("continue", "reply"), default="continue")
    p.add_argument("--checkpoint", help="a checkpoint file name or step (default: the promoted one)")
    p.add_argument("--no-store", action="store_true", help="do not record the samples")

    p = command("eval", cmd_eval, "bits per character of a checkpoint on a text file")
    p.add_argument("file")
    p.add_argument("--checkpoint")

    p = command("import-fortunes", cmd_import_fortunes, "append a fortune file's entries to the corpus")
    p.add_argument("path", nargs="?", help="fortune file (default: the FreeBSD one)")

    p = command("append", cmd_append, "append lines to the corpus (validated, locked, fsynced)")
    p.add_argument("text", nargs="*")
    p.add_argument("--file", help="a file of lines, or - for standard input")

    p = command("tweets", cmd_tweets, "query generated tweets")
    p.add_argument("--since", help="ISO time, e.g. 2026-12-01 or 2026-12-01T10:00")
    p.add_argument("--seed")
    p.add_argument("--checkpoint", type=int, help="checkpoint id")
    p.add_argument("--status", choices=("new", "approved", "rejected"))
    p.add_argument("--search", help="full-text search words")
    p.add_argument("--novel-only", action="store_true")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")

    p = command("review", cmd_review, "approve or reject tweets")
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--approve", action="store_true")
    p.add_argument("--reject", action="store_true")
    p.add_argument("--interactive", action="store_true")

    command("status", cmd_status, "is the daemon alive; checkpoints, waiting lines, last runs")
    p = command("runs", cmd_runs, "training and fine-tune runs")
    p.add_argument("--limit", type=int, default=20)
    p = command("losses", cmd_losses, "training losses and validation bits/char")
    p.add_argument("--run", type=int)
    p.add_argument("--plot", help="write a PNG of the curves (needs the `plot` extra)")

    p = command("backup", cmd_backup, "copy the database safely while the daemon runs")
    p.add_argument("file", help="the copy to write (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--checkpoints", metavar="DIR",
                   help="also copy the promoted and the latest checkpoint into DIR")
    p = command("maintain", cmd_maintain,
                "apply the retention settings and checkpoint the WAL now (the daemon does it daily)")
    p.add_argument("--vacuum", action="store_true", help="also VACUUM (shrinks the file)")

    p = command("daemon", cmd_daemon, "run the scheduler in the foreground")
    for flag in DAEMON_FLAGS:
        kind = int if flag in ("min_new_lines", "initial_steps", "samples_per_seed") else float
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind)
    p.add_argument("--http", dest="http_address", metavar="HOST:PORT",
                   help="also serve the HTTP API and review page there (setting http_address)")

    p = command("serve", cmd_serve, "serve the HTTP API and the review page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")

    p = command("chat", cmd_chat, "talk to the model: each line you type gets a reply tweet")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--mode", choices=("reply", "continue"), default="reply")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in (("home", None), ("config", None), ("verbose", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    setup_logging(args.verbose)
    from .errors import KNOWN_ERRORS

    try:
        return args.func(args)
    except (UsageError, ConfigError, *KNOWN_ERRORS) as exc:
        print(f"tweetgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
