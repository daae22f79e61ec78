"""The FastAPI application: the JSON API under /api, the review page at /, /metrics, /healthz.

Every route is a thin layer over the library (Store, corpus.append_lines, the generator,
daemon_status), so the API, the CLI and the daemon leave the same records.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import corpus
from ..chat import SOURCE as CHAT_SOURCE
from ..chat import reply_message
from ..config import Settings
from ..feed import FEED_ENTRIES, atom_feed
from ..status import daemon_status
from ..store import Store, to_utc_iso
from .errors import ApiError, install_error_handlers
from .generation import OnDemand
from .limits import BodyLimit
from .metrics import RequestTimer, make_registry
from .schemas import (
    CorpusAppended,
    CorpusRequest,
    Error,
    Generated,
    GenerateRequest,
    Health,
    Loss,
    ReviewRequest,
    Run,
    Status,
    StatusCounts,
    Tweet,
    TweetPage,
)
from .security import SecurityHeaders, WriteGuard, allowed_hosts

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Error} for code in (401, 403, 404, 413, 415, 422)}
MAX_ID = 2**63 - 1  # SQLite's largest integer: beyond it an id cannot exist (nor be queried)
TweetId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def _version() -> str:
    try:
        return importlib.metadata.version("tweetgen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def create_app(settings: Settings, bind_host: str = "127.0.0.1") -> FastAPI:
    """The app for one tweetgen home; `bind_host` is the address it listens on (for the write rules)."""
    hosts = allowed_hosts(settings.http_allowed_hosts, bind_host)
    store = Store(settings.db_file, settings.db_busy_timeout_seconds)  # writes
    # Reads have their own connection: a write waiting for the daemon's lock (up to the busy
    # timeout) holds `store`, and WAL lets this one read meanwhile.
    reads = Store(settings.db_file, settings.db_busy_timeout_seconds).read_only()
    on_demand = OnDemand(settings, store)
    guard = WriteGuard(settings.api_token, bind_host)
    if not guard.writes_open:
        log.warning("listening on %s without an api_token: writes (review, corpus, generate) are "
                    "refused; set api_token or TWEETGEN_API_TOKEN", bind_host)
    registry, request_histogram = make_registry(settings, reads)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()
        reads.close()

    app = FastAPI(title="tweetgen", version=_version(), lifespan=lifespan, responses=ERRORS,
                  description="Review generated tweets, feed the corpus, generate on demand.",
                  docs_url=None, redoc_url=None)  # their pages load scripts from a CDN
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.http_max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(RequestTimer, histogram=request_histogram)
    app.add_middleware(SecurityHeaders)  # outermost: every answer gets the headers
    writes = [Depends(guard)]

    # ------------------------------------------------------------ tweets

    @app.get("/api/tweets", response_model=TweetPage, tags=["tweets"])
    def list_tweets(
        since: Annotated[str | None, Query(description="ISO 8601 time, e.g. 2026-12-01T10:00")] = None,
        seed: str | None = None,
        checkpoint: Annotated[int | None, Query(ge=1, le=MAX_ID, description="checkpoint id")] = None,
        status: Literal["new", "approved", "rejected"] | None = None,
        search: Annotated[str | None, Query(description="full-text search words")] = None,
        novel_only: bool = False,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        order: Annotated[Literal["newest", "score", "reviewed"],
                         Query(description="newest first, best score first, or latest reviewed first")
                         ] = "newest",
    ) -> dict[str, Any]:
        """Tweets with the filters of `tweetgen tweets`, a page at a time."""
        filters = {"since": _iso(since, "since"), "seed": seed, "checkpoint_id": checkpoint,
                   "status": status, "search": search, "novel_only": novel_only}
        return {"total": reads.count_samples(**filters), "limit": limit, "offset": offset,
                "tweets": reads.query_samples(**filters, limit=limit, offset=offset, order=order)}

    @app.get("/api/tweets/counts", response_model=StatusCounts, tags=["tweets"])
    def tweet_counts() -> dict[str, int]:
        """Tweets per review status."""
        return reads.status_counts()

    @app.get("/api/tweets/{tweet_id}", response_model=Tweet, tags=["tweets"])
    def get_tweet(tweet_id: TweetId) -> dict[str, Any]:
        return _tweet(reads, tweet_id)

    @app.post("/api/tweets/{tweet_id}/review", response_model=Tweet, tags=["tweets"], dependencies=writes)
    def review_tweet(tweet_id: TweetId, body: ReviewRequest) -> dict[str, Any]:
        """Approve or reject a tweet (status new: undo); answers the tweet as it now is."""
        if store.review([tweet_id], body.status) == 0:
            raise ApiError(404, f"no tweet with id {tweet_id}", "tweet_id")
        return _tweet(reads, tweet_id)

    # ------------------------------------------------------------ writing and generating

    @app.post("/api/corpus", response_model=CorpusAppended, tags=["corpus"], dependencies=writes,
              responses={507: {"model": Error}})
    def append_corpus(body: CorpusRequest) -> dict[str, Any]:
        """The validated, locked append of `tweetgen append`; bad lines are counted, not fatal.
        All or nothing: a batch the disk refuses (full, file size limit) is a 507 and the corpus
        is left as it was."""
        result = corpus.append_lines(settings.corpus_file, body.lines)
        return {"added": result.added, "rejected": sum(result.rejected.values()),
                "rejected_reasons": dict(result.rejected)}

    @app.post("/api/generate", response_model=Generated, tags=["generate"], dependencies=writes)
    def generate(body: GenerateRequest) -> dict[str, Any]:
        """On-demand tweets from the promoted checkpoint. `continue`: each tweet starts with the
        seed, stored with source 'on-demand'. `reply` (chat): each tweet answers the seed, read
        with the context the model was trained with, after `previous` (the turn before, e.g.
        the bot's last reply) when given; stored with source 'chat', their seed the message."""
        _check_generate(settings, body)
        seed, source = body.seed, "on-demand"
        if body.mode == "reply":
            seed, source = reply_message(body.previous, body.seed), CHAT_SOURCE
        made, name, step = on_demand.generate(seed, body.n, body.temperature, body.top_k,
                                              body.mode, body.random_seed, body.raw, source)
        return {"checkpoint": name, "checkpoint_step": step, "sampled": made.sampled,
                "dropped": made.dropped, "tweets": [_tweet(reads, i) for i in made.ids]}

    # ------------------------------------------------------------ the daemon's record

    @app.get("/api/status", response_model=Status, tags=["daemon"])
    def status() -> dict[str, Any]:
        """What `tweetgen status` shows, and whether writes need the api_token."""
        api = {"token_required": bool(settings.api_token), "writes_open": guard.writes_open}
        return {**daemon_status(settings), "api": api}

    @app.get("/api/runs", response_model=list[Run], tags=["daemon"])
    def runs(limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[dict[str, Any]]:
        return reads.list_runs(limit)

    @app.get("/api/losses", response_model=list[Loss], tags=["daemon"])
    def losses(run: Annotated[int | None, Query(ge=1, le=MAX_ID, description="run id (default: all)")] = None,
               limit: Annotated[int, Query(ge=1, le=100_000)] = 2000) -> list[dict[str, Any]]:
        """Training losses and validation bits/char in step order (the last `limit` rows)."""
        return reads.losses(run, limit)

    @app.get("/healthz", response_model=Health, tags=["daemon"])
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/metrics", tags=["daemon"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}})
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------ the feed of approved tweets

    @app.get("/feed.atom", tags=["tweets"], response_class=Response,
             responses={200: {"content": {"application/atom+xml": {}}, "description": "Atom 1.0"}})
    def feed(request: Request) -> Response:
        """The latest approved tweets as an Atom feed, newest approval first."""
        tweets = reads.query_samples(status="approved", order="reviewed", limit=FEED_ENTRIES)
        body = atom_feed(tweets, store.instance_id(), str(request.url))
        return Response(body, media_type="application/atom+xml; charset=utf-8")

    # ------------------------------------------------------------ the review page

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _iso(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    try:
        return to_utc_iso(value)
    except ValueError as exc:
        raise ApiError(422, f"{field}: {exc}", field) from None


def _tweet(store: Store, tweet_id: int) -> dict[str, Any]:
    row = store.get_sample(tweet_id)
    if row is None:
        raise ApiError(404, f"no tweet with id {tweet_id}", "tweet_id")
    return row


def _check_generate(settings: Settings, body: GenerateRequest) -> None:
    """The limits that depend on the settings (the rest are in GenerateRequest)."""
    if body.n > settings.http_max_generate:
        raise ApiError(422, f"n: at most {settings.http_max_generate} tweets per request "
                            f"(setting http_max_generate), got {body.n}", "n")
    if body.mode == "continue" and body.previous:
        raise ApiError(422, "previous: only in reply mode (the turn a reply follows); "
                            "leave it out in continue mode", "previous")
    if body.mode == "continue" and len(body.seed) >= settings.max_tweet_chars:
        raise ApiError(422, f"seed: in continue mode it must be under {settings.max_tweet_chars} "
                            f"characters (the tweet starts with it), got {len(body.seed)}", "seed")
    for field in ("seed", "previous"):
        try:
            getattr(body, field).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, f"{field}: holds an unpaired surrogate (\\ud800-\\udfff); "
                                "send valid text", field) from None
