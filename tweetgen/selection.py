"""Candidate selection: sample several tweets for each one stored, keep the best.

Each candidate is judged, in this order, and the first reason found drops it:
- "copy": it equals a corpus line (exactly, or but for case, spacing and outer punctuation);
- "near copy": its novelty (share of its n-grams found nowhere in the corpus; in continue mode
  only those the model wrote, not those wholly inside the seed) is under `min_novelty`;
- "too short": under `min_tweet_chars` characters;
- "cut": it hit the length limit with no word boundary near the end (`generate` cuts back to a
  space when one is close; a text it could not cut ends mid-word);
- "stored": a stored tweet has the same text (same `text_key`);
- "repeat": it is a near-duplicate of a better candidate kept by the same job.
The rest are ranked by `score = (1 - w) * fluency + w * novelty` (w: `novelty_weight`), and the
best `per_seed` of each seed are kept. `fluency` maps the model's mean log-probability per
character into [0, 1] inside `fluency_band` [low, high]: 0 at or below `low` (noise), rising to
1 at `high`, then falling back to 0 at a log-probability of 0 (a text the model finds that easy
is repetition: 'the the the the').

All candidates of a call come from one `Generator.generate` batch (seeds x candidates). On
demand (a user asked for n), a seed left short of its quota gets at most MAX_ROUNDS - 1 more,
smaller batches; a scheduled job samples once (its cost stays candidates_per_tweet samples per
tweet, and it stores fewer tweets rather than weaker ones: the next run comes soon).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Settings
from .corpus import clean_seed
from .novelty import text_key

if TYPE_CHECKING:
    from .generate import Generator, Sample

MAX_ROUNDS = 3
MAX_CANDIDATES_PER_SEED = 1024  # the most samples per seed one Generator.generate call takes
SHINGLE = 4  # characters per shingle for near-duplicate detection
NEAR_DUPLICATE = 0.7  # Jaccard similarity of shingle sets at or above which two tweets are near-duplicates


@dataclass
class Candidate:
    sample: Sample
    key: str
    fluency: float
    score: float
    novelty: float = 1.0  # of what the model wrote (Selector.written_novelty)
    dropped: str | None = None  # why it was not kept, or None
    shingles: frozenset[str] = field(default_factory=frozenset, repr=False)

    def row_fields(self, candidates: int | None) -> dict:
        """The selection's columns of the tweet's stored row."""
        return {"score": self.score, "fluency": self.fluency, "candidates": candidates,
                "text_key": self.key}


def fluency(mean_logprob: float, band: Sequence[float]) -> float:
    """The mean log-probability (nats per character) mapped into [0, 1]; see the module text."""
    low, high = band
    if mean_logprob >= high:
        return max(0.0, mean_logprob / high)  # both negative: 1 at high, 0 at 0
    return max(0.0, (mean_logprob - low) / (high - low))


def score(fluency_value: float, novelty: float, novelty_weight: float) -> float:
    return (1 - novelty_weight) * fluency_value + novelty_weight * novelty


def shingles(text: str) -> frozenset[str]:
    key = text_key(text)
    if len(key) <= SHINGLE:
        return frozenset([key])
    return frozenset(key[i:i + SHINGLE] for i in range(len(key) - SHINGLE + 1))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two shingle sets."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(texts: Sequence[str]) -> int:
    """How many pairs of `texts` are near-duplicates (the benchmark's measure, and the rule
    selection applies within a job)."""
    sets = [shingles(t) for t in texts]
    return sum(1 for i in range(len(sets)) for j in range(i + 1, len(sets))
               if similarity(sets[i], sets[j]) >= NEAR_DUPLICATE)


def fragment_reason(sample: Sample, min_chars: int, max_chars: int) -> str | None:
    text = sample.text.strip()
    if len(text) < min_chars:
        return "too short"
    if sample.ended == "limit" and len(sample.text) >= max_chars and text[-1].isalnum():
        return "cut"
    return None


class Selector:
    """Selection for one job (one CLI call, one API request, one scheduled run): it remembers
    what the job kept, so no two of its tweets are near-duplicates.

    `stored_keys(keys)` answers which of these text keys stored tweets already have.
    """

    def __init__(self, settings: Settings, generator: Generator,
                 stored_keys: Callable[[list[str]], set[str]] = lambda keys: set()) -> None:
        self.settings = settings
        self.generator = generator
        self.stored_keys = stored_keys
        self.kept: list[Candidate] = []
        self.taken: list[frozenset[str]] = []  # shingles of what the job kept (or must avoid)
        self.sampled = 0  # candidates sampled by this job
        self.dropped: dict[str, int] = {}

    def avoid(self, texts: Iterable[str]) -> None:
        """Treat these texts as kept by this job (tweets waiting to be stored, say)."""
        self.taken.extend(shingles(text) for text in texts)

    def judge(self, samples: Sequence[Sample]) -> list[Candidate]:
        """Each sample scored, with its drop reason (corpus copies, fragments, stored tweets);
        repeats within the job are found by `select`."""
        s = self.settings
        novelty_index = self.generator.novelty
        candidates = [self._scored(sample) for sample in samples]
        stored = self.stored_keys(sorted({c.key for c in candidates}))
        for c in candidates:
            sample = c.sample
            if sample.copied or (novelty_index is not None and novelty_index.near_copy(sample.text)):
                c.dropped = "copy"
            elif c.novelty < s.min_novelty:
                c.dropped = "near copy"
            else:
                c.dropped = fragment_reason(sample, s.min_tweet_chars, self.generator.max_chars)
            if c.dropped is None and c.key in stored:
                c.dropped = "stored"
        return candidates

    def _scored(self, sample: Sample) -> Candidate:
        s = self.settings
        fluent = fluency(sample.mean_logprob, s.fluency_band)
        novelty = self.written_novelty(sample)
        return Candidate(sample, text_key(sample.text), fluent, score(fluent, novelty, s.novelty_weight),
                         novelty=novelty, shingles=shingles(sample.text))

    def written_novelty(self, sample: Sample) -> float:
        """The novelty of what the model wrote: in continue mode the n-grams that lie wholly in
        the seed are the user's, not the model's, and do not count (a seed that quotes the
        corpus would make every continuation a near-copy)."""
        index = self.generator.novelty
        if index is None:
            return 1.0
        if sample.mode != "continue" or not sample.seed:
            return 1.0 if sample.novelty is None else sample.novelty
        return index.score(sample.text[max(0, len(sample.seed) - index.n + 1):])[1]

    def select(self, seeds: Sequence[str], per_seed: int, temperature: float, top_k: int = 0,
               random_seed: int | None = None, mode: str = "continue",
               rounds: int = MAX_ROUNDS) -> list[Candidate]:
        """Up to `per_seed` kept candidates for each seed, best first within each seed; seeds
        left short are sampled again, at most `rounds` batches in all."""
        # Keyed as the generator writes them into samples (control characters cleaned).
        quota = {seed: per_seed for seed in dict.fromkeys(clean_seed(s) for s in seeds)}
        chosen: dict[str, list[Candidate]] = {seed: [] for seed in quota}
        for round_no in range(rounds):
            short = [seed for seed, left in quota.items() if left > 0]
            if not short:
                break
            wanted = max(quota[seed] for seed in short) * self.settings.candidates_per_tweet
            n = min(MAX_CANDIDATES_PER_SEED, wanted)
            samples = self.generator.generate(
                short, n, temperature, top_k,
                None if random_seed is None else random_seed + round_no, mode)
            self.sampled += len(samples)
            for candidate in self._keep_best(self.judge(samples), quota):
                chosen[candidate.sample.seed].append(candidate)
        return [c for seed in chosen for c in chosen[seed]]

    def _keep_best(self, candidates: list[Candidate], quota: dict[str, int]) -> list[Candidate]:
        kept = []
        for c in sorted(candidates, key=lambda c: -c.score):
            if c.dropped is None and quota[c.sample.seed] <= 0:
                c.dropped = "not among the best"
            elif c.dropped is None and any(similarity(c.shingles, k) >= NEAR_DUPLICATE
                                           for k in self.taken):
                c.dropped = "repeat"
            if c.dropped is not None:
                self.dropped[c.dropped] = self.dropped.get(c.dropped, 0) + 1
                continue
            quota[c.sample.seed] -= 1
            self.kept.append(c)
            self.taken.append(c.shingles)
            kept.append(c)
        return kept

