"""A tweetgen home with a tiny trained, promoted model, for the HTTP, browser and chat tests.

The settings live in the home's tweetgen.toml, so `tweetgen` subprocesses pointed at it with
--home use the same tiny model. The home is trained in-process (real TensorFlow, 20 steps),
recorded in the store and promoted the way the daemon's initial run does it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tweetgen.config import Settings, load_settings
from tweetgen.store import Store

TOML = """
gru_sizes = [16, 16]
embedding_dim = 8
batch_size = 8
dropout = 0.0
vocab_min_count = 1
initial_steps = 20
log_every = 5
checkpoint_every = 1000000
max_tweet_chars = 60
novelty_ngram = 12
"""

WORDS = "the cat dog bird sat ran flew on in over mat fog sea sun rain city".split()
# Distinct lines, so that some land in the validation split and checkpoints have a val_bpc.
LINES = [" ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(3 + i % 5)) for i in range(60)]


def make_home(home: Path, extra_toml: str = "", lines: list[str] | None = None) -> Settings:
    """Write the config and corpus (`lines`, else LINES) under `home`, train 20 steps, promote;
    the Settings."""
    from tweetgen import engine, finetune

    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "data" / "corpus.txt").write_text("".join(f"{line}\n" for line in lines or LINES * 4))
    (home / "tweetgen.toml").write_text(TOML + extra_toml)
    settings = settings_of(home)
    with Store(settings.db_file) as store:
        outcome = engine.train(settings, 20, store=store, kind="initial")
        manager = engine.checkpoint_manager(settings)
        manager.promote(outcome.result.checkpoint)
        engine.sync_checkpoint_flags(store, manager)
        finetune.reconcile_ingests(settings, store)
    return settings


def settings_of(home: Path, **overrides: object) -> Settings:
    return load_settings(overrides={"home": str(home), **overrides}, environ={})


@contextmanager
def running_server(settings: Settings, bind_host: str = "127.0.0.1") -> Iterator[str]:
    """A real uvicorn server on a free loopback port; yields its base URL.

    `bind_host` is the address the app believes it listens on (the write rules use it); the
    socket is always on 127.0.0.1, so the tests send traffic to loopback only.
    """
    from tweetgen.web.app import create_app
    from tweetgen.web.server import ServerThread, bind

    server = ServerThread(create_app(settings, bind_host), bind("127.0.0.1", 0))
    try:
        yield server.url
    finally:
        server.stop()
