"""Candidate selection: its rules on hand-made samples, then end to end on a tiny trained model."""

from __future__ import annotations

import pytest
from conftest import PATTERNS

from tweetgen.config import Settings
from tweetgen.engine import default_seeds, distinct_seeds, generate_on_demand
from tweetgen.generate import Generator, Sample
from tweetgen.novelty import NoveltyIndex, text_key
from tweetgen.selection import (
    Selector,
    fluency,
    fragment_reason,
    near_duplicates,
    score,
    shingles,
    similarity,
)
from tweetgen.store import Store
from tweetgen.vocab import Vocab

BAND = (-2.5, -0.4)
CORPUS = ["Fix typo", "the cat sat on the mat and then it slept all day"]


def sample(text: str, logprob: float = -1.0, ended: str = "eos", seed: str = "",
           index: NoveltyIndex | None = None) -> Sample:
    s = Sample(text, seed, 1.0, 0, "continue", logprob, ended, 0)
    if index is not None:
        s.copied, s.novelty = index.score(text)
    return s


def test_fluency_is_a_tent_over_the_band() -> None:
    assert fluency(-3.0, BAND) == 0.0  # noise
    assert fluency(-2.5, BAND) == 0.0
    assert fluency(-1.45, BAND) == pytest.approx(0.5)
    assert fluency(-0.4, BAND) == pytest.approx(1.0)  # the top of the band
    assert fluency(-0.2, BAND) == pytest.approx(0.5)  # easier than that: repetition
    assert fluency(0.0, BAND) == 0.0
    assert score(1.0, 0.0, 0.25) == pytest.approx(0.75)
    assert score(0.0, 1.0, 0.25) == pytest.approx(0.25)


def test_text_key_ignores_case_spacing_and_outer_punctuation() -> None:
    assert text_key("  Fix   typo. ") == text_key("fix typo") == "fix typo"
    assert text_key("fix typos") != text_key("fix typo")
    index = NoveltyIndex.from_lines(CORPUS, n=8)
    assert index.near_copy("fix typo!") and not index.near_copy("fix the typo")


def test_fragments() -> None:
    assert fragment_reason(sample("more o t"), 10, 30) == "too short"
    assert fragment_reason(sample("   spaced out   "), 10, 30) is None
    assert fragment_reason(sample("x" * 30, ended="limit"), 10, 30) == "cut"
    # Cut back to a word boundary by the generator: shorter than the limit, so not a fragment.
    assert fragment_reason(sample("a complete thought", ended="limit"), 10, 30) is None
    assert fragment_reason(sample("x" * 29 + ".", ended="limit"), 10, 30) is None


def test_near_duplicates_and_similarity() -> None:
    assert similarity(shingles("the cat sat"), shingles("The  cat sat.")) == 1.0
    assert similarity(shingles("the cat sat"), shingles("a dog ran far")) == 0.0
    texts = ["the cat sat on the mat today", "the cat sat on the mat today!", "a dog ran in the fog",
             "my bird flew over the sea"]
    assert near_duplicates(texts) == 1


def test_seeds_are_distinct_ignoring_case_and_spacing(tmp_path) -> None:
    assert distinct_seeds(["Add", "Fix", "Update", "fix", " fix ", "", "Add  more", "add more"]) == [
        "Add", "Fix", "Update", "", "Add  more"]
    settings = Settings(home=tmp_path)
    settings.corpus_file.parent.mkdir(parents=True)
    lines = ["Fix a"] * 5 + ["fix b"] * 4 + ["Add c"] * 3 + ["Update d"] * 2 + ["Bump e"] * 1
    settings.corpus_file.write_text("".join(line + "\n" for line in lines))
    assert default_seeds(settings) == ["Fix", "Add", "Update", "Bump", ""]


@pytest.fixture
def judge_settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, min_tweet_chars=10, min_novelty=0.3, novelty_weight=0.5,
                    max_tweet_chars=60, novelty_ngram=8)


def test_judge_drops_copies_near_copies_fragments_and_stored(fixed_model, judge_settings) -> None:
    vocab = Vocab.build(CORPUS)
    index = NoveltyIndex.from_lines(CORPUS, n=8)
    generator = Generator(fixed_model(vocab), vocab, 60, index)
    stored = {text_key("an old tweet that we have")}
    selector = Selector(judge_settings, generator, lambda keys: stored & set(keys))
    samples = [sample(t, index=index, ended=e) for t, e in [
        ("Fix typo", "eos"),  # exact copy
        ("fix typo.", "eos"),  # copy but for case and punctuation
        ("the cat sat on the mat and then it slept", "eos"),  # novelty 0: near copy
        ("short", "eos"),
        ("y" * 60, "limit"),
        ("An old tweet that we have", "eos"),
        ("a brand new tweet about birds", "eos"),
    ]]
    reasons = [c.dropped for c in selector.judge(samples)]
    assert reasons == ["copy", "copy", "near copy", "too short", "cut", "stored", None]


