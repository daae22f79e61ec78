"""All settings in one place: defaults, then tweetgen.toml, then TWEETGEN_* env, then CLI flags."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and says what to do."""


@dataclass
class Settings:
    # Paths: relative ones are taken under `home`, so several instances can run side by side.
    home: Path = Path(".")
    corpus_path: Path = Path("data/corpus.txt")
    checkpoint_dir: Path = Path("checkpoints")
    db_path: Path = Path("db/tweetgen.db")

    # Model.
    input_mode: str = "embedding"  # "embedding" or "onehot"
    embedding_dim: int = 64
    gru_sizes: tuple[int, ...] = (128, 256)
    dropout: float = 0.1
    vocab_min_count: int = 2  # rarer characters map to <unk>
    max_line_chars: int = 280  # longer lines are truncated for training

    # Training.
    batch_size: int = 64
    learning_rate: float = 2e-3  # the peak of each run's schedule
    lr_schedule: str = "cosine"  # anneal to min_learning_rate over the run's plan: or "exponential"
    lr_warmup_steps: int = 100  # linear warm-up at the start of every run (at most 1/10 of its plan)
    min_learning_rate: float = 2e-4  # reached exactly at the end of each run's plan
    embedding_lr_scale: float = 40.0  # the embedding's Adam steps x this (chosen in bench/README.md)
    clip_norm: float = 5.0
    validation_fraction: float = 0.05
    max_validation_lines: int = 1000  # a stable subset, so validation cost stays bounded
    random_seed: int = 1234
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    initial_steps: int = 3000
    initial_minutes: float = 0.0  # > 0: the initial run stops after this many minutes instead
    max_bad_steps: int = 20  # non-finite losses tolerated in one run before it stops

    # Devices (tweetgen.distribute): batch_size is the global batch, split across the replicas.
    strategy: str = "auto"  # "auto" (the one GPU, else the CPU), "mirrored" or "multi-worker"
    cpu_replicas: int = 2  # "mirrored" without a GPU: logical CPU devices, one replica each (tests)
    workers: tuple[str, ...] = ()  # "multi-worker" without TF_CONFIG: HOST:PORT of each, chief first
    worker_index: int = 0  # this process's place in `workers` (env TWEETGEN_WORKER_INDEX)
    precision: str = "float32"  # or "mixed_float16" / "mixed_bfloat16" (the loss stays float32)
    cpu_threads: int = 0  # TensorFlow's intra-op threads; 0: the cores this process may use
    cpu_matmul_precision: str = "auto"  # fast GRU path multiplies: "auto", "float32" or "bfloat16"

    # Fine-tuning on appended lines.
    finetune_interval_minutes: float = 30.0
    ingest_check_seconds: float = 60.0  # how often to look for min_new_lines waiting
    min_new_lines: int = 200
    replay_ratio: float = 3.0  # old lines replayed per new line
    finetune_epochs: float = 2.0  # passes over new+replay lines
    finetune_min_steps: int = 10
    finetune_max_steps: int = 1000
    finetune_learning_rate: float = 5e-4
    promote_tolerance_bpc: float = 0.02
    vocab_grow_min_count: int = 5

    # Generation.
    generate_interval_minutes: float = 10.0
    samples_per_seed: int = 4
    temperatures: tuple[float, ...] = (0.7, 1.0)
    top_k: int = 0
    seeds: tuple[str, ...] = ()  # empty: the corpus's most common first words plus ""
    max_tweet_chars: int = 140
    novelty_ngram: int = 20

    # Daemon.
    misfire_grace_seconds: int = 600
    heartbeat_seconds: float = 30.0
    db_busy_timeout_seconds: float = 10.0

    # HTTP API (`tweetgen serve`, `tweetgen daemon --http`).
    http_address: str = ""  # HOST:PORT the daemon also serves HTTP on; empty: it does not
    api_token: str = field(default="", repr=False)  # bearer token for writes (env TWEETGEN_API_TOKEN)
    http_max_body_bytes: int = 1 << 20  # larger request bodies are refused with 413
    http_max_generate: int = 64  # most tweets one POST /api/generate may ask for

    # Internal: the file the settings came from, for messages.
    source: str = field(default="defaults", repr=False)

    def path(self, name: str) -> Path:
        """An absolute path setting resolved under `home` (absolute, so that records in the
        database name the same file whatever the working directory)."""
        value = Path(getattr(self, name))
        return value if value.is_absolute() else Path(self.home).absolute() / value

    @property
    def corpus_file(self) -> Path:
        return self.path("corpus_path")

    @property
    def checkpoints(self) -> Path:
        return self.path("checkpoint_dir")

    @property
    def db_file(self) -> Path:
        return self.path("db_path")

    def model_config(self) -> dict[str, Any]:
        """The settings that fix the model's shape; saved in every checkpoint."""
        return {
            "input_mode": self.input_mode,
            "embedding_dim": self.embedding_dim,
            "gru_sizes": list(self.gru_sizes),
            "dropout": self.dropout,
        }

    def as_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            if f.name in ("source", "api_token"):  # the token is a secret: never in checkpoints
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else (
                list(value) if isinstance(value, tuple) else value)
        return out


