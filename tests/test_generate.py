"""Batched, seeded sampling: greedy reproduction, the 140-character limit, end-of-text, seeds.

Most tests run on both forms of the loop (tweetgen.generate): float32 under XLA, and bfloat16
with the multiplies outside XLA (the default on CPUs with bfloat16 units)."""

from __future__ import annotations

import math

import pytest
from conftest import PATTERNS, greedy_reference

from tweetgen.errors import GenerationError
from tweetgen.generate import Generator, cut_at_word_boundary, prefix_sums
from tweetgen.model import shape_bucket
from tweetgen.novelty import NoveltyIndex
from tweetgen.vocab import EOS, PAD, UNK, Vocab

ABC = Vocab.build(["ab c"])  # a, b, c and space
DTYPES = ("float32", "bfloat16")


@pytest.fixture(params=DTYPES, scope="module")
def dtype(request) -> str:
    """The loop's multiplies (Generator's matmul_dtype)."""
    return request.param


@pytest.fixture(scope="module")
def greedy(trained, dtype) -> Generator:
    return Generator(trained.trainer.model, trained.vocab, 140, NoveltyIndex.from_lines(PATTERNS),
                     matmul_dtype=dtype)


def test_greedy_reproduces_each_pattern_and_flags_the_copy(greedy) -> None:
    samples = greedy.generate([p[:3] for p in PATTERNS], top_k=1, random_seed=1)
    assert [s.text for s in samples] == list(PATTERNS)
    for sample in samples:
        assert sample.ended == "eos" and sample.mode == "continue" and sample.top_k == 1
        assert sample.copied is True and sample.novelty == 0.0
        assert -0.5 < sample.mean_logprob <= 0.0
        assert sample.unknown_seed_chars == 0


def test_a_batch_equals_each_seed_alone(greedy) -> None:
    """Seeds of different lengths share one padded batch; each row must not see the others."""
    seeds = ["the c", "", "my bird fl", "a", "hel", "a dog ran in t"]
    together = greedy.generate(seeds, n=2, top_k=1, random_seed=3)
    assert [s.seed for s in together] == [seed for seed in seeds for _ in range(2)]
    for i, seed in enumerate(seeds):
        [alone] = greedy.generate([seed], top_k=1, random_seed=3)
        assert together[2 * i].text == together[2 * i + 1].text == alone.text
        assert together[2 * i].mean_logprob == pytest.approx(alone.mean_logprob, abs=1e-5)
        assert alone.text.startswith(seed)


def test_shape_buckets() -> None:
    assert [shape_bucket(n) for n in (1, 2, 3, 4, 5, 64, 65)] == [1, 2, 4, 4, 8, 64, 128]
    assert [shape_bucket(n, 8) for n in (1, 8, 9, 142)] == [8, 8, 16, 256]


def test_the_xla_loop_gives_the_plain_loops_tweets(greedy) -> None:
    """The default loop (XLA, requests padded to shape buckets) against the plain tf.function
    loop: the same greedy tweets, the same sampled ones for a random seed on every call, and
    one trace for requests of different shapes."""
    plain = Generator(greedy.model, greedy.vocab, 140, jit_compile=False, matmul_dtype=greedy.matmul_dtype)
    assert greedy.jit_compile and not plain.jit_compile
    seeds = ["the c", "", "my bird fl", "a dog ran in t", "h"]
    assert [s.text for s in greedy.generate(seeds, n=3, top_k=1, random_seed=2)] == \
        [s.text for s in plain.generate(seeds, n=3, top_k=1, random_seed=2)]
    first = greedy.generate(seeds, n=3, temperature=1.5, random_seed=9)
    assert len(first) == 15 and [s.seed for s in first] == [seed for seed in seeds for _ in range(3)]
    greedy.generate(["x" * 40], n=1, temperature=1.5, random_seed=9)  # another bucket in between
    again = greedy.generate(seeds, n=3, temperature=1.5, random_seed=9)
    assert [s.text for s in first] == [s.text for s in again]
    assert [s.mean_logprob for s in first] == [s.mean_logprob for s in again]
    assert greedy._loop.experimental_get_tracing_count() == 1
    if greedy.matmul_dtype == "bfloat16":  # and its XLA-compiled step, once per layer
        assert greedy._last_layer.experimental_get_tracing_count() == 1
        assert greedy._next_layer.experimental_get_tracing_count() == len(greedy.model.grus) - 1


