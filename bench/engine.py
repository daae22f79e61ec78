"""Engine benchmark: our trainer and sampler against the lecture's way, measured in the same run.

    .venv/bin/python -m bench.engine [--minutes 5] [--json]      (or: python bench/engine.py)
    .venv/bin/python -m bench.engine --minutes 0.5 --rounds 1    (a smoke run, about 3 minutes)

Everything is measured in one run, on the default corpus (the FreeBSD `fortunes` file, cleaned
with `tweetgen.corpus.fortune_entries`: entries of at most 140 characters), the default model
(`Settings()`: embedding 64, GRU 128 then 256, dropout 0.1) and batch 64. Each measurement runs in
a child process of its own, one after the other, so peak RSS (`ru_maxrss` of that process,
TensorFlow's ~500 MB included) and threads never mix. The machine may be shared and noisy (other
jobs come and go: +-7% or much worse), so the ratios are the figures to read: throughput is
measured in several ours/baseline pairs run back to back (`--rounds`, order alternating) and the
ratio is the median of the per-pair ratios; the load average around each child is recorded.

1. Training throughput. *Ours*: `tweetgen.engine.train` (Trainer + Batcher, the real code path:
   one line per sequence, length-bucketed padded batches, masked loss, Adam, clipping, lr decay,
   dropout) from scratch on a scratch home; intermediate checkpoints are off (`checkpoint_every`
   huge), the end-of-run checkpoint (with its validation pass) is written after the budget.
   *Baseline*, the lecture's way: the training lines joined into one text with a separator after
   each, cut into fixed 50-character windows with overlap 25 (stride 25), one-hot float32 inputs
   built up front in numpy, a Keras `Input -> GRU(128) -> GRU(256) -> Dense` model trained with
   `model.fit(batch_size=64, shuffle=True)`, Adam at the same base learning rate (2e-3) with the
   same global-norm clipping (5.0), no decay, no dropout, TensorFlow's default settings
   (`TF_ENABLE_ONEDNN_OPTS` removed from its environment).
   Useful characters/s = predicted non-padding targets per second (the baseline has no padding:
   64 x 50 per step; with its overlap each character is trained about twice per epoch, and both
   copies count). A run's figure is the median over windows of 25 steps (ours: the trainer's own
   `StepLog.chars_per_s`) or 25 batches (baseline), the first window (tracing) left out.
   GFLOP/s = chars/s x matrix-multiply FLOPs per trained character (3 x forward: forward, input
   gradients, weight gradients; the baseline's one-hot input matmul is counted, our embedding
   lookup is not) against the ceiling: numpy float32 1024x1024 matmul (median of 20), measured
   before every child and at the end; the best of those is the ceiling.
2. Quality at equal wall-clock time: each side trains `--minutes` (default 5; the clock starts
   before its data preparation and includes tracing); both are then scored on the *same*
   validation lines (the trainer's own split and bounded subset) by the *same* code
   (`tweetgen.train.bits_per_char`: masked bits/char, end-of-text included). To make that fair the
   baseline uses our vocabulary (the same ids; rare characters are <unk> for both), and its line
   separator, the lecture's '\\n', is our end-of-text id: it learns to end a line as ours does
   and is scored the same way, on [eos] + line -> line + [eos] from a zero state. (Scoring it on
   the characters only would favour it: the end of a line is the hardest character to predict.)
3. Generation: 64 seeded tweets of at most 140 characters (seeds: the first word of each of the
   first 64 validation lines; temperature 0.8), from the models trained in (2). *Ours*:
   `tweetgen.generate.Generator` on the checkpoint (2) wrote, opened by `engine.open_generator`
   (novelty scoring off: post-processing the lecture does not do); all 64 in one call, one
   compiled loop. The first call (tracing) is reported apart. For the timing the model's
   end-of-text logit is lowered by 1e4, so that every tweet runs to the 140-character limit as
   the lecture's do (left alone, the trained model ends most tweets far earlier, which would
   flatter us); the report says how many rows reached the limit. Ours is the default the engine
   opens: on a CPU with bfloat16 units (AMX-BF16, AVX512-BF16) the bfloat16 loop, else the
   float32 XLA loop (`tweetgen.generate`). *Before*: the sampler as it was before issue 10's
   generation work (`bench/generate_before.py`, a frozen copy: the float32 XLA loop), on the
   same model, timed alongside; and *then*, the same copy's plain `tf.function` loop
   (`jit_compile=False`): the sampler issue 10 was filed against (the XLA loop was the first
   round of that issue's work), so issue 10's target is ours >= 1.5x *its* tweets/s.
   *Lecture*: the baseline model's cells in one compiled single-step `tf.function` (batch 1,
   one-hot input), called once per character from Python, one seed at a time, the state fed
   back, sampling on the host with numpy; every tweet is generated to the full 140 characters.
   Only some seeds are timed (`--lecture-seeds`, default 16; the cost is linear in the seeds)
   and the time is extrapolated to 64. The ratios come from a child that alternates the methods
   (`gen-pair`: `--gen-rounds` rounds, default 10, of one 64-tweet call of ours, one of before
   (the order of the two alternating) and 1-2 lecture tweets; the median of the per-round
   ratios); separate children give each one's peak RSS. The pair runs pinned to one core
   (`--gen-cores`, default 1; TensorFlow's thread pools follow): on two cores with two threads
   the bfloat16 loop's small oneDNN multiplies gained nothing from the second thread while XLA's
   float32 dots did (bench/README.md), so there ours is the float32 XLA loop under the default
   `cpu_matmul_precision = "auto"` (`--gen-cores 0`: ratio ~1); say which you quote.
4. Peak RSS of the children: training ours / baseline (the quality runs), generation ours /
   lecture.

Targets (issue 2): training >= 1.3x the baseline and >= 60% of the ceiling; lower validation
bits/char than the baseline; generation >= 60x the lecture's method and >= 400 tweets/s.
Issue 10: generation >= 1.5x the tweets/s of the sampler the issue was filed against (same run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
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

import numpy as np  # noqa: E402

ROLES = ("train-ours", "train-base", "tput-ours", "tput-base", "gen-ours", "gen-lecture", "gen-pair")
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
    """Matrix-multiply FLOPs of one character through the GRU layers and the output layer."""
    flops, d = 0, input_dim
    for h in gru_sizes:
        flops += 2 * d * 3 * h + 2 * h * 3 * h
        d = h
    return flops + 2 * d * vocab_size


def bench_settings(workdir: Path, home: str = "ours"):
    from tweetgen.config import Settings

    return Settings(home=workdir / home, corpus_path=workdir / "corpus.txt",
                    checkpoint_every=10**9, log_every=LOG_WINDOW)


def shared_data(settings):
    """Vocabulary, training lines, validation lines and sequences: the same for both sides."""
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


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------- training children


def child_train_ours(workdir: Path, minutes: float, home: str, full: bool) -> dict:
    from tweetgen import engine
    from tweetgen.train import Batcher, bits_per_char, encode_lines

    settings = bench_settings(workdir, home)
    vocab, train_lines, _, val_seqs = shared_data(settings)
    logs = []
    outcome = engine.train(settings, minutes=minutes, on_log=logs.append)
    trainer = outcome.trainer
    cfg = trainer.model_config
    input_dim = cfg["embedding_dim"] if cfg["input_mode"] == "embedding" else vocab.size
    result = {
        "chars_per_s": steady_rate([e.chars_per_s for e in logs]),
        "window_rates": [round(e.chars_per_s) for e in logs],
        "steps": outcome.result.steps,
        "train_step_traces": trainer.train_step.experimental_get_tracing_count(),
        "fwd_flops_per_char": forward_flops_per_char(input_dim, cfg["gru_sizes"], vocab.size),
        "fast_gru": bool(getattr(trainer.model, "fast_gru", False)),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "peak_rss_mb": peak_rss_mb(),
    }
    if full:
        # Padding share of one epoch of our batches (what the length bucketing leaves).
        seqs, _ = encode_lines(train_lines, vocab, settings.max_line_chars)
        batcher = Batcher(seqs, settings.batch_size, settings.random_seed)
        useful = cells = 0
        for _ in range(len(batcher._plan)):
            batch = batcher.next()
            useful += int(np.count_nonzero(batch[:, 1:]))
            cells += batch[:, 1:].size
        result.update({
            "val_bpc": bits_per_char(trainer.model, val_seqs),
            "checkpoint_val_bpc": outcome.result.val_bpc,
            "final_train_loss": outcome.result.train_loss,
            "padding_share": 1 - useful / cells,
            "vocab_size": vocab.size,
            "train_lines": len(train_lines),
            "val_lines": len(val_seqs),
            "val_chars": int(sum(len(s) - 1 for s in val_seqs)),
        })
    return result


def baseline_model(vocab_size: int, gru_sizes):
    import keras

    inputs = keras.Input(shape=(None, vocab_size))
    x = inputs
    for units in gru_sizes:
        x = keras.layers.GRU(units, return_sequences=True)(x)
    return keras.Model(inputs, keras.layers.Dense(vocab_size)(x))


def child_train_base(workdir: Path, minutes: float, full: bool) -> dict:
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
    result = {
        "chars_per_s": steady_rate(clock.rates),
        "window_rates": [round(r) for r in clock.rates],
        "steps": clock.batches,
        "trained_s": time.perf_counter() - started,
        "train_windows": len(windows),
        "fwd_flops_per_char": forward_flops_per_char(vocab.size, settings.gru_sizes, vocab.size),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "peak_rss_mb": peak_rss_mb(),
    }
    if full:
        @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32)], reduce_retracing=True)
        def eval_batch(batch):
            logits = model(tf.one_hot(batch[:, :-1], vocab.size), training=False)
            return masked_loss_sum(batch[:, 1:], logits)

        result["val_bpc"] = bits_per_char(model, val_seqs, eval_fn=eval_batch)
        np.savez(workdir / "baseline-weights.npz", *model.get_weights())
    return result


# ---------------------------------------------------------------- generation children


def open_ours(workdir: Path):
    """Our generator on the checkpoint of train-ours, its end-of-text suppressed (see below)."""
    from tweetgen import engine
    from tweetgen.vocab import EOS

    settings = bench_settings(workdir)
    _, _, val_lines, _ = shared_data(settings)
    generator, _ = engine.open_generator(settings, with_novelty=False)
    # Every tweet runs to the 140-character limit, as the lecture's do: the trained model would
    # end most of them much earlier (and the batch stops when its last row ends), which would
    # flatter us. The timing does not depend on the weights otherwise.
    bias = generator.model.head.bias
    bias.assign(bias.numpy() - 1e4 * np.eye(1, bias.shape[0], EOS, dtype=np.float32)[0])
    return generator, bench_seeds(val_lines)


class Lecture:
    """The lecture's sampler: one compiled single-step call per character, one seed at a time."""

    def __init__(self, workdir: Path) -> None:
        import tensorflow as tf

        self.settings = settings = bench_settings(workdir)
        self.vocab, _, val_lines, _ = shared_data(settings)
        self.seeds = bench_seeds(val_lines)
        model = baseline_model(self.vocab.size, settings.gru_sizes)
        with np.load(workdir / "baseline-weights.npz") as data:
            model.set_weights([data[f"arr_{i}"] for i in range(len(data.files))])
        grus = [layer for layer in model.layers if "gru" in layer.name]
        dense = model.layers[-1]
        self.sizes = [g.cell.units for g in grus]

        @tf.function(input_signature=[tf.TensorSpec((1, self.vocab.size), tf.float32)]
                     + [tf.TensorSpec((1, h), tf.float32) for h in self.sizes])
        def step(x, *states):
            new = []
            for gru, state in zip(grus, states):
                x, _ = gru.cell(x, [state])
                new.append(x)
            return (dense(x), *new)

        self.step = step
        self.rng = np.random.default_rng(0)

    def one_hot(self, i: int) -> np.ndarray:
        x = np.zeros((1, self.vocab.size), np.float32)
        x[0, i] = 1.0
        return x

    def tweet(self, seed: str) -> str:
        from tweetgen.vocab import EOS

        states = [np.zeros((1, h), np.float32) for h in self.sizes]
        out = [EOS, *self.vocab.encode(seed)[0].tolist()]
        for i in out:
            logits, *states = self.step(self.one_hot(i), *states)
        while len(out) - 1 < self.settings.max_tweet_chars:
            z = logits.numpy()[0].astype(np.float64) / TEMPERATURE
            p = np.exp(z - z.max())
            p /= p.sum()
            i = int(self.rng.choice(self.vocab.size, p=p))
            out.append(i)
            logits, *states = self.step(self.one_hot(i), *states)
        return self.vocab.decode(out[1:])