SETTING_NAMES = {f.name for f in fields(Settings)} - {"source"}


def _convert(name: str, value: Any, origin: str) -> Any:
    """Coerce a TOML/env/CLI value to the type of the default, or say which setting is wrong."""
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if isinstance(default, Path):
            if not isinstance(value, (str, Path)):
                raise ValueError(value)
            return Path(value)
        if isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError(value)
            kind = type(default[0]) if default else str
            if name == "seeds":
                kind = str
            return tuple(kind(item) for item in items)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        kind = type(default).__name__
        raise ConfigError(
            f"{origin}: setting {name!r} must be {kind}, got {value!r}; fix it or remove it"
        ) from None


# Settings whose zero or negative value would divide by zero, never fire, or stop nothing.
AT_LEAST_ONE = ("embedding_dim", "max_line_chars", "log_every", "checkpoint_every",
                "initial_steps", "finetune_min_steps", "finetune_max_steps", "min_new_lines",
                "samples_per_seed", "max_validation_lines", "novelty_ngram", "vocab_min_count",
                "vocab_grow_min_count", "max_bad_steps", "cpu_replicas")
POSITIVE = ("learning_rate", "finetune_learning_rate", "embedding_lr_scale", "clip_norm", "finetune_epochs",
            "finetune_interval_minutes", "generate_interval_minutes", "ingest_check_seconds",
            "heartbeat_seconds")
NOT_NEGATIVE = ("min_learning_rate", "lr_warmup_steps", "cpu_threads", "initial_minutes", "replay_ratio",
                "promote_tolerance_bpc", "db_busy_timeout_seconds", "misfire_grace_seconds", "top_k")