def test_a_learned_pattern_stops_at_end_of_text_even_when_sampled(greedy) -> None:
    samples = greedy.generate(["hello w"], n=8, temperature=0.5, random_seed=11)
    assert all(s.text == "hello world" and s.ended == "eos" for s in samples)


def test_the_limit_is_140_characters(fixed_model, dtype) -> None:
    # The model always says "a" and never ends: every tweet runs to the limit exactly.
    model = fixed_model(ABC, {"a": 10.0, EOS: -1e4})
    generator = Generator(model, ABC, 140, matmul_dtype=dtype)
    samples = generator.generate(["", "bb", "c" * 139], top_k=1, random_seed=0)
    assert [s.text for s in samples] == ["a" * 140, "bb" + "a" * 138, "c" * 139 + "a"]
    assert all(s.ended == "limit" for s in samples)
    short = Generator(model, ABC, 25, matmul_dtype=dtype).generate(["b"], top_k=1, random_seed=0)
    assert short[0].text == "b" + "a" * 24


def test_at_the_limit_the_text_ends_at_a_word_boundary(fixed_model, dtype) -> None:
    # Uniform over a, b, c and space, never ending: sampled texts hit the limit.
    model = fixed_model(ABC, {EOS: -1e4, PAD: -1e4, UNK: -1e4})
    generator = Generator(model, ABC, 140, matmul_dtype=dtype)
    samples = generator.generate(["ab"], n=40, temperature=1.0, random_seed=5)
    for s in samples:
        assert s.ended == "limit"
        assert len(s.text) <= 140 and s.text.startswith("ab")
        assert s.text == s.text.rstrip()
        assert len(s.text) >= 140 - 21  # cut back to a space only when one is near the end
        # The generated characters' mean log-probability under the model: uniform over 4.
        assert s.mean_logprob == pytest.approx(-math.log(4), abs=1e-4)
    assert any(len(s.text) < 140 for s in samples)


def test_prefix_sums_are_cumulative_sums() -> None:
    import numpy as np
    import tensorflow as tf

    for width in (1, 2, 3, 8, 93, 130):
        x = tf.random.stateless_uniform([4, width], [width, 0])
        np.testing.assert_allclose(prefix_sums(x).numpy(), np.cumsum(x.numpy(), axis=1), rtol=1e-5)


def test_cut_at_word_boundary() -> None:
    text = "word " * 27 + "tail"  # 139 characters
    assert cut_at_word_boundary(text, 0) == "word " * 26 + "word"
    assert cut_at_word_boundary("x" * 140, 0) == "x" * 140  # no space near: hard cut
    assert cut_at_word_boundary("seed here" + "y" * 30, 9) == "seed here" + "y" * 30
    assert cut_at_word_boundary("a b", 2) == "a b"  # never cuts into the seed


def test_end_of_text_stops_generation(fixed_model, dtype) -> None:
    model = fixed_model(ABC, {EOS: 10.0})
    generator = Generator(model, ABC, 140, matmul_dtype=dtype)
    samples = generator.generate(["abc", ""], n=3, top_k=1, random_seed=0)
    assert [s.text for s in samples] == ["abc"] * 3 + [""] * 3
    assert all(s.ended == "eos" for s in samples)


def test_reproducible_with_a_random_seed(fixed_model, dtype) -> None:
    model = fixed_model(ABC, {EOS: -3.0})
    generator = Generator(model, ABC, 140, matmul_dtype=dtype)
    first = generator.generate(["a", "b "], n=4, temperature=1.0, random_seed=1234)
    again = generator.generate(["a", "b "], n=4, temperature=1.0, random_seed=1234)
    other = generator.generate(["a", "b "], n=4, temperature=1.0, random_seed=4321)
    assert [s.text for s in first] == [s.text for s in again]
    assert [s.mean_logprob for s in first] == [s.mean_logprob for s in again]
    assert [s.text for s in first] != [s.text for s in other]
    assert len({s.text for s in first}) > 1  # the samples of one batch differ from each other
    unseeded = {s.text for s in generator.generate(["a"], n=4, temperature=1.0)}
    assert len(unseeded) > 1


