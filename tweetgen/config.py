"""All settings in one place: defaults, then tweetgen.toml, then TWEETGEN_* env, then CLI flags."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

log = logging.getLogger(__name__)

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
    # Context (tweetgen.context): how lines relate, so replies are trained after their message.
    context_mode: str = "none"  # "none", "previous-line" (consecutive lines are turns) or "pairs"
    context_share: float = 0.5  # share of replies trained after their message (the rest alone)

    # Devices (tweetgen.distribute): batch_size is the global batch, split across the replicas.
    strategy: str = "auto"  # "auto" (the one GPU, else the CPU), "mirrored" or "multi-worker"
    # Without a GPU ("auto" or "mirrored"): replicas on logical CPU devices, each on its own thread;
    # 0: one per core this process may use, at most one per 32 lines of the batch (tweetgen.cpu).
    cpu_replicas: int = 0
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
    finetune_epochs: float = 8.0  # passes over new+replay lines (chosen by bench/stream.py)
    finetune_min_steps: int = 50
    finetune_max_steps: int = 1000
    finetune_learning_rate: float = 2e-4
    promote_tolerance_bpc: float = 0.02
    new_validation_fraction: float = 0.1  # share of appended lines held out to judge a fine-tune
    idle_training: bool = True  # train the latest model on the whole corpus when no job is due
    idle_check_seconds: float = 30.0  # how often an idle daemon looks whether it may idle-train
    idle_patience: int = 6  # checkpoints without a better validation before idle training stops
    idle_max_hours_per_day: float = 24.0  # idle training time per UTC day at most
    idle_cycle_steps: int = 4000  # steps of one idle run (its learning-rate plan)
    idle_learning_rate: float = 3e-4  # the peak learning rate of each idle run
    idle_recent_lines: int = 500  # the newest lines appended since the last whole-corpus training ...
    idle_recent_weight: float = 4.0  # ... and are drawn this many times as often as the others
    vocab_grow_min_count: int = 5

    # Generation.
    generate_interval_minutes: float = 10.0
    samples_per_seed: int = 4
    temperatures: tuple[float, ...] = (0.7, 1.0)
    top_k: int = 0
    seeds: tuple[str, ...] = ()  # empty: the corpus's most common first words plus ""
    max_tweet_chars: int = 140
    novelty_ngram: int = 20
    # Candidate selection (tweetgen.selection): sample several, store the best.
    candidates_per_tweet: int = 3  # 1: every sample is a candidate of its own (still filtered)
    min_tweet_chars: int = 10  # shorter texts are fragments
    min_novelty: float = 0.3  # below it a text is a near-copy of the corpus
    novelty_weight: float = 0.5  # score = (1 - w) * fluency + w * novelty
    fluency_band: tuple[float, ...] = (-2.5, -0.4)  # mean log-prob (nats/char): noise below, repetition above

    # Daemon.
    misfire_grace_seconds: int = 600
    heartbeat_seconds: float = 30.0
    db_busy_timeout_seconds: float = 10.0

    # Maintenance (tweetgen.maintenance): retention, applied by a daemon job, and the WAL checkpoint.
    maintenance_interval_hours: float = 24.0
    losses_keep_runs: int = 20  # runs whose loss rows are all kept; older runs are thinned
    losses_thin_every_steps: int = 500  # thinned runs keep steps that are multiples of this (1: all)
    job_events_keep_days: float = 30.0  # 0: keep for ever
    rejected_keep_days: float = 30.0  # rejected tweets, from their review; 0: keep for ever
    maintenance_vacuum: bool = False  # also VACUUM (shrinks the file; blocks writers meanwhile)

    # HTTP API (`tweetgen serve`, `tweetgen daemon --http`).
    http_address: str = ""  # HOST:PORT the daemon also serves HTTP on; empty: it does not
    api_token: str = field(default="", repr=False)  # bearer token for writes (env TWEETGEN_API_TOKEN)
    http_max_body_bytes: int = 1 << 20  # larger request bodies are refused with 413
    http_max_generate: int = 64  # most tweets one POST /api/generate may ask for
    # Host header names the server answers (others get 400: DNS rebinding); '*.example.com' allowed.
    http_allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

    # Webhook (tweetgen.outbox): approved tweets POSTed as JSON, at least once.
    webhook_url: str = ""  # empty: no webhook
    webhook_timeout_seconds: float = 10.0
    webhook_poll_seconds: float = 5.0  # how often the daemon delivers what is due
    webhook_retry_seconds: float = 5.0  # the first retry's wait; it doubles per failure
    webhook_max_backoff_seconds: float = 3600.0

    # Internal: the file the settings came from, and where each changed setting was set
    # (the TOML file, "environment" or "command line"), for messages and the daemon's log.
    source: str = field(default="defaults", repr=False)
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

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

    @property
    def corpus_set_by(self) -> str | None:
        """Where a corpus path other than the default was set; None for the default path (the
        only one that is written from the fortune file when it is missing)."""
        if self.corpus_path == Settings.corpus_path:
            return None
        return self.origins.get("corpus_path", "the settings")

    def describe_sources(self) -> str:
        """Which sources the settings came from, e.g. for the daemon's start-up log line."""
        by_origin: dict[str, list[str]] = {}
        for name, origin in self.origins.items():
            by_origin.setdefault(origin, []).append(name)
        parts = [f"{origin} ({', '.join(sorted(names))})" for origin, names in by_origin.items()]
        return "defaults" + "".join(", then " + part for part in parts)

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
            if f.name in ("source", "origins", "api_token"):  # the token is a secret: never in checkpoints
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else (
                list(value) if isinstance(value, tuple) else value)
        return out