STRATEGIES = ("auto", "mirrored", "multi-worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCHEDULES = ("cosine", "exponential")
MATMUL_PRECISIONS = ("auto", "float32", "bfloat16")
# Settings that no longer exist: a file or environment that still sets one gets a warning naming
# what replaced it, and the value is ignored (so an upgraded daemon still starts).
REMOVED_SETTINGS = {
    "lr_decay_rate": "the learning rate now anneals over each run's planned length (lr_schedule, "
                     "min_learning_rate)",
    "lr_decay_steps": "the learning rate now anneals over each run's planned length (lr_schedule, "
                      "min_learning_rate)",
}


def _validate(settings: Settings) -> None:
    if settings.input_mode not in ("embedding", "onehot"):
        raise ConfigError(f"input_mode must be 'embedding' or 'onehot', got {settings.input_mode!r}")
    if not settings.gru_sizes or min(settings.gru_sizes) < 1:
        raise ConfigError("gru_sizes needs at least one positive layer size, e.g. [128, 256]")
    if not 0 <= settings.dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {settings.dropout}")
    if not 0 < settings.validation_fraction < 0.5:
        raise ConfigError("validation_fraction must be in (0, 0.5)")
    if settings.batch_size < 1 or settings.max_tweet_chars < 1 or settings.keep_checkpoints < 1:
        raise ConfigError("batch_size, max_tweet_chars and keep_checkpoints must be at least 1")
    if any(t <= 0 for t in settings.temperatures):
        raise ConfigError("temperatures must all be > 0")
    for name in AT_LEAST_ONE:
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(settings, name)}")
    for name in POSITIVE:
        value = getattr(settings, name)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a number > 0, got {value}")
    for name in NOT_NEGATIVE:
        value = getattr(settings, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a number >= 0, got {value}")
    if settings.strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {settings.strategy!r}")
    if settings.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                          f"got {settings.lr_schedule!r}")
    if settings.lr_schedule == "exponential" and settings.min_learning_rate <= 0:
        raise ConfigError("lr_schedule 'exponential' needs min_learning_rate > 0")
    if settings.cpu_matmul_precision not in MATMUL_PRECISIONS:
        raise ConfigError(f"cpu_matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, "
                          f"got {settings.cpu_matmul_precision!r}")
    if settings.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {settings.precision!r}")
    for address in settings.workers:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"workers must be HOST:PORT addresses, got {address!r}")
    if settings.worker_index < 0 or (settings.workers and settings.worker_index >= len(settings.workers)):
        raise ConfigError(f"worker_index must name one of the {len(settings.workers)} workers "
                          f"(counted from 0), got {settings.worker_index}")
    if settings.http_max_body_bytes < 1024 or settings.http_max_generate < 1:
        raise ConfigError("http_max_body_bytes must be at least 1024 and http_max_generate at least 1")


def apply(settings: Settings, values: Mapping[str, Any], origin: str) -> Settings:
    """A copy of `settings` with `values` applied; unknown names are errors, None is skipped."""
    changes = {}
    for name, value in values.items():
        if name in REMOVED_SETTINGS:
            log.warning("%s: setting %r is no longer used and is ignored: %s; remove it", origin, name,
                        REMOVED_SETTINGS[name])
            continue
        if name not in SETTING_NAMES:
            raise ConfigError(f"{origin}: unknown setting {name!r}; see README 'Configuration'")
        if value is not None:
            changes[name] = _convert(name, value, origin)
    result = dataclasses.replace(settings, **changes)
    try:
        _validate(result)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    return result


def env_values(environ: Mapping[str, str]) -> dict[str, str]:
    """TWEETGEN_<NAME> variables for known settings (TWEETGEN_HOME included)."""
    out = {}
    for name in SETTING_NAMES | set(REMOVED_SETTINGS):
        key = "TWEETGEN_" + name.upper()
        if key in environ:
            out[name] = environ[key]
    return out


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults, then the TOML file (explicit, or tweetgen.toml under home if present), env, flags."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    settings = Settings()
    home = overrides.get("home") or environ.get("TWEETGEN_HOME") or "."
    if config_file is None and environ.get("TWEETGEN_CONFIG"):
        config_file = Path(environ["TWEETGEN_CONFIG"])
    if config_file is None and (Path(home) / "tweetgen.toml").is_file():
        config_file = Path(home) / "tweetgen.toml"
    if config_file is not None:
        settings = apply(settings, read_toml(config_file), str(config_file))
        settings.source = str(config_file)
    settings = apply(settings, env_values(environ), "environment")
    return apply(settings, overrides, "command line")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; create it or drop --config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix it") from None
    except OSError as exc:  # a directory, no permission
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); "
                          "point --config at a TOML file") from None
    # Allow settings at the top level or under a [tweetgen] table.
    return data.get("tweetgen", data) if isinstance(data.get("tweetgen"), dict) else data
