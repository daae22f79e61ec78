"""On-demand tweets for the server, which never wait for the daemon's training.

The server has its own generator (its own copy of the promoted checkpoint's model, reloaded when
another checkpoint is promoted), so a fine-tune running in the daemon, in this process or
another, does not hold it up. Generate requests are served one at a time: the generator is one
batched loop, and a request for n tweets is one batch. TensorFlow loads with the first request.
"""

from __future__ import annotations

import threading
from typing import Any

from ..config import Settings
from ..store import Store


class OnDemand:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._cache: Any = None  # engine.GeneratorCache, made with the first request
        self._lock = threading.Lock()

    def generate(self, seed: str, n: int, temperature: float, top_k: int, mode: str,
                 random_seed: int | None, raw: bool = False,
                 source: str = "on-demand") -> tuple[Any, str, int]:
        """Generate and store up to n selected tweets (n plain samples with `raw`) with this
        source: the engine's OnDemandResult (ids, sampled, dropped) and the checkpoint."""
        from ..engine import GeneratorCache, generate_on_demand

        with self._lock:
            if self._cache is None:
                self._cache = GeneratorCache(self.settings)
            generator, ckpt = self._cache.get()
            made = generate_on_demand(self.settings, generator, ckpt, self.store, [seed], n,
                                      temperature, top_k, random_seed, mode, source, raw)
        return made, ckpt.name, ckpt.step