def test_keep_best_ranks_by_score_per_seed_and_skips_repeats(fixed_model, judge_settings) -> None:
    vocab = Vocab.build(CORPUS)
    generator = Generator(fixed_model(vocab), vocab, 60, NoveltyIndex.from_lines(CORPUS, n=8))
    selector = Selector(judge_settings, generator)
    selector.avoid(["a tweet held from a failed write"])
    samples = [
        sample("birds sing in the morning", -0.5, seed="b"),
        sample("birds sing in the morning!", -0.45, seed="b"),  # the better of a near-duplicate pair
        sample("birds fly south for winter", -2.0, seed="b"),
        sample("birds are loud and proud", -1.0, seed="b"),
        sample("a tweet held from a failed write", -0.4, seed="a"),
        sample("and something else entirely", -1.2, seed="a"),
    ]
    candidates = selector.judge(samples)
    kept = selector._keep_best(candidates, {"a": 1, "b": 2})
    assert [c.sample.text for c in kept] == ["birds sing in the morning!", "birds are loud and proud",
                                             "and something else entirely"]
    assert selector.dropped == {"repeat": 2, "not among the best": 1}
    assert [c.score for c in kept] == sorted((c.score for c in kept), reverse=True)


def test_select_on_a_trained_model_keeps_no_copy_and_stores_the_score(trained, tmp_path) -> None:
    settings = Settings(home=tmp_path, candidates_per_tweet=4, min_tweet_chars=5, min_novelty=0.0,
                        novelty_ngram=8)
    generator = Generator(trained.trainer.model, trained.vocab, 140,
                          NoveltyIndex.from_lines(PATTERNS, 8))
    from tweetgen.checkpoints import CheckpointManager, load_checkpoint

    ckpt = load_checkpoint(CheckpointManager(trained.settings.checkpoints).paths()[-1])
    with Store(tmp_path / "db.sqlite") as store:
        made = generate_on_demand(settings, generator, ckpt, store, ["the", "hel"], 3, 1.3,
                                  random_seed=7)
        assert made.sampled >= 2 * 3 * 4  # the first round alone: 2 seeds x 3 tweets x 4 candidates
        assert made.dropped.get("copy", 0) > 0  # the model knows its four lines by heart
        rows = [store.get_sample(i) for i in made.ids]
        assert len(rows) <= 6
        for row in rows:
            assert row["copied"] == 0 and row["text"] not in PATTERNS
            assert row["score"] is not None and row["fluency"] is not None and row["candidates"] == 4
            assert row["text_key"] == text_key(row["text"])
        assert near_duplicates([r["text"] for r in rows]) == 0
        # The same request again stores none of the texts already stored.
        again = generate_on_demand(settings, generator, ckpt, store, ["the", "hel"], 3, 1.3,
                                   random_seed=7)
        texts = {text_key(store.get_sample(i)["text"]) for i in again.ids}
        assert not texts & {r["text_key"] for r in rows}
        # Raw: every sample kept and stored, each judged.
        raw = generate_on_demand(settings, generator, ckpt, store, ["hel"], 4, 0.5, random_seed=1,
                                 raw=True)
        assert len(raw.ids) == 4 and all(i is not None for i in raw.ids)
        assert [c.dropped for c in raw.candidates] == ["copy"] * 4  # 'hello world', a corpus line
        assert store.count_samples() == len(rows) + len(again.ids) + 4


def test_a_seed_quoting_the_corpus_does_not_make_a_near_copy(fixed_model, judge_settings) -> None:
    vocab = Vocab.build(CORPUS)
    index = NoveltyIndex.from_lines(CORPUS, n=8)
    selector = Selector(judge_settings, Generator(fixed_model(vocab), vocab, 60, index))
    seed = "the cat sat on the mat and then it"
    quoted = sample(seed + " wore a hat", seed=seed, index=index)
    assert quoted.novelty < judge_settings.min_novelty  # most of the text is the seed's corpus words
    [candidate] = selector.judge([quoted])
    assert candidate.dropped is None and candidate.novelty > 0.8  # "then it " is a corpus 8-gram
    copied = sample(seed + " slept all", seed=seed, index=index)  # the model went on quoting
    assert selector.judge([copied])[0].dropped == "near copy"


def test_selection_settings_are_checked() -> None:
    from tweetgen.config import ConfigError, load_settings

    for values, words in (({"fluency_band": "-0.4,-2.5"}, "fluency_band"),
                          ({"fluency_band": "-1"}, "fluency_band"),
                          ({"min_novelty": "1.5"}, "min_novelty"),
                          ({"candidates_per_tweet": "0"}, "candidates_per_tweet"),
                          ({"webhook_url": "ftp://example.org"}, "webhook_url")):
        with pytest.raises(ConfigError, match=words):
            load_settings(overrides=values, environ={})
    assert load_settings(overrides={"fluency_band": "-3,-0.5"}, environ={}).fluency_band == (-3.0, -0.5)
