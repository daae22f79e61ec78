"""The shapes of the API's requests and answers (they make its OpenAPI description).

Requests are strict (no coercion of "5" into 5, no unknown fields), so a mistyped field is an
error naming it rather than a silent default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED_CHARS = 1000  # reply mode reads at most max_line_chars of it anyway
MAX_CORPUS_LINES = 10_000  # per request; the body size limit applies too


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ReviewRequest(Request):
    status: Literal["approved", "rejected", "new"] = Field(description="new: undo a review")


class CorpusRequest(Request):
    lines: list[str] = Field(min_length=1, max_length=MAX_CORPUS_LINES,
                             description="texts to append, one tweet-sized text each")


class GenerateRequest(Request):
    seed: str = Field("", max_length=MAX_SEED_CHARS,
                      description="continue: the tweet starts with it; reply: the line answered")
    n: int = Field(5, ge=1, description="how many tweets (at most the http_max_generate setting)")
    temperature: float = Field(0.8, gt=0, le=10, allow_inf_nan=False)
    top_k: int = Field(0, ge=0, le=100_000, description="only the k likeliest characters (0: all)")
    mode: Literal["continue", "reply"] = "continue"
    previous: str = Field("", max_length=MAX_SEED_CHARS,
                          description="reply mode: the turn before the seed (e.g. the bot's last "
                                      "reply), read as context before it")
    random_seed: int | None = Field(None, ge=0, lt=2**62, description="repeat a batch exactly")
    raw: bool = Field(False, description="plain samples: no candidate selection (each still scored)")


class Tweet(BaseModel):
    id: int
    text: str
    seed: str | None
    temperature: float | None
    top_k: int | None
    checkpoint_id: int | None
    checkpoint_step: int | None
    mean_logprob: float | None
    copied: bool
    novelty: float | None
    source: str | None
    mode: str | None
    ended: str | None
    status: Literal["new", "approved", "rejected"]
    created: str
    reviewed: str | None
    score: float | None = Field(None, description="selection score: (1-w) fluency + w novelty")
    fluency: float | None = Field(None, description="mean log-probability mapped into [0, 1]")
    candidates: int | None = Field(None, description="candidates sampled per stored tweet")


class TweetPage(BaseModel):
    total: int = Field(description="tweets matching the filters, over all pages")
    limit: int
    offset: int
    tweets: list[Tweet]


class Generated(BaseModel):
    checkpoint: str
    checkpoint_step: int
    tweets: list[Tweet]
    sampled: int = Field(description="candidates sampled")
    dropped: dict[str, int] = Field(description="candidates not kept, by reason")


class StatusCounts(BaseModel):
    new: int
    approved: int
    rejected: int


class CorpusAppended(BaseModel):
    added: int
    rejected: int
    rejected_reasons: dict[str, int]


class Run(BaseModel):
    id: int
    kind: str
    status: str
    pid: int | None
    started: str
    finished: str | None
    base_checkpoint_id: int | None
    start_step: int | None
    steps: int | None
    new_lines: int | None
    replay_lines: int | None
    val_bpc_before: float | None
    val_bpc_after: float | None
    promoted: int | None
    checkpoint_id: int | None
    bad_steps: int | None
    config: Any
    error: str | None


class Loss(BaseModel):
    id: int
    run_id: int
    step: int
    kind: Literal["train", "val"]
    loss: float | None
    val_bpc: float | None
    learning_rate: float | None
    grad_norm: float | None
    chars_per_s: float | None
    created: str


class Status(BaseModel):
    daemon: dict[str, Any]
    running: dict[str, Any] | None = Field(
        None, description="the run in progress: kind, step of target, eta (ISO) and eta_seconds, "
                          "train_bpc and val_bpc (bits/char); null when none runs")
    idle_training: dict[str, Any] | None = Field(
        None, description="what idle training does: state (training, waiting, stopped, paused, off), "
                          "step, target_step, best_bpc, stale_checkpoints, patience, reason, since")
    promoted_checkpoint: dict[str, Any] | None
    lines_waiting: int | None
    samples: int
    last_runs: list[dict[str, Any]]
    api: dict[str, bool] = Field(description="token_required; writes_open (false: writes are refused)")


class Health(BaseModel):
    ok: bool


class Error(BaseModel):
    error: str
    field: str | None = None
