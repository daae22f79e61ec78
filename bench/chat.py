"""Chat: does context training teach replies, and what does it cost continue mode?

    .venv/bin/python -m bench.chat [--minutes 10] [--share 0.5] [--json]
    .venv/bin/python -m bench.chat --tiny                      (a smoke run, about a minute)

The corpus is the default one (the FreeBSD `fortunes` file, as in bench/race.py) plus the English
dialog pairs of the `chatterbot-corpus` package (`pip install 'tweetgen[dialog]'`), imported the
way `tweetgen import-dialog` does (`message<TAB>reply` lines). Two sides train from scratch on it
for `--minutes` of training time each, at the same time, each in its own process pinned to its
own core with one TensorFlow thread, with the default settings and the same vocabulary:

- A: `context_mode = "none"`: every line alone (a pair is one text, its tab read as a space).
- B: `context_mode = "pairs"`: a `context_share` (`--share`, default the setting's) of the pairs
  trained as `<eos> message <sep> reply <eos>`, the loss on the reply; the rest as the reply alone.

Held out by the corpus's own stable split, and scored by the same code
(`tweetgen.train.bits_per_char`), at the end of each side's plan:

1. on B, the held-out dialog replies' bits/char given their message (`<eos> message <sep>`
   before them, the loss on the reply and its end) against the same replies given nothing
   (`<eos> reply <eos>`). Target: at least 0.15 lower given the message.
2. continue-mode validation on the held-out fortunes (single lines), B against A. Target: B no
   worse than +0.02.

`--tiny`: a small model, a sample of the corpus and 30 seconds a side, to check that it runs (its
figures mean nothing). The machine may be shared: read the load average printed with the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/chat.py`: import from the repository root
    sys.path[0] = str(REPO)

from bench.engine import bench_settings  # noqa: E402
from bench.race import finish, pin  # noqa: E402

REPLY_TARGET = -0.15  # reply bits/char given the message minus given nothing, at most
CONTINUE_TARGET = 0.02  # B's fortune validation minus A's, at most
TINY = {"gru_sizes": (32, 32), "embedding_dim": 16, "batch_size": 16, "lr_warmup_steps": 10}
TINY_SECONDS = 30
TINY_LINES = 600  # fortunes and pairs each, in --tiny


# ---------------------------------------------------------------- the corpus


def dialog_files() -> list[Path]:
    """The English ChatterBot corpus files; a clear error when the package is not installed."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise SystemExit("bench/chat.py needs the chatterbot-corpus package for its dialog pairs: "
                         "pip install 'tweetgen[dialog]' (or pip install chatterbot-corpus)") from None
    files = sorted((Path(chatterbot_corpus.__file__).parent / "data" / "english").glob("*.yml"))
    if not files:
        raise SystemExit(f"chatterbot-corpus at {chatterbot_corpus.__file__} has no English data files")
    return files


def write_corpus(path: Path, tiny: bool) -> dict:
    """Fortunes, then the dialog pairs (in --tiny, a seeded sample of each), shuffled together
    so neither kind sits at one end of the file."""
    from tweetgen import corpus
    from tweetgen.dialog import read_dialogs

    fortunes, _ = corpus.fortune_entries(corpus.default_fortune_file().read_text("utf-8", "replace"), 140)
    pairs = read_dialogs(dialog_files()).lines()
    rng = random.Random(7)
    if tiny:
        fortunes, pairs = rng.sample(fortunes, TINY_LINES), rng.sample(pairs, min(TINY_LINES, len(pairs)))
    lines = fortunes + pairs
    rng.shuffle(lines)
    path.unlink(missing_ok=True)
    corpus.append_lines(path, lines)
    return {"fortunes": len(fortunes), "pairs": len(pairs)}


def held_out(settings) -> tuple[list[str], list[str]]:
    """The validation fortunes (bounded subset) and the validation pair lines, by the corpus split."""
    from tweetgen import corpus
    from tweetgen.trainer import split_lines, validation_subset

    _, validation = split_lines(corpus.read_lines(settings.corpus_file).lines, settings.validation_fraction)
    pairs = [line for line in validation if corpus.PAIR_SEP in line]
    fortunes = [line for line in validation if corpus.PAIR_SEP not in line]
    return validation_subset(fortunes, settings.max_validation_lines), pairs


# ---------------------------------------------------------------- one side (a child process)


def side_settings(workdir: Path, side: str, tiny: bool, share: float | None):
    settings = bench_settings(workdir, side)
    mode = "pairs" if side == "b" else "none"
    changes = {"context_mode": mode, "cpu_threads": 1, **(TINY if tiny else {})}
    if share is not None:
        changes["context_share"] = share
    return dataclasses.replace(settings, **changes)


