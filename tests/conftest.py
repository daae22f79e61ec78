"""Shared fixtures for the engine tests: tiny settings, tiny corpora, a tiny trained model.

Everything uses real TensorFlow at tiny sizes (GRU 32+32, embedding 16, batch 16) so the whole
engine suite stays within a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Before any test module imports TensorFlow: tweetgen binds Python's SQLite (with FTS5) first
# (see tweetgen/__init__.py); a subset of the suite starting with such a module failed without.
import tweetgen  # noqa: E402, F401

# Four patterns a tiny model learns in a few hundred steps. Each 3-character prefix identifies
# its pattern, so greedy generation from that prefix must reproduce it exactly.
PATTERNS = (
    "the cat sat on the mat",
    "a dog ran in the fog",
    "my bird flew over the sea",
    "hello world",
)

TINY = {
    "gru_sizes": (32, 32),
    "embedding_dim": 16,
    "batch_size": 16,
    "dropout": 0.0,
    "vocab_min_count": 1,
    "learning_rate": 1e-2,
    "lr_warmup_steps": 0,
    "min_learning_rate": 1e-3,
    "log_every": 25,
    "checkpoint_every": 10**6,
    "random_seed": 1234,
}


def write_corpus(path: Path, lines: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def varied_lines(count: int) -> list[str]:
    """Distinct lines of varied length, so batches differ in padding and some land in validation."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return [" ".join(words[(i + j) % len(words)] for j in range(1 + i % 5)) + f" {i}" for i in range(count)]


@pytest.fixture
def make_settings() -> Callable[..., Any]:
    """make_settings(home, **overrides): tiny Settings rooted at `home`."""
    from tweetgen.config import Settings

    def make(home: Path, **overrides: Any):
        values = dict(TINY, **overrides)
        return Settings(home=Path(home), **values)

    return make


@pytest.fixture
def fixed_model() -> Callable[..., Any]:
    """fixed_model(vocab, logits={char or id: value}): a model whose output ignores its input.

    The dense head's kernel is zeroed and its bias set, so every step has the same next-character
    distribution. This makes generation limits, end-of-text stops and probabilities exact.
    """
    import numpy as np

    from tweetgen.model import build_model

    def make(vocab, logits: dict[Any, float] | None = None, default: float = 0.0):
        model = build_model(vocab.size, {"input_mode": "embedding", "embedding_dim": 8,
                                         "gru_sizes": [16], "dropout": 0.0})
        bias = np.full(vocab.size, default, np.float32)
        for key, value in (logits or {}).items():
            index = key if isinstance(key, int) else vocab.encode(key)[0][0]
            bias[index] = value
        model.head.kernel.assign(np.zeros(model.head.kernel.shape, np.float32))
        model.head.bias.assign(bias)
        return model

    return make


@dataclass
class Trained:
    settings: Any
    vocab: Any
    trainer: Any
    result: Any
    losses: list[float]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """A tiny model trained for 300 steps on PATTERNS (about 5 s), shared by the session."""
    from tweetgen import corpus
    from tweetgen.checkpoints import CheckpointManager
    from tweetgen.config import Settings
    from tweetgen.trainer import Trainer, TrainJob, build_data
    from tweetgen.vocab import Vocab

    home = tmp_path_factory.mktemp("trained")
    settings = Settings(home=home, **TINY)
    write_corpus(settings.corpus_file, list(PATTERNS) * 20)
    lines = corpus.read_lines(settings.corpus_file).lines
    vocab = Vocab.build(lines)
    trainer = Trainer.fresh(settings, vocab)
    job = TrainJob("train", 1, 0, corpus.complete_end(settings.corpus_file), 300)
    data = build_data(settings, vocab, job)
    losses: list[float] = []
    result = trainer.run(job, data, CheckpointManager(settings.checkpoints),
                         on_log=lambda entry: losses.append(entry.loss))
    return Trained(settings, vocab, trainer, result, losses)


def greedy_reference(model: Any, vocab: Any, prefix: list[int], budget: int) -> str:
    """Greedy decoding the slow, obvious way: one eager model.step per character (padding,
    <unk> and <sep> never drawn, as in tweetgen.generate)."""
    import numpy as np
    import tensorflow as tf

    from tweetgen.vocab import EOS, PAD, UNK

    banned = [PAD, UNK] + ([vocab.sep_id] if vocab.sep_id is not None else [])
    states = model.initial_state(1)
    for token in prefix:
        logits, states = model.step(tf.constant([token]), states)
    out: list[int] = []
    while len(out) < budget:
        scores = logits.numpy()[0]
        scores[banned] = -np.inf
        token = int(np.argmax(scores))
        if token == EOS:
            break
        out.append(token)
        logits, states = model.step(tf.constant([token]), states)
    return vocab.decode(out)