def child_gen_ours(workdir: Path, repeats: int = 5) -> dict:
    generator, seeds = open_ours(workdir)
    t = time.perf_counter()
    generator.generate(seeds, 1, TEMPERATURE, random_seed=0)
    first_s = time.perf_counter() - t
    times, samples = [], []
    for r in range(1, repeats + 1):
        t = time.perf_counter()
        samples = generator.generate(seeds, 1, TEMPERATURE, random_seed=r)
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    return {
        "seconds_64": seconds,
        "tweets_per_s": len(seeds) / seconds,
        "first_call_s": first_s,
        "loop_traces": generator._loop.experimental_get_tracing_count(),
        "at_limit": sum(s.ended == "limit" for s in samples),
        "mean_chars": statistics.mean(len(s.text) for s in samples),
        "example": samples[0].text,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "peak_rss_mb": peak_rss_mb(),
    }


def child_gen_lecture(workdir: Path, n_seeds: int) -> dict:
    lecture = Lecture(workdir)
    seeds = lecture.seeds[:n_seeds]
    t = time.perf_counter()
    lecture.tweet(seeds[0])  # traces the step
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    texts = [lecture.tweet(s) for s in seeds]
    per_tweet = (time.perf_counter() - t) / len(seeds)
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


def child_gen_pair(workdir: Path, n_seeds: int, rounds: int = 10) -> dict:
    """The methods in one process, alternating, so that load changes hit them alike: ours as
    shipped, the sampler before issue 10's generation work (bench/generate_before.py) on the
    same model, the lecture's."""
    from bench.generate_before import Generator as GeneratorBefore

    generator, seeds = open_ours(workdir)
    before = GeneratorBefore(generator.model, generator.vocab, generator.max_chars,
                             max_context=generator.max_context)
    # The sampler the issue was filed against: the same frozen copy's plain tf.function loop
    # (the XLA loop came with issue 10's first round of work).
    filed = GeneratorBefore(generator.model, generator.vocab, generator.max_chars,
                            max_context=generator.max_context, jit_compile=False)
    lecture = Lecture(workdir)
    first_s = {}
    samplers = {"ours": generator, "before": before, "filed": filed}
    for name, g in samplers.items():
        t = time.perf_counter()
        g.generate(seeds, 1, TEMPERATURE, random_seed=0)
        first_s[name] = time.perf_counter() - t
    lecture.tweet(seeds[0])
    per_round = max(1, n_seeds // rounds)
    ours_s, before_s, lecture_s, ratios, before_ratios = [], [], [], [], []
    filed_s, filed_ratios = [], []
    samples = []
    for r in range(rounds):
        timed = {}
        for name in (("ours", "before", "filed") if r % 2 == 0 else ("filed", "before", "ours")):
            g = samplers[name]
            t = time.perf_counter()
            out = g.generate(seeds, 1, TEMPERATURE, random_seed=r + 1)
            timed[name] = time.perf_counter() - t
            if name == "ours":
                samples = out
        t = time.perf_counter()
        for seed in seeds[r * per_round:(r + 1) * per_round]:
            lecture.tweet(seed)
        lecture_64 = (time.perf_counter() - t) / per_round * N_TWEETS
        ours_s.append(timed["ours"])
        before_s.append(timed["before"])
        lecture_s.append(lecture_64)
        ratios.append(lecture_64 / timed["ours"])
        before_ratios.append(timed["before"] / timed["ours"])
        filed_s.append(timed["filed"])
        filed_ratios.append(timed["filed"] / timed["ours"])
    return {
        "filed_seconds_64": statistics.median(filed_s),
        "filed_tweets_per_s": N_TWEETS / statistics.median(filed_s),
        "over_filed": statistics.median(filed_ratios),
        "over_filed_ratios": [round(x, 2) for x in filed_ratios],
        "ours_seconds_64": statistics.median(ours_s),
        "before_seconds_64": statistics.median(before_s),
        "lecture_seconds_64": statistics.median(lecture_s),
        "ours_tweets_per_s": N_TWEETS / statistics.median(ours_s),
        "before_tweets_per_s": N_TWEETS / statistics.median(before_s),
        "lecture_tweets_per_s": N_TWEETS / statistics.median(lecture_s),
        "ratio": statistics.median(ratios),
        "ratios": [round(x, 1) for x in ratios],
        "over_before": statistics.median(before_ratios),
        "over_before_ratios": [round(x, 2) for x in before_ratios],
        "ours_loop": f"{generator.matmul_dtype}" + (" (XLA)" if generator.matmul_dtype == "float32" else
                                                    " (oneDNN multiplies, XLA steps)"),
        "first_call_s": {k: round(v, 2) for k, v in first_s.items()},
        "cores": len(os.sched_getaffinity(0)),
        "at_limit": sum(s.ended == "limit" for s in samples),
        "lecture_seeds_timed": per_round * rounds,
        "rounds": rounds,
    }


# ---------------------------------------------------------------- the parent


def run_child(role: str, workdir: Path, args: argparse.Namespace, minutes: float | None = None,
              home: str = "ours", full: bool = True) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if role in ("train-base", "tput-base", "gen-lecture"):
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # the lecture's way: TensorFlow's defaults
    cmd = [sys.executable, "-m", "bench.engine", "--child", role, "--workdir", str(workdir),
           "--minutes", str(args.minutes if minutes is None else minutes), "--home", home,
           "--lecture-seeds", str(args.lecture_seeds), "--gen-rounds", str(args.gen_rounds),
           "--gen-cores", str(args.gen_cores)] \
        + ([] if full else ["--partial"])
    if role in ("train-ours", "tput-ours"):
        shutil.rmtree(workdir / home, ignore_errors=True)  # train from scratch, not from a last run
    log_path = workdir / f"{role}-{home}.log"
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"benchmark role {role} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - t, 1)
    result["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if not args.json:
        print(f"  {role} ({home}): {result['process_s']:.0f} s, load average "
              f"{result['load_avg_1min'][0]:.1f} -> {result['load_avg_1min'][1]:.1f}",
              file=sys.stderr, flush=True)
    return result


def run_all(args: argparse.Namespace, workdir: Path) -> dict:
    results: dict = {"ceilings": []}
    only = set(args.only or ROLES)

    def ceiling() -> None:
        results["ceilings"].append(round(matmul_gflops(), 1))

    def child(role: str, key: str | None = None, **kwargs) -> None:
        ceiling()
        results[key or role] = run_child(role, workdir, args, **kwargs)

    if "train-ours" in only:
        child("train-ours")
    if "train-base" in only:
        child("train-base")
    tput_minutes = args.tput_seconds / 60
    for r in range(args.rounds):
        order = ("tput-base", "tput-ours") if r % 2 == 0 else ("tput-ours", "tput-base")
        for role in order:
            if role in only:
                child(role, f"{role}-{r}", minutes=tput_minutes, home=f"tput-{r}", full=False)
    for role in ("gen-ours", "gen-lecture", "gen-pair"):
        if role in only:
            child(role)
    ceiling()
    return results


def summarize(r: dict, rounds: int) -> dict:
    ceiling = max(r["ceilings"])
    out: dict = {"ceiling_gflops": ceiling, "ceiling_median_gflops": statistics.median(r["ceilings"])}
    ours_runs = [r[k] for k in ["train-ours"] + [f"tput-ours-{i}" for i in range(rounds)] if k in r]
    base_runs = [r[k] for k in ["train-base"] + [f"tput-base-{i}" for i in range(rounds)] if k in r]
    pairs = [(r[a], r[b]) for a, b in [("train-ours", "train-base")]
             + [(f"tput-ours-{i}", f"tput-base-{i}") for i in range(rounds)] if a in r and b in r]
    ours_runs = [x for x in ours_runs if x.get("chars_per_s") is not None]  # a run too short to log
    base_runs = [x for x in base_runs if x.get("chars_per_s") is not None]
    if ours_runs:
        out["ours_chars_per_s"] = median(x["chars_per_s"] for x in ours_runs)
        out["ours_gflops"] = out["ours_chars_per_s"] * 3 * ours_runs[0]["fwd_flops_per_char"] / 1e9
        out["ours_ceiling_share"] = out["ours_gflops"] / ceiling
    if base_runs:
        out["base_chars_per_s"] = median(x["chars_per_s"] for x in base_runs)
        out["base_gflops"] = out["base_chars_per_s"] * 3 * base_runs[0]["fwd_flops_per_char"] / 1e9
        out["base_ceiling_share"] = out["base_gflops"] / ceiling
    if pairs:
        out["pair_ratios"] = [round(a["chars_per_s"] / b["chars_per_s"], 3) for a, b in pairs
                              if a.get("chars_per_s") and b.get("chars_per_s")]
        out["train_ratio"] = statistics.median(out["pair_ratios"])
    if "val_bpc" in r.get("train-ours", {}) and "val_bpc" in r.get("train-base", {}):
        out["bpc_difference"] = r["train-ours"]["val_bpc"] - r["train-base"]["val_bpc"]
    pair = r.get("gen-pair")
    if pair:
        out["gen_ratio"] = pair["ratio"]
        out["gen_ours_tweets_per_s"] = pair["ours_tweets_per_s"]
        out["gen_lecture_tweets_per_s"] = pair["lecture_tweets_per_s"]
        out["gen_over_before"] = pair["over_before"]
        out["gen_over_filed"] = pair.get("over_filed")
    elif "gen-ours" in r:
        out["gen_ours_tweets_per_s"] = r["gen-ours"]["tweets_per_s"]
    checks = {}
    if "train_ratio" in out:
        checks["training >= 1.3x baseline"] = out["train_ratio"] >= 1.3
    if "ours_ceiling_share" in out:
        checks["training >= 60% of ceiling"] = out["ours_ceiling_share"] >= 0.6
    if "bpc_difference" in out:
        checks["lower validation bits/char"] = out["bpc_difference"] < 0
    if "gen_ratio" in out:
        checks["generation >= 60x lecture"] = out["gen_ratio"] >= 60
    if "gen_ours_tweets_per_s" in out:
        checks["generation >= 400 tweets/s"] = out["gen_ours_tweets_per_s"] >= 400
    if out.get("gen_over_filed") is not None:
        checks["generation >= 1.5x the sampler issue 10 was filed against"] = out["gen_over_filed"] >= 1.5
    out["targets_met"] = checks
    return out


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(r: dict) -> None:
    s, m = r["summary"], r["meta"]
    ours, base = r.get("train-ours", {}), r.get("train-base", {})
    g, lec, pair = r.get("gen-ours", {}), r.get("gen-lecture", {}), r.get("gen-pair", {})
    minutes = f"{m['minutes']:g} min"
    print(f"tweetgen engine benchmark, {m['date']}, {m['cpu']} ({m['cores']} cores), "
          f"Python {m['python']}, TensorFlow {m.get('tensorflow', '?')}, Keras {m.get('keras', '?')}")
    print(f"corpus: FreeBSD fortunes, {m['corpus_lines']} lines ({ours.get('train_lines', '?')} train, "
          f"{ours.get('val_lines', '?')} validation = {ours.get('val_chars', '?')} chars); "
          f"vocab {ours.get('vocab_size', '?')}; batch {BATCH}; quality budget {minutes} each; "
          f"{m['rounds']} extra throughput pair(s) of {m['tput_seconds']:g} s")
    print(f"matmul ceiling (numpy f32 1024^3, best of {len(r['ceilings'])} measurements): "
          f"{s['ceiling_gflops']:.1f} GFLOP/s (median {s['ceiling_median_gflops']:.1f}; all: "
          f"{', '.join(f'{c:.0f}' for c in r['ceilings'])})")
    print()
    rows = [
        ("", "ours", "baseline", "ratio", "target"),
        ("training, useful chars/s (median of runs)", fmt(s.get("ours_chars_per_s"), ",.0f"),
         fmt(s.get("base_chars_per_s"), ",.0f"), fmt(s.get("train_ratio"), ".2f") + "x", ">= 1.3x"),
        ("training GFLOP/s (share of ceiling)",
         f"{fmt(s.get('ours_gflops'), '.1f')} ({fmt(s.get('ours_ceiling_share'), '.0%')})",
         f"{fmt(s.get('base_gflops'), '.1f')} ({fmt(s.get('base_ceiling_share'), '.0%')})", "", ">= 60%"),
        (f"training steps in {minutes}", fmt(ours.get("steps"), "d"), fmt(base.get("steps"), "d"), "", ""),
        (f"validation bits/char after {minutes}", fmt(ours.get("val_bpc"), ".3f"),
         fmt(base.get("val_bpc"), ".3f"), fmt(s.get("bpc_difference"), "+.3f"), "ours lower"),
        ("generation, 64 tweets, seconds", fmt(pair.get("ours_seconds_64", g.get("seconds_64")), ".3f"),
         fmt(pair.get("lecture_seconds_64", lec.get("seconds_64")), ".1f"), "", ""),
        ("generation, tweets/s", fmt(s.get("gen_ours_tweets_per_s"), ",.0f"),
         fmt(s.get("gen_lecture_tweets_per_s"), ".2f"), fmt(s.get("gen_ratio"), ".0f") + "x",
         ">= 60x, >= 400/s"),
        ("generation, tweets/s against before", fmt(pair.get("ours_tweets_per_s"), ",.0f"),
         fmt(pair.get("before_tweets_per_s"), ",.0f"), fmt(s.get("gen_over_before"), ".2f") + "x", ""),
        ("generation, tweets/s against the issue's", fmt(pair.get("ours_tweets_per_s"), ",.0f"),
         fmt(pair.get("filed_tweets_per_s"), ",.0f"), fmt(s.get("gen_over_filed"), ".2f") + "x",
         ">= 1.5x"),
        ("peak RSS training, MB", fmt(ours.get("peak_rss_mb"), ".0f"),
         fmt(base.get("peak_rss_mb"), ".0f"), "", ""),
        ("peak RSS generation, MB", fmt(g.get("peak_rss_mb"), ".0f"),
         fmt(lec.get("peak_rss_mb"), ".0f"), "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                        for i, cell in enumerate(row)))
    print()
    runs = [(k, v) for k, v in r.items() if k.startswith(("train-", "tput-")) and isinstance(v, dict)]
    if runs:
        print("training runs (steady chars/s; load average before -> after): " + "; ".join(
            f"{k} {fmt(v['chars_per_s'], ',.0f')} "
            f"({v['load_avg_1min'][0]:.1f} -> {v['load_avg_1min'][1]:.1f})"
            for k, v in runs))
        if "pair_ratios" in s:
            print(f"per-pair ratios ours/baseline: {', '.join(f'{x:.2f}' for x in s['pair_ratios'])}")
    if ours:
        print(f"ours: fast CPU GRU path {'on' if ours.get('fast_gru') else 'off'}; padding "
              f"{fmt(ours.get('padding_share'), '.1%')} of batch cells; train step traced "
              f"{ours['train_step_traces']}x; the checkpoint's own validation figure "
              f"{fmt(ours.get('checkpoint_val_bpc'), '.3f')} bits/char")
    if base:
        print(f"baseline: {base['train_windows']} windows of {WINDOW} (stride {STRIDE}), one-hot; "
              f"scored on the same lines, our end-of-text as its line separator")
    if g:
        print(f"generation ours: first call (tracing) {g['first_call_s']:.1f} s, loop traced "
              f"{g['loop_traces']}x, alone {g['seconds_64']:.3f} s per 64; end-of-text suppressed, so "
              f"{g['at_limit']}/64 rows ran to the 140-char limit; mean length {g['mean_chars']:.0f} "
              f"chars (cut back to a word boundary)")
    if lec:
        print(f"generation lecture: alone {lec['seconds_per_tweet'] * 1000:.0f} ms per 140-char tweet "
              f"({lec['timed_seeds']} seeds timed, extrapolated to 64)")
    if pair:
        print(f"generation pair (alternating in one process on {pair['cores']} core(s), "
              f"{pair['rounds']} rounds, {pair['lecture_seeds_timed']} lecture seeds; "
              f"{pair['at_limit']}/64 rows at the limit): "
              f"ours/lecture ratios {', '.join(map(str, pair['ratios']))}")
        print(f"generation ours ({pair['ours_loop']}) {pair['ours_seconds_64']:.4f} s per 64 = "
              f"{pair['ours_tweets_per_s']:,.0f} tweets/s; before (bench/generate_before.py, float32 XLA) "
              f"{pair['before_seconds_64']:.4f} s per 64 = {pair['before_tweets_per_s']:,.0f} tweets/s; "
              f"ours/before {pair['over_before']:.2f}x (per round: "
              f"{', '.join(map(str, pair['over_before_ratios']))}); first calls {pair['first_call_s']} s")
        print(f"generation when issue 10 was filed (the same copy's plain tf.function loop) "
              f"{pair['filed_seconds_64']:.4f} s per 64 = {pair['filed_tweets_per_s']:,.0f} tweets/s; "
              f"ours/then {pair['over_filed']:.2f}x "
              f"(per round: {', '.join(map(str, pair['over_filed_ratios']))})")
    print("figures are noisy on a shared machine; compare the same-run ratios")
    print("targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in s["targets_met"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="quality training budget per side (default 5)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="extra ours/baseline throughput pairs (default 2)")
    parser.add_argument("--tput-seconds", type=float, default=40.0,
                        help="training time of each throughput run (default 40)")
    parser.add_argument("--lecture-seeds", type=int, default=16, help="seeds timed for the lecture method")
    parser.add_argument("--gen-rounds", type=int, default=10,
                        help="rounds of the generation pair (ours, before, lecture; default 10)")
    parser.add_argument("--gen-cores", type=int, default=1,
                        help="cores the generation pair runs on, pinned (default 1; 0: as the parent)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--only", nargs="+", choices=ROLES, help="run only these roles (for iterating; "
                        "gen-* need the models that train-ours and train-base leave in --workdir)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--child", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--home", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--partial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
        role, full = args.child, not args.partial
        if role in ("train-ours", "tput-ours"):
            result = child_train_ours(args.workdir, args.minutes, args.home, full)
        elif role in ("train-base", "tput-base"):
            result = child_train_base(args.workdir, args.minutes, full)
        elif role == "gen-ours":
            result = child_gen_ours(args.workdir)
        elif role == "gen-lecture":
            result = child_gen_lecture(args.workdir, args.lecture_seeds)
        else:
            if args.gen_cores > 0:  # before TensorFlow starts: its thread pools follow the cores
                os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.gen_cores])
            result = child_gen_pair(args.workdir, args.lecture_seeds, args.gen_rounds)
        print(json.dumps(result))
        return 0

    from tweetgen import corpus

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tweetgen-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    corpus_file = workdir / "corpus.txt"
    if not corpus_file.exists():
        corpus.import_fortunes(corpus.default_fortune_file(), corpus_file, 140)
    meta = {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "minutes": args.minutes, "rounds": args.rounds,
        "tput_seconds": args.tput_seconds, "workdir": str(workdir),
        "corpus_lines": len(corpus.read_lines(corpus_file).lines), **library_versions(),
    }
    results = {"meta": meta, **run_all(args, workdir)}
    results["summary"] = summarize(results, args.rounds)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
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
    for name, dists in (("tensorflow", ("tensorflow-cpu", "tensorflow")), ("keras", ("keras",))):
        for dist in dists:
            try:
                out[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return out


if __name__ == "__main__":
    sys.exit(main())
