"""How far can any training take the stream's new style? An upper bound for bench/stream.py.

    .venv/bin/python -m bench.stream --keep base --batches 0           (once: the initial model)
    .venv/bin/python -m bench.stream_bound --home base --weight 4 [--steps 3000] [--lr 1e-3]

The stream's initial model (the promoted checkpoint of a `bench.stream --keep` home) is trained
on, with no promotion rule and no tolerance, on the fortunes' training lines plus ALL the
appendable lines of the new style (`--style`, the same shuffle and held-out tail as bench/stream.py)
drawn `--weight` times each, for a cosine plan of `--steps` at a peak of `--lr`, on one core.
Every `--every` steps it prints the bits/char of the same held-out new-style lines and the same
old validation file that bench/stream.py scores. The best new-style figure over such runs bounds
what the daemon's fine-tunes and idle training could reach on that data (README, Stream).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path[0] = str(REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a `bench.stream --keep` folder")
    parser.add_argument("--style", default="zippy")
    parser.add_argument("--weight", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, [args.cpu])
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tweetgen import corpus
    from tweetgen.checkpoints import CheckpointManager, load_checkpoint
    from tweetgen.config import Settings
    from tweetgen.train import bits_per_char, encode_lines
    from tweetgen.trainer import TrainData, Trainer, TrainJob

    promoted = CheckpointManager(args.home / "checkpoints").promoted_path()
    held_file, old_file = args.home / "held_out.txt", args.home / "old_validation.txt"
    if promoted is None or not held_file.exists() or not old_file.exists():
        raise SystemExit(f"{args.home} is not a `bench.stream --keep` folder with its initial model; "
                         "make one with `python -m bench.stream --keep DIR --batches 0`")
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="tweetgen-bound-")))
    trainer = Trainer.from_checkpoint(settings, load_checkpoint(promoted))
    held, old_val = held_file.read_text().splitlines(), old_file.read_text().splitlines()
    entries, _ = corpus.fortune_entries(
        corpus.default_fortune_file().with_name(args.style).read_text(errors="replace"))
    random.Random(7).shuffle(entries)  # as bench/stream.py: its held-out tail is never trained
    stream = entries[: len(entries) - len(held)]
    skip = set(old_val)
    fortunes = [line for line in corpus.read_lines(args.home / "data" / "corpus.txt").lines
                if line not in skip]
    trainer.grow_vocab(sorted({c for line in stream for c in line} - set(trainer.vocab.chars)))
    extra = stream * int(args.weight) + random.Random(1).sample(
        stream, round((args.weight - int(args.weight)) * len(stream)))

    def encoded(lines: list[str]) -> list:
        return encode_lines(lines, trainer.vocab, settings.max_tweet_chars)[0]

    data = TrainData(train=encoded(fortunes + extra), validation=encoded(old_val),
                     new_validation=encoded(held))
    job = TrainJob("finetune", 5, 0, 0, 0, learning_rate=args.lr)
    job.new_plan(trainer.step, steps=args.steps)
    manager = CheckpointManager(settings.home / "checkpoints", keep=2)
    first, rows = trainer.step, []
    print(f"{len(fortunes)} fortunes + {len(stream)} {args.style} lines x {args.weight:g}; "
          f"{len(held)} held out; plan {args.steps} steps at peak {args.lr:g}")
    print(f"{'steps':>6} {'new-style':>10} {'old val':>8}")
    # The initial model, measured in this run: the baseline every difference below is against.
    start = {"new_style": bits_per_char(trainer.model, data.new_validation, eval_fn=trainer.eval_fn),
             "old_val": trainer.validation_bpc(data)}
    print(f"{0:>6} {start['new_style']:>10.4f} {start['old_val']:>8.4f}   (the initial model)", flush=True)
    while not job.done:
        mark = trainer.step + args.every
        result = trainer.run(job, data, manager, should_stop=lambda mark=mark: trainer.step >= mark)
        rows.append({"steps": trainer.step - first, "new_style": result.val_new_bpc,
                     "old_val": result.val_bpc})
        print(f"{rows[-1]['steps']:>6} {result.val_new_bpc:>10.4f} {result.val_bpc:>8.4f}", flush=True)
    best = min(rows, key=lambda r: r["new_style"])
    print(f"best new-style {best['new_style']:.4f} at step {best['steps']} "
          f"({best['new_style'] - start['new_style']:+.4f} against the initial model; "
          f"old val {best['old_val']:.4f}, {best['old_val'] - start['old_val']:+.4f})")
    print(json.dumps({"weight": args.weight, "steps": args.steps, "lr": args.lr, "start": start,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