def test_temperature_and_top_k_shape_the_draws(fixed_model, dtype) -> None:
    model = fixed_model(ABC, {"a": 2.0, "b": 1.0, "c": 0.0, " ": 0.0, EOS: -1e4})
    generator = Generator(model, ABC, 60, matmul_dtype=dtype)
    top1 = generator.generate([""], n=4, temperature=5.0, top_k=1, random_seed=0)
    assert all(set(s.text) == {"a"} for s in top1)
    top2 = generator.generate([""], n=8, temperature=5.0, top_k=2, random_seed=0)
    assert set("".join(s.text for s in top2)) == {"a", "b"}
    cold = generator.generate([""], n=8, temperature=0.05, random_seed=0)
    assert all(set(s.text) == {"a"} for s in cold)
    coldest = generator.generate([""], n=8, temperature=1e-6, random_seed=0)
    assert all(s.text == "a" * 60 for s in coldest)


def test_compiled_loop_matches_a_reference_decoder(trained, greedy) -> None:
    model, vocab = trained.trainer.model, trained.vocab
    for seed in ["the c", "", "my", "zq"]:
        ids = vocab.encode(seed)[0].tolist()
        [sample] = greedy.generate([seed], top_k=1, random_seed=0)
        assert sample.text == seed + greedy_reference(model, vocab, [EOS] + ids, 140 - len(seed))
        [reply] = greedy.generate([seed], top_k=1, random_seed=0, mode="reply")
        assert reply.text == greedy_reference(model, vocab, [EOS] + ids + [EOS], 140)


def test_top_k_beyond_the_vocabulary_means_no_top_k(fixed_model, dtype) -> None:
    model = fixed_model(ABC, {"a": 1.0, EOS: -2.0})
    generator = Generator(model, ABC, 60, matmul_dtype=dtype)
    wide = generator.generate(["b"], n=4, temperature=1.0, top_k=1000, random_seed=9)
    plain = generator.generate(["b"], n=4, temperature=1.0, top_k=0, random_seed=9)
    assert [s.text for s in wide] == [s.text for s in plain]


def test_reply_mode(greedy, fixed_model, dtype) -> None:
    [sample] = greedy.generate(["hello world"], mode="reply", top_k=1, random_seed=2)
    assert sample.mode == "reply" and sample.seed == "hello world"
    assert 0 < len(sample.text) <= 140 and sample.ended == "eos"
    # A reply's seed may be longer than a tweet; only its end is used as context, and the
    # whole tweet budget goes to the reply.
    model = fixed_model(ABC, {"b": 10.0, EOS: -1e4})
    long_seed = "abc " * 200
    generator = Generator(model, ABC, 140, max_context=50, matmul_dtype=dtype)
    [reply] = generator.generate([long_seed], mode="reply", top_k=1, random_seed=0)
    assert reply.text == "b" * 140 and reply.ended == "limit"
    # In continue mode the same seed is refused.
    with pytest.raises(GenerationError, match="seed"):
        Generator(model, ABC, 140, matmul_dtype=dtype).generate([long_seed])


def test_unknown_seed_characters_are_counted_not_fatal(greedy) -> None:
    [sample] = greedy.generate(["hé☃"], top_k=1, random_seed=0)
    assert sample.unknown_seed_chars == 2
    assert sample.text.startswith("hé☃") and len(sample.text) <= 140


@pytest.mark.parametrize("kwargs, words", [
    ({"n": 0}, "-n"),
    ({"n": 5000}, "-n"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 1e-40}, "temperature"),  # float32 flushes it to 0: logits / T is garbage
    ({"top_k": -1}, "top-k"),
    ({"mode": "sideways"}, "mode"),
])
def test_bad_requests_are_clear_errors(fixed_model, kwargs, words, dtype) -> None:
    generator = Generator(fixed_model(ABC), ABC, 140, matmul_dtype=dtype)
    with pytest.raises(GenerationError, match=words):
        generator.generate(["a"], **kwargs)
    with pytest.raises(GenerationError, match="seed"):
        generator.generate([])
    with pytest.raises(GenerationError, match="140"):
        generator.generate(["x" * 140])


