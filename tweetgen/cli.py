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
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import corpus
from .config import ConfigError, Settings, load_settings
from .corpus import terminal_safe
from .export import csv_cell
from .progress import bpc_text, nats_to_bpc

log = logging.getLogger("tweetgen")


class UsageError(ValueError):
    """Bad command-line input; printed as one line."""


def setup_logging(verbose: bool = False) -> None:
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The scheduler's own lines for every heartbeat and job run would drown the daemon's events
    # (a job that fails is still logged, at ERROR with its traceback).
    for noisy in ("apscheduler.scheduler", "apscheduler.executors.light", "apscheduler.executors.checks",
                  "apscheduler.executors.default", "absl", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# The commands that run TensorFlow; it is imported up front for them (import_tensorflow).
TENSORFLOW_COMMANDS = {"train", "generate", "eval", "daemon", "serve", "chat"}


def import_tensorflow(verbose: bool) -> None:
    """Import TensorFlow with its C++ start-up lines dropped unless -v. TensorFlow 2.21 prints
    them through absl before TF_CPP_MIN_LOG_LEVEL applies ("oneDNN custom operations are on",
    twice, each after an absl warning), so standard error is pointed at a temporary file for the
    import; when the import fails, what it printed is shown."""
    if verbose or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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


def read_store(settings: Settings, query: Callable[[Any], Any], empty: Any) -> Any:
    """query(store) for a read-only command; `empty` when there is no database yet (a read
    never creates the database or its folder)."""
    if not settings.db_file.exists():
        return empty
    with open_store(settings) as store:
        return query(store)


def require_checkpoint(settings: Settings) -> None:
    """Before the first checkpoint: say whether a daemon is training it and when it ends."""
    from .status import no_checkpoint_message

    message = no_checkpoint_message(settings)
    if message:
        raise UsageError(message)


# ---------------------------------------------------------------- engine commands


def cmd_train(args: argparse.Namespace) -> int:
    from . import distribute, engine
    from .daemon import InstanceLock
    from .progress import ProgressPrinter

    settings = settings_from(args)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if settings.corpus_set_by:  # a wrong corpus path fails before any folder is made
        corpus.ensure_corpus(settings.corpus_file, settings.max_tweet_chars, settings.corpus_set_by)
    # The strategy first: logical CPU devices and workers are set up before TensorFlow starts.
    # Of a multi-worker run's processes only the chief holds the lock and records the run.
    chief = distribute.is_chief(distribute.strategy_for(settings))
    with (InstanceLock(settings) if chief else contextlib.nullcontext(),
          open_store(settings) if chief else contextlib.nullcontext() as store):
        with ProgressPrinter(bar=sys.stderr.isatty()) as progress:
            outcome = engine.train(settings, args.steps, args.minutes, store=store,
                                   on_log=progress, on_start=progress.begin)
    r = outcome.result
    data = {"run": outcome.run_id, "status": r.status, "steps": r.steps, "step": outcome.trainer.step,
            "train_loss": r.train_loss, "train_bpc": nats_to_bpc(r.train_loss) if r.train_loss else None,
            "val_bpc": r.val_bpc,
            "checkpoint": str(r.checkpoint) if r.checkpoint else None}
    emit(data, args.json, lambda d: f"trained {d['steps']} steps to step {d['step']}: training loss "
         f"{bpc_text(d['train_bpc'])}, "
         f"validation {bpc_text(d['val_bpc'])}, {d['checkpoint']}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from . import engine

    settings = settings_from(args)
    seeds = args.seed if args.seed else [""]
    require_checkpoint(settings)
    generator, ckpt = engine.open_generator(settings, args.checkpoint)
    with (contextlib.nullcontext() if args.no_store else open_store(settings)) as store:
        made = engine.generate_on_demand(settings, generator, ckpt, store, seeds, args.n,
                                         args.temperature, args.top_k, args.random_seed, args.mode,
                                         "cli", raw=args.raw)
    rows = [dict(c.sample.as_dict(), id=i, checkpoint=ckpt.name, score=c.score, fluency=c.fluency,
                 **({"dropped": c.dropped} if args.raw else {}))
            for c, i in zip(made.candidates, made.ids)]
    emit(rows, args.json, lambda rs: "\n".join(terminal_safe(sample_line(r)) for r in rs))
    if not args.raw and len(rows) < args.n * len(set(seeds)):
        log.warning("kept %d of %d candidates (dropped: %s); --raw shows every sample", len(rows),
                    made.sampled, ", ".join(f"{n} {why}" for why, n in sorted(made.dropped.items())))
    return 0


def sample_line(row: dict) -> str:
    """A generated tweet for people; a reply names the seed it answers (it does not start with it)."""
    return f"{row['seed']!r} -> {row['text']}" if row.get("mode") == "reply" else row["text"]


def cmd_eval(args: argparse.Namespace) -> int:
    from . import engine

    settings = settings_from(args)
    require_checkpoint(settings)
    result = engine.evaluate_file(settings, Path(args.file), args.checkpoint)
    emit(result, args.json, lambda d: f"{d['file']}: {bpc_text(d['bits_per_char'])} over "
         f"{d['characters']} characters in {d['lines']} lines ({d['checkpoint']}, step {d['step']})")
    return 0


def cmd_import_fortunes(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    source = Path(args.path) if args.path else corpus.default_fortune_file()
    result = corpus.import_fortunes(source, settings.corpus_file, settings.max_tweet_chars)
    emit({"added": result.added, "rejected": dict(result.rejected)}, args.json,
         lambda d: f"{result.summary()} to {settings.corpus_file}")
    return 0


def cmd_import_dialog(args: argparse.Namespace) -> int:
    from .dialog import read_dialogs

    if args.output and args.corpus:
        raise UsageError("give --output FILE or --corpus, not both")
    dialog = read_dialogs(Path(name) for name in args.files)  # all read before anything is written
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(dialog.skipped.items())) or "none"
    summary = f"{len(dialog.pairs)} pairs from {dialog.files} files (skipped: {skipped})"
    if not (args.output or args.corpus):
        sys.stdout.write("".join(f"{line}\n" for line in dialog.lines()))
        print(summary, file=sys.stderr)
        return 0
    target = settings_from(args).corpus_file if args.corpus else Path(args.output)
    result = corpus.append_lines(target, dialog.lines())  # locked and all or nothing, like append
    emit({"pairs": len(dialog.pairs), "added": result.added, "skipped": dict(dialog.skipped),
          "file": str(target)}, args.json,
         lambda d: f"{summary}; appended {result.added} to {target} (context_mode = \"pairs\" trains them)")
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
    rows = read_store(settings, lambda store: store.query_samples(
        since=since, seed=args.seed, checkpoint_id=args.checkpoint, status=args.status,
        search=args.search, novel_only=args.novel_only, limit=args.limit, order=args.order), [])
    fmt = "json" if args.json else args.format
    if fmt == "json":
        emit(rows, True)
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)
        sys.stdout.write(out.getvalue())
    else:
        print(tweet_table(rows))
    return 0


def tweet_table(rows: list[dict]) -> str:
    if not rows:
        return "no tweets match"
    lines = [f"{'id':>6}  {'status':8}  {'temp':>4}  {'novel':>5}  {'score':>5}  text"]
    for r in rows:
        novelty = "copy" if r.get("copied") else f"{(r.get('novelty') or 0):.2f}"
        score = "" if r.get("score") is None else f"{r['score']:.2f}"
        text = terminal_safe(r["text"])
        lines.append(f"{r['id']:>6}  {r['status']:8}  {r['temperature']:>4.2f}  {novelty:>5}  {score:>5}  "
                     f"{text}")
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
        text = terminal_safe(row["text"])
        print(f"\n#{row['id']} (seed {row['seed']!r}, T={row['temperature']}):\n  {text}")
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
    from .status import run_text

    settings = settings_from(args)
    rows = read_store(settings, lambda store: store.list_runs(args.limit), [])
    emit(rows, args.json, lambda rs: "\n".join(run_text(r) for r in rs) or "no runs yet")
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    rows = read_store(settings, lambda store: store.losses(args.run), [])
    if args.plot:
        from .plot import plot_losses

        plot_losses(rows, Path(args.plot))
        print(f"wrote {args.plot}")
        return 0
    emit(rows, args.json, lambda rs: "\n".join(
        f"run {r['run_id']} step {r['step']:>7} " + (
            f"training loss {bpc_text(nats_to_bpc(r['loss']))}, lr {r['learning_rate']:.2e}"
            if r["kind"] == "train" else f"validation {bpc_text(r['val_bpc'])}") for r in rs)
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


# ---------------------------------------------------------------- a way out: export, webhook outbox


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_text
    from .store import to_utc_iso

    settings = settings_from(args)
    try:
        since = to_utc_iso(args.since) if args.since else None
    except ValueError:
        raise UsageError(f"--since {args.since!r} is not an ISO 8601 time; "
                         "use e.g. 2026-12-01 or 2026-12-01T10:00") from None
    with open_store(settings) as store:
        rows = store.export_samples(args.status, since)
    sys.stdout.write(export_text(rows, "json" if args.json else args.format))
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with open_store(settings) as store:
        retried = store.retry_failed_outbox() if args.retry else 0
        statuses = ["pending", "failed"] if args.status == "waiting" else [args.status]
        data = {"webhook_url": settings.webhook_url or None, "counts": store.outbox_counts(),
                "retried": retried, "messages": store.outbox_rows(statuses, args.limit)}
    emit(data, args.json, outbox_text)
    return 0


def outbox_text(data: dict) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in data["counts"].items())
    lines = [f"webhook {data['webhook_url'] or 'not configured (setting webhook_url)'}: {counts}"]
    if data["retried"]:
        lines.append(f"{data['retried']} failed messages made pending again")
    for m in data["messages"]:
        lines.append(f"tweet {m['sample_id']:>6}  {m['status']:9} attempts {m['attempts']:>3}  "
                     f"next {m['next_attempt'][:19]}  {m['last_error'] or ''}")
    return "\n".join(lines)


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
    settings = settings_from(args)
    require_checkpoint(settings)
    return run_chat(settings, args.temperature, args.mode)


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
    p.add_argument("--raw", action="store_true",
                   help="plain samples: no candidate selection (each still scored; JSON says why "
                        "selection would drop it)")

    p = command("eval", cmd_eval, "bits per character of a checkpoint on a text file")
    p.add_argument("file")
    p.add_argument("--checkpoint")

    p = command("import-fortunes", cmd_import_fortunes, "append a fortune file's entries to the corpus")
    p.add_argument("path", nargs="?", help="fortune file (default: the FreeBSD one)")

    p = command("import-dialog", cmd_import_dialog,
                "message<TAB>reply pairs from ChatterBot YAML or TSV files: to standard output, "
                "or appended to a corpus")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="ChatterBot corpus .yml/.yaml (conversations:), or message<TAB>reply lines")
    p.add_argument("--output", metavar="FILE", help="append the pairs to this corpus file")
    p.add_argument("--corpus", action="store_true", help="append the pairs to the configured corpus")

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
    p.add_argument("--order", choices=("newest", "score"), default="newest",
                   help="newest first, or best selection score first")

    p = command("review", cmd_review, "approve or reject tweets")
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--approve", action="store_true")
    p.add_argument("--reject", action="store_true")
    p.add_argument("--interactive", action="store_true")

    p = command("export", cmd_export, "write reviewed tweets as CSV, JSON or plain text")
    p.add_argument("--status", choices=("approved", "rejected", "new"), default="approved")
    p.add_argument("--format", choices=("csv", "json", "txt"), default="txt")
    p.add_argument("--since", help="reviewed (new: created) at or after this ISO time")
    p = command("outbox", cmd_outbox, "webhook deliveries waiting (pending or failed)")
    p.add_argument("--status", choices=("waiting", "pending", "failed", "delivered", "cancelled"),
                   default="waiting", help="which messages to list (waiting: pending and failed)")
    p.add_argument("--retry", action="store_true", help="make failed messages pending again")
    p.add_argument("--limit", type=int, default=100)

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
        if args.command == "daemon":
            # Before TensorFlow starts its threads: each would otherwise get its own arena.
            from .malloc import limit_malloc_arenas

            limit_malloc_arenas()
        if args.command in TENSORFLOW_COMMANDS:
            import_tensorflow(args.verbose)
        return args.func(args)
    except (UsageError, ConfigError, *KNOWN_ERRORS) as exc:
        print(f"tweetgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