SETTING_NAMES = {f.name for f in fields(Settings)} - {"source", "origins"}
# TWEETGEN_* variables read elsewhere, which are not settings (so not warned about).
OTHER_ENV = {"TWEETGEN_CONFIG", "TWEETGEN_FAST_GRU"}
OTHER_ENV_PREFIXES = ("TWEETGEN_FAULT_",)  # tweetgen.faults: fault injection in tests


def did_you_mean(name: str) -> str:
    """'; did you mean 'x'?' naming the closest setting, or '' when none is close."""
    close = difflib.get_close_matches(name.lower(), SETTING_NAMES, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _convert(name: str, value: Any, origin: str) -> Any:
    """Convert a TOML/env/CLI value to the type of the default, or say which setting is wrong.
    Nothing is coerced silently: 128.9 is not an int, 1 is not a string."""
    default = getattr(Settings(), name)
    try:
        if isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError(value)
            return tuple(_scalar(TUPLE_ITEM_TYPES[name], item) for item in items)
        return _scalar(Path if isinstance(default, Path) else type(default), value)
    except (TypeError, ValueError):
        kind = (f"a list of {TUPLE_ITEM_TYPES[name].__name__}" if isinstance(default, tuple)
                else "a path" if isinstance(default, Path) else type(default).__name__)
        raise ConfigError(
            f"{origin}: setting {name!r} must be {kind}, got {value!r}; fix it or remove it"
        ) from None


# The element type of each list setting (a TOML list, or comma-separated in the environment),
# read from its annotation: `gru_sizes: tuple[int, ...]` holds ints.
TUPLE_ITEM_TYPES: dict[str, type] = {name: get_args(hint)[0]
                                     for name, hint in get_type_hints(Settings).items()
                                     if get_origin(hint) is tuple}


def _scalar(kind: type, value: Any) -> Any:
    """`value` as `kind`; strings (environment, flags) are parsed, other types must match."""
    if kind is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError(value)
        return Path(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("1", "0", "true", "false", "yes", "no"):
            return value.lower() in ("1", "true", "yes")
        if not isinstance(value, bool):
            raise ValueError(value)
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(value)
    if kind is float:
        return float(value)
    number = float(value) if isinstance(value, str) and not value.strip().lstrip("+-").isdigit() else value
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(value)
    return int(number)


# Settings whose zero or negative value would divide by zero, never fire, or stop nothing.
AT_LEAST_ONE = ("embedding_dim", "max_line_chars", "log_every", "checkpoint_every",
                "initial_steps", "finetune_min_steps", "finetune_max_steps", "min_new_lines",
                "samples_per_seed", "max_validation_lines", "novelty_ngram", "vocab_min_count",
                "vocab_grow_min_count", "max_bad_steps", "idle_patience", "idle_cycle_steps",
                "candidates_per_tweet", "losses_thin_every_steps",
                # APScheduler 3.x takes a positive grace time (or None); 0 crashes it at start.
                "misfire_grace_seconds")
POSITIVE = ("learning_rate", "finetune_learning_rate", "embedding_lr_scale", "clip_norm", "finetune_epochs",
            "finetune_interval_minutes", "generate_interval_minutes", "ingest_check_seconds",
            "heartbeat_seconds", "idle_check_seconds", "idle_learning_rate", "webhook_timeout_seconds",
            "webhook_poll_seconds", "webhook_retry_seconds", "webhook_max_backoff_seconds",
            "maintenance_interval_hours")
NOT_NEGATIVE = ("min_learning_rate", "lr_warmup_steps", "cpu_threads", "cpu_replicas", "initial_minutes",
                "replay_ratio",
                "promote_tolerance_bpc", "db_busy_timeout_seconds", "top_k", "idle_max_hours_per_day",
                "idle_recent_lines", "min_tweet_chars", "losses_keep_runs", "job_events_keep_days",
                "rejected_keep_days")
STRATEGIES = ("auto", "mirrored", "multi-worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCHEDULES = ("cosine", "exponential")
MATMUL_PRECISIONS = ("auto", "float32", "bfloat16")
CONTEXT_MODES = ("none", "previous-line", "pairs")  # the same as tweetgen.context.MODES
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
    if settings.idle_recent_weight < 1:
        raise ConfigError(f"idle_recent_weight must be at least 1, got {settings.idle_recent_weight}")
    if settings.context_mode not in CONTEXT_MODES:
        raise ConfigError(f"context_mode must be one of {', '.join(CONTEXT_MODES)}, "
                          f"got {settings.context_mode!r}")
    if not 0 <= settings.context_share <= 1:
        raise ConfigError(f"context_share must be in [0, 1], got {settings.context_share}")
    if not 0 <= settings.new_validation_fraction < 0.5:
        raise ConfigError("new_validation_fraction must be in [0, 0.5)")
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
    if not 0 <= settings.min_novelty <= 1 or not 0 <= settings.novelty_weight <= 1:
        raise ConfigError("min_novelty and novelty_weight must be between 0 and 1")
    band = settings.fluency_band
    if len(band) != 2 or not band[0] < band[1] < 0:
        raise ConfigError(f"fluency_band must be [low, high] with low < high < 0 (nats per character), "
                          f"got {list(band)}")
    if settings.webhook_url and not settings.webhook_url.startswith(("http://", "https://")):
        raise ConfigError(f"webhook_url must be an http:// or https:// URL, got {settings.webhook_url!r}")
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
            raise ConfigError(f"{origin}: unknown setting {name!r}{did_you_mean(name)} "
                              "(see README 'Configuration')")
        if value is not None:
            changes[name] = _convert(name, value, origin)
    origins = {**settings.origins, **{name: origin for name in changes}}
    result = dataclasses.replace(settings, **changes, origins=origins)
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


def unknown_env_warnings(environ: Mapping[str, str]) -> list[str]:
    """One line per TWEETGEN_* variable that names no setting (a typo would be ignored)."""
    known = {"TWEETGEN_" + name.upper() for name in SETTING_NAMES} | OTHER_ENV
    warnings = []
    for key in sorted(environ):
        if not key.startswith("TWEETGEN_") or key in known or key.startswith(OTHER_ENV_PREFIXES):
            continue
        names = sorted(k.removeprefix("TWEETGEN_") for k in known)  # the prefix matches always
        close = difflib.get_close_matches(key.removeprefix("TWEETGEN_"), names, n=1, cutoff=0.6)
        hint = f"; did you mean TWEETGEN_{close[0]}?" if close else ""
        warnings.append(f"environment variable {key} is not a tweetgen setting and is ignored{hint}")
    return warnings


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults, then the TOML file (explicit, or tweetgen.toml under home if present), env, flags."""
    environ = os.environ if environ is None else environ
    for warning in unknown_env_warnings(environ):
        log.warning(warning)
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
