"""The webhook outbox: every approved tweet is POSTed as JSON to `webhook_url`, at least once.

The approval in the samples table is the durable record. The daemon's outbox job turns each
approved tweet without an outbox row into one (its payload and idempotency key fixed then),
and POSTs the due ones. A message is marked delivered only after a 2xx answer, so a kill -9
between the POST and that mark sends it again, with the same `Idempotency-Key` header (and
`idempotency_key` field), which the receiver uses to drop the repeat.

Answers: 2xx delivered; a transport error (refused, timeout), 5xx, 408, 425 or 429 are retried
after `webhook_retry_seconds`, doubling per failure up to `webhook_max_backoff_seconds`; any
other answer (a 4xx: the receiver refuses this message) marks it failed until `tweetgen outbox
--retry`. A tweet un-approved before its delivery is cancelled, not sent. After a transport
error the run stops (the receiver is probably down): the next run tries again.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .config import Settings
from .store import Store

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = {408, 425, 429}
USER_AGENT = "tweetgen-webhook/1"


class DeliveryError(Exception):
    def __init__(self, message: str, retryable: bool, transport: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.transport = transport  # no HTTP answer at all: the receiver is down or unreachable


def idempotency_key(instance_id: str, sample_id: int) -> str:
    """The same key for a tweet at every delivery (a UUID derived from the database's id)."""
    return str(uuid.uuid5(uuid.UUID(instance_id), f"tweet/{sample_id}"))


def payload(tweet: dict, key: str) -> dict:
    return {"idempotency_key": key, "id": tweet["id"], "text": tweet["text"], "seed": tweet["seed"],
            "score": tweet.get("score"), "novelty": tweet["novelty"], "created": tweet["created"],
            "approved": tweet["reviewed"]}


def backoff_seconds(attempts: int, first: float, cap: float) -> float:
    """The wait after the `attempts`-th failed attempt (1, 2, ...): first, 2 first, 4 first, ..."""
    return min(cap, first * 2 ** min(max(attempts - 1, 0), 60))


def post_json(url: str, body: dict, key: str, timeout: float) -> None:
    """POST `body`; raises DeliveryError unless the answer is 2xx."""
    request = urllib.request.Request(
        url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": key, "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        retry = exc.code >= 500 or exc.code in RETRYABLE_STATUSES
        raise DeliveryError(f"HTTP {exc.code} {exc.reason}", retryable=retry) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{type(exc).__name__}: {reason}", retryable=True, transport=True) from None


def enqueue_approved(store: Store) -> int:
    instance = store.instance_id()

    def message(tweet: dict) -> tuple[str, dict]:
        key = idempotency_key(instance, tweet["id"])
        return key, payload(tweet, key)

    return store.enqueue_approved(message)


@dataclass
class DeliveryReport:
    enqueued: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    cancelled: int = 0
    errors: list[str] = field(default_factory=list)


def deliver(settings: Settings, store: Store, should_stop: Callable[[], bool] = lambda: False,
            post: Callable[[str, dict, str, float], None] = post_json) -> DeliveryReport:
    """One run of the outbox job: enqueue newly approved tweets, POST what is due."""
    report = DeliveryReport(enqueued=enqueue_approved(store))
    for row in store.due_outbox():
        if should_stop():
            break
        if row["tweet_status"] != "approved":
            store.outbox_attempted(row["id"], "cancelled", "the tweet is no longer approved")
            report.cancelled += 1
            continue
        try:
            post(settings.webhook_url, json.loads(row["payload"]), row["idempotency_key"],
                 settings.webhook_timeout_seconds)
        except DeliveryError as exc:
            report.errors.append(str(exc))
            if not exc.retryable:
                store.outbox_attempted(row["id"], "failed", str(exc))
                report.failed += 1
                log.error("webhook refused tweet %d (%s): marked failed; `tweetgen outbox --retry` "
                          "sends it again", row["sample_id"], exc)
                continue
            wait = backoff_seconds(row["attempts"] + 1, settings.webhook_retry_seconds,
                                   settings.webhook_max_backoff_seconds)
            due = (datetime.now(UTC) + timedelta(seconds=wait)).isoformat(timespec="microseconds")
            store.outbox_attempted(row["id"], "pending", str(exc), due)
            report.retrying += 1
            log.warning("webhook delivery of tweet %d failed (%s): retry in %.0f s", row["sample_id"],
                        exc, wait)
            if exc.transport:
                break
            continue
        store.outbox_attempted(row["id"], "delivered")
        report.delivered += 1
    if report.delivered or report.failed:
        log.info("webhook: %d delivered, %d failed, %d to retry", report.delivered, report.failed,
                 report.retrying)
    return report
