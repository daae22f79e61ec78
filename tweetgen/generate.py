"""Batched, seeded sampling: every seed x sample in one compiled loop that carries GRU state.

Each row is fed its prefix (<eos>, then the seed; in reply mode the trained context: <eos>, the
message, <sep> for a model trained with context, else <eos>, the message, <eos>; see
tweetgen.context) one character at a time, then samples from softmax(logits / T) (optionally
top-k) until it samples <eos> or reaches the tweet limit. The work per character is O(1): one
GRU-cell step per layer. Sampling uses stateless random ops with explicit seeds, so
`random_seed` reproduces a batch.

Two forms of the loop, the same sampling rule (`_pick_step`):
- float32 (the default; any CPU, a GPU): the whole loop compiled by XLA, one GRU-cell step per
  layer per character (`CharGRU.table_step`).
- bfloat16 (`matmul_dtype="bfloat16"`, chosen by `tweetgen.cpu.sampling_matmul_dtype` on CPUs
  with AMX-BF16/AVX512-BF16 units): XLA's CPU matrix multiplies do not use those units (measured:
  bfloat16 operands are no faster than float32 under XLA), TensorFlow's own (oneDNN) ones do,
  2-3x as fast. So the loop is a plain `tf.function`, each layer's two per-step multiplies are
  fused into one bfloat16 multiply run by TensorFlow (h_i @ [recurrent kernel_i | input kernel of
  layer i+1, or the output layer's]), and the elementwise work between them (gates, sampling) is
  compiled by XLA in one small function per layer (`_split_loop`). The GRU states and the biases
  stay float32; the products, logits included, are rounded to bfloat16 (as the trainer's fast
  path rounds its GRU products, tweetgen.model.matmul).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from .context import reply_prefix
from .corpus import clean_seed
from .errors import GenerationError
from .model import CharGRU, gru_update, shape_bucket, sigmoid_by_tanh
from .novelty import NoveltyIndex
from .vocab import EOS, PAD, UNK, Vocab

WORD_BOUNDARY_WINDOW = 20  # at the limit, cut back to a space if one is this close
MIN_TEMPERATURE = 1e-6
MATMUL_DTYPES = ("float32", "bfloat16")


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
                 jit_compile: bool | None = True, context_mode: str = "none",
                 matmul_dtype: str = "float32") -> None:
        if matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"matmul_dtype must be one of {MATMUL_DTYPES}, got {matmul_dtype!r}")
        self.model = model
        self.vocab = vocab
        self.context_mode = context_mode  # what the model was trained with (its checkpoint's meta)
        self.max_chars = max_chars
        self.novelty = novelty
        self.max_context = max_context
        self.jit_compile = bool(jit_compile)
        self.matmul_dtype = matmul_dtype
        split = matmul_dtype == "bfloat16"
        # The split loop's XLA-compiled pieces (see the module docstring); one trace per layer.
        self._next_layer = tf.function(self._next_layer_step, jit_compile=jit_compile)
        self._last_layer = tf.function(self._last_layer_step, jit_compile=jit_compile)
        self._loop = tf.function(
            self._split_loop if split else self._sample_loop,
            input_signature=[
                tf.TensorSpec((None, None), tf.int32),  # prefixes, padded
                tf.TensorSpec((None,), tf.int32),  # prefix lengths
                tf.TensorSpec((None,), tf.int32),  # characters each row may generate
                tf.TensorSpec((None,), tf.float32),  # temperatures
                tf.TensorSpec((), tf.int32),  # top-k (0: off)
                tf.TensorSpec((2,), tf.int64),  # random seed
            ],
            jit_compile=False if split else jit_compile,
        )

    # ---- the compiled loop

    def _sample_loop(self, prefix, prefix_len, budget, temperature, top_k, seed):
        batch = tf.shape(prefix)[0]
        prefix_width = tf.shape(prefix)[1]
        total = tf.reduce_max(prefix_len) + tf.reduce_max(budget)
        # An upper bound on the steps that depends on shapes only (a fixed size for XLA).
        capacity = prefix_width + self.max_chars
        banned = self._banned_logits()
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

    def _split_loop(self, prefix, prefix_len, budget, temperature, top_k, seed):
        """`_sample_loop` with each layer's two multiplies fused into one bfloat16 multiply run by
        TensorFlow (oneDNN: AMX), the rest XLA-compiled (see the module docstring).

        Layer i's state is h_i and p_i = h_i @ recurrent kernel_i + recurrent bias_i, the
        recurrent projection its next step needs: h_i @ fused[i] gives p_i and the next layer's
        input projection (or the logits) in one multiply. The loop runs layer 0 one step ahead:
        a step starts from layer 0's new state and ends by picking the next tokens and stepping
        layer 0 on them.
        """
        batch = tf.shape(prefix)[0]
        capacity = tf.shape(prefix)[1] + self.max_chars
        limit = tf.minimum(tf.reduce_max(prefix_len) + tf.reduce_max(budget), capacity)
        uniforms = tf.random.stateless_uniform([capacity, batch], seed)
        table = self.model.first_layer_table()
        fused, recurrent_bias, next_bias = self.model.fused_step_weights(tf.bfloat16)
        hs = self.model.initial_state(batch)
        ps = [tf.zeros_like(h[:, :1]) + bias for h, bias in zip(hs, recurrent_bias)]  # h = 0
        hs[0] = gru_update(tf.gather(table, prefix[:, 0]), hs[0], ps[0], sigmoid_by_tanh)
        # The request packed in two tensors (each argument of an XLA-compiled call costs time at
        # every step): prefix | prefix length | budget, and temperatures over the uniforms.
        sampling = (tf.concat([prefix, prefix_len[:, None], budget[:, None]], axis=1),
                    tf.concat([temperature[None], uniforms], axis=0), top_k, table)

        def body(t, running, h0_low, hs, ps, done, generated, logprob_sum, out):
            hs, ps, low = list(hs), list(ps), h0_low
            for i in range(len(fused) - 1):
                ps[i], hs[i + 1], low = self._next_layer(
                    tf.matmul(low, fused[i]), hs[i + 1], ps[i + 1], recurrent_bias[i], next_bias[i])
            ps[-1], _, running, done, generated, logprob_sum, emitted, hs[0], h0_low = self._last_layer(
                tf.matmul(low, fused[-1]), recurrent_bias[-1], next_bias[-1], hs[0],
                ps[0] if len(fused) > 1 else None, t, limit, done, generated, logprob_sum, *sampling)
            return t + 1, running, h0_low, hs, ps, done, generated, logprob_sum, out.write(t, emitted)

        start = (tf.constant(0), tf.reduce_any(budget > 0), tf.cast(hs[0], tf.bfloat16), hs, ps,
                 budget <= 0, tf.zeros([batch], tf.int32), tf.zeros([batch], tf.float32),
                 # Steps never written (the loop stopped early) stack as zeros, i.e. padding.
                 tf.TensorArray(tf.int32, size=capacity, element_shape=tf.TensorShape([None])))
        *_, generated, logprob_sum, out = tf.while_loop(lambda t, running, *_: running, body, start)
        return tf.transpose(out.stack()), generated, logprob_sum

    @staticmethod
    def _next_layer_step(product, h, p, recurrent_bias, next_bias):
        """From layer i's product h_i @ fused[i]: its next recurrent projection p_i, then layer
        i+1's step (its new state, and that in bfloat16 for its multiply)."""
        product = tf.cast(product, tf.float32)
        split = recurrent_bias.shape[0]
        h = gru_update(product[:, split:] + next_bias, h, p, sigmoid_by_tanh)
        return product[:, :split] + recurrent_bias, h, tf.cast(h, tf.bfloat16)

    def _last_layer_step(self, product, recurrent_bias, head_bias, h0, p0, t, limit, done, generated,
                         logprob_sum, request, draws, top_k, table):
        """From the last layer's product: its next recurrent projection and the logits; the
        pick of the next tokens; layer 0's step on them (p0 None: layer 0 is the last layer)."""
        product = tf.cast(product, tf.float32)
        split = recurrent_bias.shape[0]
        p_last = product[:, :split] + recurrent_bias
        logits = product[:, split:] + head_bias
        prefix, prefix_len, budget = request[:, :-2], request[:, -2], request[:, -1]
        banned = self._banned_logits()
        # tf.gather, not draws[t + 1]: XLA takes a slice's bounds as compile-time constants, so
        # that compiled the step once per value of t.
        token, done, generated, logprob_sum, emitted = self._pick_step(
            t, logits, prefix, prefix_len, budget, draws[0], top_k, tf.gather(draws, t + 1), banned,
            done, generated, logprob_sum)
        h0 = gru_update(tf.gather(table, token), h0, p_last if p0 is None else p0, sigmoid_by_tanh)
        running = (t + 1 < limit) & tf.logical_not(tf.reduce_all(done))  # the loop's condition
        # The tokens are returned though the loop does not need them: as a result XLA computes
        # them once; otherwise it fused the whole draw into every element of the lookup above
        # (measured: the loop ran 1.4x as long).
        return p_last, token, running, done, generated, logprob_sum, emitted, h0, tf.cast(h0, tf.bfloat16)

    def _banned_logits(self) -> tf.Tensor:
        """Added to the logits of both loops: never sample padding, <unk> or <sep>."""
        never = [PAD, UNK] + ([self.vocab.sep_id] if self.vocab.sep_id is not None else [])
        return tf.scatter_nd([[i] for i in never], [-1e9] * len(never), [self.model.vocab_size])

    @staticmethod
    def _pick_step(t, logits, prefix, prefix_len, budget, temperature, top_k, uniform, banned, done,
                   generated, logprob_sum):
        """One step's choice of next tokens: the forced prefix, or a draw from softmax(logits / T)."""
        scaled = logits / temperature[:, None] + banned

        def keep_top_k():
            k = tf.minimum(tf.maximum(top_k, 1), tf.shape(scaled)[1])
            kth = tf.gather(tf.sort(scaled, axis=1, direction="DESCENDING"), [k - 1], axis=1)
            return tf.where(scaled < kth, tf.constant(-1e9, scaled.dtype), scaled)

        scaled = tf.cond(top_k > 0, keep_top_k, lambda: scaled)
        # Inverse-CDF sampling from softmax(scaled) with one uniform number per row: the drawn id
        # is the first whose cumulative probability exceeds u (an id of probability 0, banned or
        # cut by top-k, can never be drawn). Cheaper than Gumbel noise per id, and unlike
        # stateless_categorical it compiles under XLA.
        weights = tf.exp(scaled - tf.reduce_max(scaled, axis=1, keepdims=True))
        cdf = prefix_sums(weights)
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
            if mode == "reply":
                prefix, n_unknown = reply_prefix(seed, self.vocab, self.context_mode, self.max_context,
                                                 self.max_chars)
            else:
                ids, n_unknown = self.vocab.encode(seed)
                prefix = np.concatenate([[EOS], ids]).astype(np.int32)
            prefixes.append(prefix)
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
        ids = tokens[tokens != PAD].tolist()
        ended = "eos" if EOS in ids else "limit"
        if EOS in ids:
            ids = ids[: ids.index(EOS)]
        text = (seed if mode == "continue" else "") + self.vocab.decode(ids)
        if ended == "limit":
            text = cut_at_word_boundary(text, len(seed) if mode == "continue" else 0)
        text = text[: self.max_chars]
        sample = Sample(text, seed, temperature, top_k, mode, logprob_sum / max(generated, 1), ended, unknown)
        if self.novelty is not None:
            sample.copied, sample.novelty = self.novelty.score(text)
        return sample


def prefix_sums(x: tf.Tensor) -> tf.Tensor:
    """tf.cumsum(x, axis=1) as log2(width) shifted adds (Hillis-Steele): under XLA on a CPU the
    sampling loop ran 1.03x as fast as with cumsum, a reduce-window (sums within 1e-6 of it)."""
    shift = 1
    while shift < x.shape[1]:
        x = x + tf.pad(x[:, :-shift], [[0, 0], [shift, 0]])
        shift *= 2
    return x


def cut_at_word_boundary(text: str, keep: int) -> str:
    """Cut a text that hit the limit back to its last space, if one is near the end."""
    cut = text.rfind(" ", max(keep, len(text) - WORD_BOUNDARY_WINDOW))
    return text[:cut].rstrip() if cut > keep else text
