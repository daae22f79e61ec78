"""Novelty: how much of a generated text copies the corpus."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tweetgen.novelty import NoveltyIndex, ngram_hashes

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
]


def brute_force(lines: list[str], text: str, n: int) -> tuple[bool, float]:
    grams = {line[i : i + n] for line in lines for i in range(len(line) - n + 1)}
    windows = [text[i : i + n] for i in range(len(text) - n + 1)]
    if not windows:
        return text in lines, 0.0 if text in lines else 1.0
    return text in lines, sum(w not in grams for w in windows) / len(windows)


def test_an_exact_copy() -> None:
    index = NoveltyIndex.from_lines(CORPUS)
    assert index.score(CORPUS[0]) == (True, 0.0)


def test_a_fully_new_text() -> None:
    index = NoveltyIndex.from_lines(CORPUS)
    copied, novelty = index.score("completely different words that appear nowhere")
    assert copied is False and novelty == 1.0


def test_a_spliced_text_is_partly_novel() -> None:
    index = NoveltyIndex.from_lines(CORPUS)
    text = "the quick brown fox jumps" + " with a single step"  # two halves of corpus lines
    copied, novelty = index.score(text)
    assert copied is False
    assert 0.0 < novelty < 1.0
    assert novelty == pytest.approx(brute_force(CORPUS, text, 20)[1])


def test_a_substring_of_a_line_is_not_a_copy_but_has_no_new_ngrams() -> None:
    index = NoveltyIndex.from_lines(CORPUS)
    assert index.score("quick brown fox jumps over the") == (False, 0.0)


def test_texts_shorter_than_n() -> None:
    index = NoveltyIndex.from_lines(["short", "a much longer line of corpus text"])
    assert index.score("short") == (True, 0.0)
    assert index.score("new") == (False, 1.0)
    assert index.score("") == (False, 1.0)


def test_empty_index_and_growing_it() -> None:
    index = NoveltyIndex(n=5)
    assert index.score("hello world") == (False, 1.0)
    index.add(["hello world"])
    assert index.score("hello world") == (True, 0.0)
    index.add(["other line"])
    assert index.score("hello world") == (True, 0.0)
    assert index.score("other line") == (True, 0.0)


def test_ngram_hashes() -> None:
    assert ngram_hashes("abc", 4).size == 0
    hashes = ngram_hashes("abcabc", 3)
    assert hashes.dtype == np.uint64 and hashes.size == 4
    assert hashes[0] == hashes[3] and len(set(hashes.tolist())) == 3
    # Characters outside the BMP hash as one character each.
    assert ngram_hashes("😀😁x", 2).size == 2


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.text(alphabet="ab c😀", max_size=30), min_size=1, max_size=6),
       text=st.text(alphabet="ab c😀", max_size=40), n=st.integers(1, 6))
def test_matches_a_brute_force_count(lines: list[str], text: str, n: int) -> None:
    index = NoveltyIndex.from_lines(lines, n)
    copied, novelty = index.score(text)
    expected_copied, expected_novelty = brute_force(lines, text, n)
    assert copied == expected_copied
    assert novelty == pytest.approx(expected_novelty)


def test_adding_a_line_to_a_big_index_does_not_copy_the_index() -> None:
    """Adding lines costs what they hold, not what the index holds (it used to copy and sort
    the whole index at every add: three times its size in memory, at every generate job)."""
    lines = [f"line {i} of a corpus that is already big: {i * 7919 % 10007}" for i in range(20_000)]
    index = NoveltyIndex.from_lines(lines)
    assert index.nbytes > 500_000
    tracemalloc.start()
    try:
        index.add(["one new line appended to the corpus, scored from now on"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < index.nbytes / 20
    assert index.score("one new line appended to the corpus, scored from now on") == (True, 0.0)


@settings(max_examples=100, deadline=None)
@given(batches=st.lists(st.lists(st.text(alphabet="ab c", max_size=20), max_size=4), max_size=12),
       text=st.text(alphabet="ab c", max_size=30), n=st.integers(1, 4))
def test_growing_in_many_adds_scores_like_one_add(batches: list[list[str]], text: str, n: int) -> None:
    grown = NoveltyIndex(n)
    for batch in batches:
        grown.add(batch)
    everything = [line for batch in batches for line in batch]
    assert grown.score(text) == NoveltyIndex.from_lines(everything, n).score(text)
    assert len(grown._runs) <= max(1, sum(len(line) for line in everything)).bit_length()
