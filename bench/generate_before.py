"""The sampler as it was before issue 10's generation work (main at ed60a44): the baseline
bench/engine.py times ours against, in the same run (`gen-pair`). A verbatim copy of
tweetgen/generate.py then, but for this paragraph, the relative imports made absolute and the
vocabulary's decode of then (`_decode_then`); do not "fix" it, it is the yardstick.

Batched, seeded sampling: every seed x sample in one compiled loop that carries GRU state.

Each row is fed its prefix (<eos>, then the seed; in reply mode <eos>, the text, <eos>) one
character at a time, then samples from softmax(logits / T) (optionally top-k) until it samples
<eos> or reaches the tweet limit. The work per character is O(1): one GRU-cell step per layer.
Sampling uses stateless random ops with explicit seeds, so `random_seed` reproduces a batch.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from tweetgen.corpus import clean_seed
from tweetgen.errors import GenerationError
from tweetgen.model import CharGRU
from tweetgen.novelty import NoveltyIndex
from tweetgen.vocab import EOS, PAD, RESERVED, UNK, Vocab

WORD_BOUNDARY_WINDOW = 20  # at the limit, cut back to a space if one is this close
MIN_TEMPERATURE = 1e-6


@dataclass
class Sample:
    text: str
    seed: str
    temperature: float
    top_k: int
    mode: str
    mean_logprob: float  # mean log-probability (nats, under the model) of the generated chars
    ended: str  # "eos" or "limit"
    unknown_seed_chars: int
    copied: bool | None = None
    novelty: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def check_request(seeds: Sequence[str], n: int, temperature: float, top_k: int, max_chars: int,
                  mode: str = "continue") -> None:
    if not 1 <= n <= 1024:
        raise GenerationError(f"-n must be between 1 and 1024, got {n}")
    # Below MIN_TEMPERATURE, logits / T overflows float32 (or T flushes to 0) and the draws
    # turn to garbage, even banned ids; such a temperature is greedy anyway.
    if not (temperature >= MIN_TEMPERATURE and np.isfinite(temperature)):
        raise GenerationError(f"--temperature must be at least {MIN_TEMPERATURE:g}, got {temperature} "
                              "(use --top-k 1 for greedy)")
    if top_k < 0:
        raise GenerationError(f"--top-k must be >= 0, got {top_k}")
    if mode not in ("continue", "reply"):
        raise GenerationError(f"mode must be 'continue' or 'reply', got {mode!r}")
    if not seeds:
        raise GenerationError("give at least one seed (an empty seed '' is allowed)")
    for seed in seeds:
        if mode == "continue" and len(seed) >= max_chars:
            raise GenerationError(
                f"seed {seed[:30]!r}... is {len(seed)} characters; it must be under {max_chars}")


def shape_bucket(size: int, minimum: int = 1) -> int:
    """The power of two at or above `size` (at least `minimum`): requests are padded to these
    sizes, so the compiled loop sees few distinct shapes and XLA compiles each only once."""
    return max(minimum, 1 << max(size - 1, 0).bit_length())


class Generator:
    """Samples tweets from a model in one compiled loop, traced once per model.

    By default the loop is compiled with XLA (`jit_compile=True`; False: a plain `tf.function`).
    XLA compiles once per input shape (about a second each), so a request is padded to shape
    buckets (`shape_bucket`): its rows to a power of two (padding rows generate nothing) and its
    prefix width to a power of two of at least 8. Only a new bucket compiles again: the daemon
    and the HTTP API ask the same shapes over and over. The same request with the same
    `random_seed` gives the same tweets on every call (same bucket, same random numbers).
    """

    MIN_PREFIX_WIDTH = 8

    def __init__(self, model: CharGRU, vocab: Vocab, max_chars: int = 140,
                 novelty: NoveltyIndex | None = None, max_context: int = 280,
                 jit_compile: bool | None = True) -> None:
        self.model = model
        self.vocab = vocab
        self.max_chars = max_chars
        self.novelty = novelty
        self.max_context = max_context
        self.jit_compile = bool(jit_compile)
        self._loop = tf.function(
            self._sample_loop,
            input_signature=[
                tf.TensorSpec((None, None), tf.int32),  # prefixes, padded
                tf.TensorSpec((None,), tf.int32),  # prefix lengths
                tf.TensorSpec((None,), tf.int32),  # characters each row may generate
                tf.TensorSpec((None,), tf.float32),  # temperatures
                tf.TensorSpec((), tf.int32),  # top-k (0: off)
                tf.TensorSpec((2,), tf.int64),  # random seed
            ],
            jit_compile=jit_compile,
        )

    # ---- the compiled loop

    def _sample_loop(self, prefix, prefix_len, budget, temperature, top_k, seed):
        batch = tf.shape(prefix)[0]
        prefix_width = tf.shape(prefix)[1]
        total = tf.reduce_max(prefix_len) + tf.reduce_max(budget)
        # An upper bound on the steps that depends on shapes only (a fixed size for XLA).
        capacity = prefix_width + self.max_chars
        # Never sample padding or <unk>.
        banned = tf.scatter_nd([[PAD], [UNK]], [-1e9, -1e9], [self.model.vocab_size])
        # The random numbers of every step at once (stateless: the seed alone decides them).
        uniforms = tf.random.stateless_uniform([capacity, batch], seed)

        table = self.model.first_layer_table()

        def body(t, token, states, done, generated, logprob_sum, out):
            logits, states = self.model.table_step(token, states, table)
            token, done, generated, logprob_sum, emitted = self._pick_step(
                t, tf.cast(logits, tf.float32), prefix, prefix_len, budget, temperature, top_k,
                uniforms[t], banned, done, generated, logprob_sum)
            return t + 1, token, states, done, generated, logprob_sum, out.write(t, emitted)

        def cond(t, token, states, done, *_):
            return (t < total) & (t < capacity) & tf.logical_not(tf.reduce_all(done))

        start = (
            tf.constant(0),
            prefix[:, 0],
            self.model.initial_state(batch),
            budget <= 0,
            tf.zeros([batch], tf.int32),
            tf.zeros([batch], tf.float32),
            # Steps never written (the loop stopped early) stack as zeros, i.e. padding.
            tf.TensorArray(tf.int32, size=capacity, element_shape=tf.TensorShape([None])),
        )
        _, _, _, _, generated, logprob_sum, out = tf.while_loop(cond, body, start)
        return tf.transpose(out.stack()), generated, logprob_sum

    @staticmethod
    def _pick_step(t, logits, prefix, prefix_len, budget, temperature, top_k, uniform, banned, done,
                   generated, logprob_sum):
        """One step's choice of next tokens: the forced prefix, or a draw from softmax(logits / T)."""
        scaled = logits / temperature[:, None] + banned

        def keep_top_k():
            # A top-k beyond the vocabulary keeps every character (tf.math.top_k would raise).
            kth = tf.math.top_k(scaled, tf.minimum(tf.maximum(top_k, 1), tf.shape(scaled)[1])).values[:, -1:]
            return tf.where(scaled < kth, tf.constant(-1e9, scaled.dtype), scaled)

        scaled = tf.cond(top_k > 0, keep_top_k, lambda: scaled)
        # Inverse-CDF sampling from softmax(scaled) with one uniform number per row: the drawn id
        # is the first whose cumulative probability exceeds u (an id of probability 0, banned or
        # cut by top-k, can never be drawn). Cheaper than Gumbel noise per id, and unlike
        # stateless_categorical it compiles under XLA.
        weights = tf.exp(scaled - tf.reduce_max(scaled, axis=1, keepdims=True))
        cdf = tf.cumsum(weights, axis=1)
        draw = tf.reduce_sum(tf.cast(cdf <= (uniform * cdf[:, -1])[:, None], tf.int32), axis=1)
        # u * total can round up to total (u within 2**-24 of 1): take the likeliest id then.
        draw = tf.where(draw < tf.shape(scaled)[1], draw, tf.argmax(weights, axis=1, output_type=tf.int32))
        next_t = t + 1
        forced = next_t < prefix_len
        forced_token = tf.gather(prefix, tf.minimum(next_t, tf.shape(prefix)[1] - 1), axis=1)
        sampling = tf.logical_not(forced) & tf.logical_not(done)
        picked = tf.gather(tf.nn.log_softmax(logits), draw, axis=1, batch_dims=1)
        kept = sampling & (draw != EOS)
        logprob_sum += tf.where(kept, picked, 0.0)
        generated += tf.cast(kept, tf.int32)
        done = done | (sampling & ((draw == EOS) | (generated >= budget)))
        emitted = tf.where(sampling, draw, PAD)
        return tf.where(forced, forced_token, draw), done, generated, logprob_sum, emitted

    # ---- the Python side

    def generate(self, seeds: Sequence[str], n: int = 1, temperature: float = 0.8, top_k: int = 0,
                 random_seed: int | None = None, mode: str = "continue") -> list[Sample]:
        """n samples for each seed, all in one batch; results ordered seed by seed. Every seed,
        from the CLI, the API or the settings, is cleaned here (clean_seed)."""
        seeds = [clean_seed(seed) for seed in seeds]
        check_request(seeds, n, temperature, top_k, self.max_chars, mode)
        rows = [seed for seed in seeds for _ in range(n)]
        prefixes, lengths, budgets, unknown = [], [], [], []
        for seed in rows:
            ids, n_unknown = self.vocab.encode(seed if mode == "continue" else seed[-self.max_context:])
            tail = [EOS] if mode == "reply" else []
            prefixes.append(np.concatenate([[EOS], ids, tail]).astype(np.int32))
            lengths.append(len(prefixes[-1]))
            budgets.append(self.max_chars - (len(seed) if mode == "continue" else 0))
            unknown.append(n_unknown)
        # Padding rows: the prefix <eos>, nothing to generate (done from the first step).
        batch = shape_bucket(len(rows))
        width = shape_bucket(max(lengths), self.MIN_PREFIX_WIDTH)
        prefix = np.full((batch, width), PAD, np.int32)
        prefix[:, 0] = EOS
        for i, p in enumerate(prefixes):
            prefix[i, : len(p)] = p
        lengths += [1] * (batch - len(rows))
        budgets += [0] * (batch - len(rows))
        if random_seed is None:
            random_seed = secrets.randbits(62)
        out, generated, logprob_sum = self._loop(
            tf.constant(prefix), tf.constant(lengths, tf.int32), tf.constant(budgets, tf.int32),
            tf.fill([batch], tf.constant(temperature, tf.float32)), tf.constant(top_k, tf.int32),
            tf.constant([random_seed, 0], tf.int64))
        out, generated, logprob_sum = out.numpy(), generated.numpy(), logprob_sum.numpy()
        return [self._sample(rows[i], out[i], int(generated[i]), float(logprob_sum[i]),
                             temperature, top_k, mode, unknown[i]) for i in range(len(rows))]

    def _sample(self, seed: str, tokens: np.ndarray, generated: int, logprob_sum: float,
                temperature: float, top_k: int, mode: str, unknown: int) -> Sample:
        ids = [t for t in tokens if t != PAD]
        ended = "eos" if EOS in ids else "limit"
        if EOS in ids:
            ids = ids[: ids.index(EOS)]
        text = (seed if mode == "continue" else "") + _decode_then(self.vocab, ids)
        if ended == "limit":
            text = cut_at_word_boundary(text, len(seed) if mode == "continue" else 0)
        text = text[: self.max_chars]
        sample = Sample(text, seed, temperature, top_k, mode, logprob_sum / max(generated, 1), ended, unknown)
        if self.novelty is not None:
            sample.copied, sample.novelty = self.novelty.score(text)
        return sample


def cut_at_word_boundary(text: str, keep: int) -> str:
    """Cut a text that hit the limit back to its last space, if one is near the end."""
    cut = text.rfind(" ", max(keep, len(text) - WORD_BOUNDARY_WINDOW))
    return text[:cut].rstrip() if cut > keep else text


def _decode_then(vocab: Vocab, ids: Sequence[int]) -> str:
    """Vocab.decode as it was then."""
    out = []
    offset = len(RESERVED)
    for i in ids:
        i = int(i)
        if i >= offset and i - offset < len(vocab.chars):
            out.append(vocab.chars[i - offset])
        elif i == UNK:
            out.append("\ufffd")
    return "".join(out)
