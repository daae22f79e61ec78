"""Errors that reach the user as one line (naming the thing and what to do), without a traceback.

Kept free of TensorFlow so the CLI can catch them without importing it.
"""

from __future__ import annotations

from .checkpoints import CheckpointError
from .config import ConfigError
from .corpus import CorpusError
from .plot import PlotUnavailableError
from .store import StoreError


class GenerationError(ValueError):
    """A generation request that cannot be served; the message names the input."""


class BackupError(RuntimeError):
    """A backup that cannot be made: the target exists, the source is missing, the copy failed."""


class LockError(RuntimeError):
    """Another daemon or trainer holds this instance's lock."""


class NonFiniteLossError(RuntimeError):
    """Too many steps with a NaN or infinite loss in one run."""


KNOWN_ERRORS: tuple[type[Exception], ...] = (
    CheckpointError, ConfigError, CorpusError, StoreError, GenerationError, LockError,
    NonFiniteLossError, PlotUnavailableError, BackupError,
)
