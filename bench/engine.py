"""Engine benchmark: our trainer and sampler against the lecture's way, measured in the same run.

    .venv/bin/python -m bench.engine [--minutes 5] [--json]      (or: python bench/engine.py)

Everything is measured in one run, on the default corpus (the FreeBSD `fortunes` file, cleaned
with `tweetgen.corpus.fortune_entries`: entries of at most 140 characters), the default model
(`Settings()`: embedding 64, GRU 128 then 256, dropout 0.1) and batch 64. The machine is shared
and noisy (about +-7% between runs), so read the ratios, which are measured in the same run.
Each role runs in its own child process, one after the other, so their peak RSS
(`ru_maxrss` of that process, TensorFlow's ~500 MB included) and their threads do not mix.

1. Training throughput. *Ours*: `tweetgen.engine.train` (Trainer + Batcher, the real code path:
   one line per sequence, length-bucketed padded batches, masked loss, Adam, clipping, lr decay,
   dropout) on a scratch home; intermediate checkpoints are turned off (`checkpoint_every` huge),
   the end-of-run checkpoint (with its validation pass) is written after the budget.
   *Baseline* (the lecture's way): the lines joined into one text with a separator after each
   line, cut into fixed 50-character windows with overlap 25 (stride 25), one-hot float32 inputs
   built up front in numpy, a Keras `Input -> GRU(128) -> GRU(256) -> Dense` model trained with
   `model.fit(batch_size=64, shuffle=True)`, Adam at the same base learning rate (2e-3) with the
   same global-norm clipping (5.0), no decay, no dropout, TensorFlow's default settings.
   Useful characters/s = predicted non-padding targets per second (the baseline has no padding:
   64 x 50 per step; its overlap means each character is seen about twice per epoch, and both
   copies are counted). The figure is the median over logging windows of 25 steps (ours:
   `StepLog.chars_per_s`) or 25 batches (baseline), the first window (tracing) left out.
   GFLOP/s = chars/s x the model's matrix-multiply FLOPs per trained character (3 x forward:
   forward, gradient to inputs, gradient to weights; the baseline's one-hot matmul is counted,
   our embedding lookup is not), against the ceiling: numpy float32 1024x1024 matmul,
   measured at the start and at the end of the run (the better median is the ceiling).
2. Quality at equal wall-clock time: each side trains for `--minutes` (default 5; the clock
   starts before its data preparation and includes tracing), then both are scored on the
   *same* validation lines (the trainer's own split and bounded subset), with the *same* code
   (`tweetgen.train.bits_per_char`: masked bits/char, end-of-text included). For this to be fair
   the baseline uses our vocabulary (the same ids; rare characters are <unk> for both) and its
   line separator is our end-of-text id, i.e. the lecture's '\\n' between lines: so the
   baseline learns to end a line exactly as ours does, and is scored on [eos] + line -> line +
   [eos] exactly like ours, end-of-text included, from a zero state.
3. Generation: 64 seeded tweets of at most 140 characters (seeds: the first word of the first
   64 validation lines; temperature 0.8). *Ours*: `tweetgen.generate.Generator` on the
   checkpoint that (1) wrote, loaded by `engine.open_generator` (novelty scoring off: it is
   post-processing the lecture does not do); one call, all 64 in one compiled loop; the first
   call (tracing) is reported apart, the figure is the median of the next calls. Rows stop at
   end-of-text but the batch runs until its longest row is done (every step costs the whole
   batch), and the run reports how many rows reached the limit. *Lecture*: the baseline model's
   cells in one compiled single-step `tf.function` (batch 1, one-hot input), called once per
   character from Python, one seed at a time, the state fed back, sampling on the host with
   numpy; every tweet is generated to the full 140 characters. Only `--lecture-seeds` seeds
   (default 16) are timed and the time is extrapolated to 64 (it is linear in the seeds).
4. Peak RSS of each child: training ours, training baseline, generation ours, generation lecture.

Targets (issue 2): training >= 1.3x the baseline and >= 60% of the ceiling; lower validation
bits/char than the baseline; generation >= 60x the lecture's method and >= 400 tweets/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/engine.py`: import from the repository root,
    # not from bench/ (whose other modules must not shadow the standard library's)
    sys.path[0] = str(REPO)

import numpy as np

ROLES = ("train-ours", "train-base", "gen-ours", "gen-lecture")
BATCH = 64
WINDOW, STRIDE = 50, 25
TEMPERATURE = 0.8
N_TWEETS = 64
LOG_WINDOW = 25


# ---------------------------------------------------------------- shared helpers


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def forward_flops_per_char(input_dim: int, gru_sizes, vocab_size: int) -> int:
    """Matrix-multiply FLOPs of one character through GRU layers and the output layer."""
    flops, d = 0, input_dim
    for h in gru_sizes:
        flops += 2 * d * 3 * h + 2 * h * 3 * h
        d = h
    return flops + 2 * d * vocab_size


def bench_settings(workdir: Path):
    from tweetgen.config import Settings

    return Settings(home=workdir / "ours", corpus_path=workdir / "corpus.txt",
                    checkpoint_every=10**9, log_every=LOG_WINDOW)


def shared_data(settings):
    """Vocabulary, training lines and validation sequences, the same for both sides."""
    from tweetgen import corpus, engine
    from tweetgen.train import encode_lines
    from tweetgen.trainer import split_lines, validation_subset

    vocab = engine.build_vocab(settings)
    lines = corpus.read_lines(settings.corpus_file).lines
    train, val = split_lines(lines, settings.validation_fraction)
    val = validation_subset(val, settings.max_validation_lines)
    val_seqs, _ = encode_lines(val, vocab, settings.max_line_chars)
    return vocab, train, val, val_seqs


def bench_seeds(val_lines: list[str]) -> list[str]:
    return [line.split(" ", 1)[0][:40] for line in val_lines[:N_TWEETS]]


def steady_rate(rates: list[float]) -> float | None:
    rates = rates[1:] if len(rates) > 1 else rates
    return statistics.median(rates) if rates else None


# ---------------------------------------------------------------- child roles


def child_train_ours(workdir: Path, minutes: float) -> dict:
    from tweetgen import engine
    from tweetgen.train import Batcher, bits_per_char, encode_lines

    settings = bench_settings(workdir)
    vocab, train_lines, _, val_seqs = shared_data(settings)
    logs = []
    outcome = engine.train(settings, minutes=minutes, on_log=logs.append)
    trainer = outcome.trainer
    bpc = bits_per_char(trainer.model, val_seqs)
    # Padding share of one epoch of our batches (what the bucketing leaves).
    seqs, _ = encode_lines(train_lines, vocab, settings.max_line_chars)
    batcher = Batcher(seqs, settings.batch_size, settings.random_seed)
    useful = cells = 0
    for _ in range(len(batcher._plan)):
        b = batcher.next()
        useful += int(np.count_nonzero(b[:, 1:]))
        cells += b[:, 1:].size
    cfg = trainer.model_config
    input_dim = cfg["embedding_dim"] if cfg["input_mode"] == "embedding" else vocab.size
    return {
        "chars_per_s": steady_rate([e.chars_per_s for e in logs]),
        "windows": len(logs),
        "steps": outcome.result.steps,
        "val_bpc": bpc,
        "checkpoint_val_bpc": outcome.result.val_bpc,
        "final_train_loss": outcome.result.train_loss,
        "padding_share": 1 - useful / cells,
        "train_step_traces": trainer.train_step.experimental_get_tracing_count(),
        "fwd_flops_per_char": forward_flops_per_char(input_dim, cfg["gru_sizes"], vocab.size),
        "vocab_size": vocab.size,
        "train_lines": len(train_lines),
        "val_lines": len(val_seqs),
        "val_chars": int(sum(len(s) - 1 for s in val_seqs)),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "peak_rss_mb": peak_rss_mb(),
    }


def baseline_model(vocab_size: int, gru_sizes):
    import keras

    inputs = keras.Input(shape=(None, vocab_size))
    x = inputs
    for units in gru_sizes:
        x = keras.layers.GRU(units, return_sequences=True)(x)
    return keras.Model(inputs, keras.layers.Dense(vocab_size)(x))


def child_train_base(workdir: Path, minutes: float) -> dict:
    import keras
    import tensorflow as tf

    from tweetgen.train import bits_per_char, masked_loss_sum
    from tweetgen.vocab import EOS

    settings = bench_settings(workdir)
    vocab, train_lines, _, val_seqs = shared_data(settings)
    keras.utils.set_random_seed(settings.random_seed)
    started = time.perf_counter()
    deadline = started + minutes * 60
    # The lecture's data: one text, the lines separated (here: by our end-of-text id).
    ids = np.concatenate([np.concatenate([[EOS], vocab.encode(line)[0]]) for line in train_lines] + [[EOS]])
    starts = np.arange(0, len(ids) - WINDOW - 1, STRIDE)
    windows = ids[starts[:, None] + np.arange(WINDOW + 1)]
    x = np.eye(vocab.size, dtype=np.float32)[windows[:, :-1]]  # one-hot, up front
    y = windows[:, 1:].astype(np.int32)
    model = baseline_model(vocab.size, settings.gru_sizes)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate,
                                                  global_clipnorm=settings.clip_norm),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.batches, self.rates, self.mark = 0, [], time.perf_counter()

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.batches += 1
            if self.batches % LOG_WINDOW == 0:
                now = time.perf_counter()
                self.rates.append(LOG_WINDOW * BATCH * WINDOW / (now - self.mark))
                self.mark = now
            if time.perf_counter() >= deadline:
                self.model.stop_training = True

    clock = Clock()
    model.fit(x, y, batch_size=BATCH, epochs=10**6, shuffle=True, verbose=0, callbacks=[clock])
    trained_s = time.perf_counter() - started

    @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32)], reduce_retracing=True)
    def eval_batch(batch):
        logits = model(tf.one_hot(batch[:, :-1], vocab.size), training=False)
        return masked_loss_sum(batch[:, 1:], logits)

    bpc = bits_per_char(model, val_seqs, eval_fn=eval_batch)
    np.savez(workdir / "baseline-weights.npz", *model.get_weights())
    return {
        "chars_per_s": steady_rate(clock.rates),
        "windows": len(clock.rates),
        "steps": clock.batches,
        "trained_s": trained_s,
        "val_bpc": bpc,
        "train_windows": len(windows),
        "fwd_flops_per_char": forward_flops_per_char(vocab.size, settings.gru_sizes, vocab.size),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "peak_rss_mb": peak_rss_mb(),
    }


def child_gen_ours(workdir: Path, repeats: int = 5) -> dict:
    from tweetgen import engine

    settings = bench_settings(workdir)
    _, _, val_lines, _ = shared_data(settings)
    seeds = bench_seeds(val_lines)
    generator, _ = engine.open_generator(settings, with_novelty=False)
    t = time.perf_counter()
    generator.generate(seeds, 1, TEMPERATURE, random_seed=0)
    first_s = time.perf_counter() - t
    times, samples = [], []
    for r in range(1, repeats + 1):
        t = time.perf_counter()
        samples = generator.generate(seeds, 1, TEMPERATURE, random_seed=r)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {
        "seconds_64": median,
        "tweets_per_s": len(seeds) / median,
        "first_call_s": first_s,
        "loop_traces": generator._loop.experimental_get_tracing_count(),
        "at_limit": sum(s.ended == "limit" for s in samples),
        "mean_chars": statistics.mean(len(s.text) for s in samples),
        "example": samples[0].text,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "peak_rss_mb": peak_rss_mb(),
    }


def child_gen_lecture(workdir: Path, n_seeds: int) -> dict:
    import tensorflow as tf

    from tweetgen.vocab import EOS

    settings = bench_settings(workdir)
    vocab, _, val_lines, _ = shared_data(settings)
    seeds = bench_seeds(val_lines)[:n_seeds]
    model = baseline_model(vocab.size, settings.gru_sizes)
    with np.load(workdir / "baseline-weights.npz") as data:
        model.set_weights([data[f"arr_{i}"] for i in range(len(data.files))])
    grus = [layer for layer in model.layers if "gru" in layer.name]
    dense = model.layers[-1]
    sizes = [g.cell.units for g in grus]

    @tf.function(input_signature=[tf.TensorSpec((1, vocab.size), tf.float32)]
                 + [tf.TensorSpec((1, h), tf.float32) for h in sizes])
    def step(x, *states):
        new = []
        for gru, state in zip(grus, states):
            x, _ = gru.cell(x, [state])
            new.append(x)
        return (dense(x), *new)

    rng = np.random.default_rng(0)

    def one_hot(i: int) -> np.ndarray:
        x = np.zeros((1, vocab.size), np.float32)
        x[0, i] = 1.0
        return x

    def tweet(seed: str) -> str:
        states = [np.zeros((1, h), np.float32) for h in sizes]
        out = [EOS, *vocab.encode(seed)[0].tolist()]
        for i in out:
            logits, *states = step(one_hot(i), *states)
        while len(out) - 1 < settings.max_tweet_chars:
            z = logits.numpy()[0].astype(np.float64) / TEMPERATURE
            p = np.exp(z - z.max())
            p /= p.sum()
            i = int(rng.choice(vocab.size, p=p))
            out.append(i)
            logits, *states = step(one_hot(i), *states)
        return vocab.decode(out[1:])

    t = time.perf_counter()
    tweet(seeds[0])  # traces the step
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    texts = [tweet(s) for s in seeds]
    elapsed = time.perf_counter() - t
    per_tweet = elapsed / len(seeds)
    return {
        "timed_seeds": len(seeds),
        "seconds_per_tweet": per_tweet,
        "seconds_64": per_tweet * N_TWEETS,
        "tweets_per_s": 1 / per_tweet,
        "first_call_s": first_s,
        "example": texts[0],
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(role: str, workdir: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if role in ("train-base", "gen-lecture"):
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # the lecture's way: TensorFlow's defaults
    cmd = [sys.executable, "-m", "bench.engine", "--child", role, "--workdir", str(workdir),
           "--minutes", str(args.minutes), "--lecture-seeds", str(args.lecture_seeds)]
    log_path = workdir / f"{role}.log"
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"benchmark role {role} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    if not args.json:
        print(f"  {role}: done in {result['process_s']:.0f} s", file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------- the report


def summarize(r: dict) -> dict:
    ceiling = r["ceiling_gflops"]
    out: dict = {}
    ours, base = r.get("train-ours"), r.get("train-base")
    if ours:
        out["ours_gflops"] = ours["chars_per_s"] * 3 * ours["fwd_flops_per_char"] / 1e9
        out["ours_ceiling_share"] = out["ours_gflops"] / ceiling
    if base:
        out["base_gflops"] = base["chars_per_s"] * 3 * base["fwd_flops_per_char"] / 1e9
        out["base_ceiling_share"] = out["base_gflops"] / ceiling
    if ours and base:
        out["train_ratio"] = ours["chars_per_s"] / base["chars_per_s"]
        out["bpc_difference"] = ours["val_bpc"] - base["val_bpc"]
    g, lec = r.get("gen-ours"), r.get("gen-lecture")
    if g and lec:
        out["gen_ratio"] = g["tweets_per_s"] / lec["tweets_per_s"]
    checks = {}
    if "train_ratio" in out:
        checks["training >= 1.3x baseline"] = out["train_ratio"] >= 1.3
    if "ours_ceiling_share" in out:
        checks["training >= 60% of ceiling"] = out["ours_ceiling_share"] >= 0.6
    if "bpc_difference" in out:
        checks["validation bits/char lower than baseline"] = out["bpc_difference"] < 0
    if "gen_ratio" in out:
        checks["generation >= 60x lecture"] = out["gen_ratio"] >= 60
    if g:
        checks["generation >= 400 tweets/s"] = g["tweets_per_s"] >= 400
    out["targets_met"] = checks
    return out


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(r: dict) -> None:
    s = r["summary"]
    ours, base = r.get("train-ours", {}), r.get("train-base", {})
    g, lec = r.get("gen-ours", {}), r.get("gen-lecture", {})
    m = r["meta"]
    print(f"tweetgen engine benchmark, {m['date']}, {m['cpu']} ({m['cores']} cores), "
          f"TensorFlow {m.get('tensorflow', '?')}, Keras {m.get('keras', '?')}")
    print(f"corpus: FreeBSD fortunes, {m['corpus_lines']} lines ({ours.get('train_lines', '?')} train, "
          f"{ours.get('val_lines', '?')} validation = {ours.get('val_chars', '?')} chars); "
          f"vocab {ours.get('vocab_size', '?')}; batch {BATCH}; budget {m['minutes']:g} min each")
    print(f"matmul ceiling (numpy f32 1024^3): {r['ceiling_gflops']:.1f} GFLOP/s "
          f"(start {r['ceiling_start']:.1f}, end {r['ceiling_end']:.1f})")
    print()
    rows = [
        ("", "ours", "baseline", "ratio", "target"),
        ("training, useful chars/s", fmt(ours.get("chars_per_s"), ",.0f"), fmt(base.get("chars_per_s"), ",.0f"),
         fmt(s.get("train_ratio"), ".2f") + "x", ">= 1.3x"),
        ("training GFLOP/s (share of ceiling)",
         f"{fmt(s.get('ours_gflops'), '.1f')} ({fmt(s.get('ours_ceiling_share'), '.0%')})",
         f"{fmt(s.get('base_gflops'), '.1f')} ({fmt(s.get('base_ceiling_share'), '.0%')})", "", ">= 60%"),
        (f"training steps in {m['minutes']:g} min", fmt(ours.get("steps"), "d"), fmt(base.get("steps"), "d"), "", ""),
        (f"validation bits/char after {m['minutes']:g} min", fmt(ours.get("val_bpc"), ".3f"),
         fmt(base.get("val_bpc"), ".3f"), fmt(s.get("bpc_difference"), "+.3f"), "ours lower"),
        ("generation, 64 tweets: seconds", fmt(g.get("seconds_64"), ".3f"), fmt(lec.get("seconds_64"), ".1f"),
         "", ""),
        ("generation, tweets/s", fmt(g.get("tweets_per_s"), ",.0f"), fmt(lec.get("tweets_per_s"), ".2f"),
         fmt(s.get("gen_ratio"), ".0f") + "x", ">= 60x, >= 400/s"),
        ("peak RSS training, MB", fmt(ours.get("peak_rss_mb"), ".0f"), fmt(base.get("peak_rss_mb"), ".0f"), "", ""),
        ("peak RSS generation, MB", fmt(g.get("peak_rss_mb"), ".0f"), fmt(lec.get("peak_rss_mb"), ".0f"), "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
    print()
    if ours:
        print(f"ours: padding {ours['padding_share']:.1%} of batch cells; train step traced "
              f"{ours['train_step_traces']}x; checkpoint's own validation {fmt(ours['checkpoint_val_bpc'], '.3f')} "
              f"bits/char; oneDNN {ours['onednn'] or 'TF default'}")
    if base:
        print(f"baseline: {base['train_windows']} windows of {WINDOW} (stride {STRIDE}), one-hot; "
              f"scored on the same lines with our end-of-text as its line separator")
    if g:
        print(f"generation ours: first call (tracing) {g['first_call_s']:.1f} s, loop traced {g['loop_traces']}x; "
              f"{g['at_limit']}/64 rows reached the 140-char limit (the batch runs to its longest row); "
              f"mean length {g['mean_chars']:.0f}")
    if lec:
        print(f"generation lecture: {lec['timed_seeds']} seeds timed ({lec['seconds_per_tweet'] * 1000:.0f} ms "
              f"per 140-char tweet), extrapolated to 64")
    print("figures are noisy on this shared 2-core machine (about +-7%); compare the same-run ratios")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in s["targets_met"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per side (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--only", nargs="+", choices=ROLES, help="run only these roles (for iterating)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--lecture-seeds", type=int, default=16, help="seeds timed for the lecture method")
    parser.add_argument("--child", choices=ROLES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child == "train-ours":
            result = child_train_ours(args.workdir, args.minutes)
        elif args.child == "train-base":
            result = child_train_base(args.workdir, args.minutes)
        elif args.child == "gen-ours":
            result = child_gen_ours(args.workdir)
        else:
            result = child_gen_lecture(args.workdir, args.lecture_seeds)
        print(json.dumps(result))
        return 0

    from tweetgen import corpus

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tweetgen-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    corpus_file = workdir / "corpus.txt"
    if not corpus_file.exists():
        corpus.import_fortunes(corpus.default_fortune_file(), corpus_file, 140)
    results: dict = {"meta": {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
        "minutes": args.minutes, "workdir": str(workdir),
        "corpus_lines": len(corpus.read_lines(corpus_file).lines),
    }}
    results["meta"].update(library_versions())
    results["ceiling_start"] = matmul_gflops()
    for role in args.only or ROLES:
        results[role] = run_child(role, workdir, args)
    results["ceiling_end"] = matmul_gflops()
    results["ceiling_gflops"] = max(results["ceiling_start"], results["ceiling_end"])
    results["summary"] = summarize(results)
    if args.json:
        print(json.dumps(results, indent=None))
    else:
        print_table(results)
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, dist in (("tensorflow", "tensorflow-cpu"), ("keras", "keras")):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            try:
                out[name] = version(name)
            except PackageNotFoundError:
                pass
    return out


if __name__ == "__main__":
    sys.exit(main())