def child(workdir: Path, side: str, seconds: float, cpu: int, tiny: bool, share: float | None) -> dict:
    pin([cpu])
    from tweetgen import corpus, engine
    from tweetgen.checkpoints import CheckpointManager
    from tweetgen.context import Example, encode_examples, examples
    from tweetgen.train import bits_per_char
    from tweetgen.trainer import Trainer, TrainJob, build_data

    settings = side_settings(workdir, side, tiny, share)
    vocab = engine.build_vocab(settings)  # the same for both sides (<sep> reserved in both)
    trainer = Trainer.fresh(settings, vocab)
    job = TrainJob("train", settings.random_seed, 0, corpus.complete_end(settings.corpus_file), 0)
    job.new_plan(0, seconds=seconds)
    data = build_data(settings, vocab, job)
    trainer.run(job, data, CheckpointManager(settings.checkpoints, keep=1))

    fortunes, pair_lines = held_out(settings)
    replies = examples(pair_lines, "pairs")
    max_chars, model = settings.max_line_chars, trainer.model

    def bpc(items: list[Example]) -> float:
        return bits_per_char(model, encode_examples(items, vocab, max_chars)[0])

    return {"side": side, "context_mode": settings.context_mode, "context_share": settings.context_share,
            "steps": trainer.step, "trained_s": job.elapsed_seconds,
            "fortune_lines": len(fortunes), "held_out_pairs": len(pair_lines),
            "fortunes_bpc": bpc(examples(fortunes, "none")),
            "reply_alone_bpc": bpc([item.single() for item in replies]),
            "reply_given_message_bpc": bpc(replies) if side == "b" else None}


# ---------------------------------------------------------------- the parent


def start_child(workdir: Path, side: str, args: argparse.Namespace, cpu: int) -> subprocess.Popen:
    seconds = TINY_SECONDS if args.tiny else args.minutes * 60
    cmd = [sys.executable, "-m", "bench.chat", "--child", side, "--workdir", str(workdir),
           "--seconds", str(seconds), "--cpu", str(cpu)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--share", str(args.share)] if args.share is not None else []
    log = open(workdir / f"{side}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def summary(a: dict, b: dict) -> dict:
    reply_difference = b["reply_given_message_bpc"] - b["reply_alone_bpc"]
    continue_difference = b["fortunes_bpc"] - a["fortunes_bpc"]
    return {"reply_difference": reply_difference,
            "reply_ratio": b["reply_given_message_bpc"] / b["reply_alone_bpc"],
            "reply_target_met": reply_difference <= REPLY_TARGET,
            "continue_difference": continue_difference,
            "continue_ratio": b["fortunes_bpc"] / a["fortunes_bpc"],
            "continue_target_met": continue_difference <= CONTINUE_TARGET}


def print_report(r: dict) -> None:
    a, b, s = r["a"], r["b"], r["summary"]
    length = "--tiny (30 s a side, small model: a smoke run)" if r["tiny"] else f"{r['minutes']:g} min"
    print(f"chat: {length} of training per side, one core each, side by side; load average "
          f"{r['load_avg_1min'][0]:.1f} -> {r['load_avg_1min'][1]:.1f}")
    print(f"corpus: {r['corpus']['fortunes']:,} fortunes + {r['corpus']['pairs']:,} dialog pairs; held out: "
          f"{b['fortune_lines']} fortunes, {b['held_out_pairs']} pairs")
    print(f"                                  A: none      B: pairs (share {b['context_share']:g})")
    print(f"steps                             {a['steps']:<12,} {b['steps']:,}")
    print(f"held-out replies given nothing    {a['reply_alone_bpc']:.4f}       {b['reply_alone_bpc']:.4f}")
    print(f"  ... given their message                      {b['reply_given_message_bpc']:.4f}   "
          f"difference {s['reply_difference']:+.4f}, ratio {s['reply_ratio']:.3f} "
          f"(target <= {REPLY_TARGET:+.2f}: {'met' if s['reply_target_met'] else 'NOT met'})")
    print(f"fortunes validation (continue)    {a['fortunes_bpc']:.4f}       {b['fortunes_bpc']:.4f}   "
          f"B - A {s['continue_difference']:+.4f}, ratio {s['continue_ratio']:.3f} "
          f"(target <= {CONTINUE_TARGET:+.2f}: {'met' if s['continue_target_met'] else 'NOT met'})")
    print("bits/char: masked, end-of-text included; a reply given its message counts the reply and its end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per side (default 10)")
    parser.add_argument("--share", type=float, help="side B's context_share (default: the setting's)")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: small model, 30 s a side")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", choices=("a", "b"), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.workdir, args.child, args.seconds, args.cpu, args.tiny, args.share)))
        return 0

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit(f"this process may use cores {cores}: the two sides need two")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tweetgen-chat-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for home in ("a", "b"):  # from scratch, never from a previous run
        shutil.rmtree(workdir / home, ignore_errors=True)
    counts = write_corpus(workdir / "corpus.txt", args.tiny)
    load = [os.getloadavg()[0]]
    procs = {"a": start_child(workdir, "a", args, cores[0]), "b": start_child(workdir, "b", args, cores[1])}
    results = {side: finish(side, proc, workdir) for side, proc in procs.items()}
    load.append(os.getloadavg()[0])
    results.update(minutes=args.minutes, tiny=args.tiny, corpus=counts,
                   load_avg_1min=[round(x, 2) for x in load])
    results["summary"] = summary(results["a"], results["b"])
    (workdir / "chat.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    else:
        print_report(results)
        print(f"results: {workdir / 'chat.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