def test_novelty_of_generated_text(fixed_model, dtype) -> None:
    model = fixed_model(ABC, {"a": 10.0, EOS: -1e4})
    index = NoveltyIndex.from_lines(["a" * 30, "b c"], n=20)
    [sample] = Generator(model, ABC, 40, index, matmul_dtype=dtype).generate(["c"], top_k=1, random_seed=0)
    assert sample.text == "c" + "a" * 39
    assert sample.copied is False
    # 21 windows of 20 characters; only the first ("c" + 19 a's) is not in the corpus.
    assert sample.novelty == pytest.approx(1 / 21)


def test_seeds_at_the_edges_of_the_shape_buckets(fixed_model, dtype) -> None:
    """Prefix widths are padded to 8, 16, ... 256 and rows to powers of two: seeds just under,
    at and over a width bucket, a seed longer than any short bucket, and row counts that leave
    padding rows, all give the same tweets as each seed alone; a row that never ends stops at
    exactly 140 characters, one whose budget is spent stops early while the others go on."""
    model = fixed_model(ABC, {"a": 10.0, EOS: -1e4})  # never ends
    generator = Generator(model, ABC, 140, matmul_dtype=dtype)
    seeds = ["", "b" * 6, "b" * 7, "b" * 8, "b" * 15, "b" * 16, "c " * 60, "c" * 139]
    together = generator.generate(seeds, top_k=1, random_seed=0)
    assert [s.text for s in together] == [seed + "a" * (140 - len(seed)) for seed in seeds]
    assert all(s.ended == "limit" for s in together)
    for count in (1, 3, 5):  # 1, 4 and 8 rows in the batch
        alone = generator.generate(seeds[:count], top_k=1, random_seed=0)
        assert [s.text for s in alone] == [s.text for s in together[:count]]


def test_sampled_tweets_repeat_for_a_seed_in_every_bucket(fixed_model, dtype) -> None:
    """The same request with the same random seed gives the same tweets, call after call, in
    each shape bucket, other buckets compiled in between."""
    model = fixed_model(ABC, {EOS: -2.5})  # uniform over a, b, c, space; ends now and then
    generator = Generator(model, ABC, 140, matmul_dtype=dtype)
    requests = [(["a"], 1), (["ab", "c"], 3), (["b" * 20, ""], 5)]
    first = [generator.generate(seeds, n, temperature=1.0, random_seed=77) for seeds, n in requests]
    again = [generator.generate(seeds, n, temperature=1.0, random_seed=77) for seeds, n in reversed(requests)]
    for one, other in zip(first, reversed(again)):
        assert [(s.text, s.ended, s.mean_logprob) for s in one] == \
            [(s.text, s.ended, s.mean_logprob) for s in other]
    texts = [s for batch in first for s in batch]
    assert {s.ended for s in texts} == {"eos", "limit"} or len({len(s.text) for s in texts}) > 1


def test_the_fused_step_weights_give_the_models_logits(trained) -> None:
    """One step through fused_step_weights (float32: no rounding) and gru_update equals the
    Keras cells' step: the layout of the fused matrices is right."""
    import numpy as np
    import tensorflow as tf

    from tweetgen.model import gru_update

    model = trained.trainer.model
    ids = tf.constant([EOS, 3, 4, 5])
    states = [tf.random.stateless_normal((4, gru.units), [1, i]) for i, gru in enumerate(model.grus)]
    expected_logits, expected_states = model.step(ids, states)
    fused, recurrent_bias, next_bias = model.fused_step_weights(tf.float32)
    x = tf.gather(model.first_layer_table(), ids)
    for i, h in enumerate(states):
        own = tf.matmul(h, fused[i])[:, : recurrent_bias[i].shape[0]] + recurrent_bias[i]
        h = gru_update(x, h, own)
        np.testing.assert_allclose(h.numpy(), expected_states[i].numpy(), atol=1e-5)
        x = tf.matmul(h, fused[i])[:, recurrent_bias[i].shape[0]:] + next_bias[i]
    np.testing.assert_allclose(x.numpy(), expected_logits.numpy(), atol=1e-4)
