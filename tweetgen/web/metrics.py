"""GET /metrics in the Prometheus text format.

The tweetgen figures are read from the database at each scrape (the daemon may be another
process, so the database is the one place that knows): stored tweets, runs by outcome,
validation bits/char, daemon job durations and lines waiting. HTTP request timings are
measured in this process. Each app has its own registry, so several can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from ..corpus import lines_waiting
from ..store import Store

disable_created_metrics()  # the *_created series double the output and tell nothing here

KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class StoreCollector(Collector):
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        samples = GaugeMetricFamily("tweetgen_samples", "Stored tweets by review status and source",
                                    labels=["status", "source"])
        for row in store.count_by("samples", "status", "source"):
            samples.add_metric([row["status"], row["source"] or ""], row["count"])
        yield samples

        runs = GaugeMetricFamily("tweetgen_runs", "Training and fine-tune runs by kind and outcome",
                                 labels=["kind", "status"])
        for row in store.count_by("runs", "kind", "status"):
            runs.add_metric([row["kind"], row["status"]], row["count"])
        yield runs

        bpc = GaugeMetricFamily("tweetgen_validation_bits_per_char",
                                "Validation bits per character of the promoted and latest checkpoints",
                                labels=["checkpoint"])
        for which, row in (("promoted", store.promoted_checkpoint()), ("latest", store.latest_checkpoint())):
            if row is not None and row["val_bpc"] is not None:
                bpc.add_metric([which], row["val_bpc"])
        yield bpc

        durations = SummaryMetricFamily("tweetgen_job_duration_seconds",
                                        "Run time of the daemon's executed jobs", labels=["job"])
        last = GaugeMetricFamily("tweetgen_job_last_duration_seconds",
                                 "Run time of each daemon job's last execution", labels=["job"])
        for row in store.job_durations():
            durations.add_metric([row["job_id"]], row["count"], row["total_s"])
            if row["last_s"] is not None:
                last.add_metric([row["job_id"]], row["last_s"])
        yield durations
        yield last

        events = CounterMetricFamily("tweetgen_job_events",
                                     "Daemon job events (executed, error, missed, skipped)",
                                     labels=["job", "event"])
        for row in store.count_by("job_events", "job_id", "event"):
            events.add_metric([row["job_id"], row["event"]], row["count"])
        yield events

        finetune = GaugeMetricFamily("tweetgen_last_finetune_bits_per_char",
                                     "The last completed fine-tune: the served model before it and the "
                                     "fine-tuned one after, on the old validation and the held-out new lines",
                                     labels=["lines", "model"])
        run = store.last_run("finetune", "completed")
        for lines, before, after in (("old", "val_bpc_before", "val_bpc_after"),
                                     ("new", "val_new_bpc_before", "val_new_bpc_after")):
            for model, column in (("served_before", before), ("fine_tuned", after)):
                if run is not None and run[column] is not None:
                    finetune.add_metric([lines, model], run[column])
        yield finetune

        cursor = store.cursor(str(self.settings.corpus_file))
        waiting = GaugeMetricFamily("tweetgen_lines_waiting",
                                    "Corpus lines appended since the last ingest, not trained yet")
        waiting.add_metric([], lines_waiting(self.settings.corpus_file, cursor))
        yield waiting


def make_registry(settings: Settings, store: Store) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(settings, store))
    requests = Histogram("tweetgen_http_request_duration_seconds", "HTTP request latency by route",
                         ["method", "route", "status"], registry=registry,
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    return registry, requests


class RequestTimer:
    """ASGI middleware timing each request into the histogram, labelled by route template."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label, so scanning for URLs cannot grow the series.
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.histogram.labels(method, template, str(status[0])).observe(
                time.perf_counter() - started)
