"""The webhook outbox: backoff, keys, delivery against a real loopback receiver that is down,
then up; failures, cancels; and end to end through the daemon across a kill -9."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import make_home, query, start_daemon, stop, tweetgen, wait_for
from webhook_receiver import Receiver, reserve_port

from tweetgen import outbox
from tweetgen.config import Settings
from tweetgen.store import Store


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [outbox.backoff_seconds(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert outbox.backoff_seconds(10_000, 5, 3600) == 3600


def test_the_key_of_a_tweet_never_changes() -> None:
    instance = "6f1c1d2e-4b0e-4a7e-9a55-0c8e8d9f0a11"
    assert outbox.idempotency_key(instance, 7) == outbox.idempotency_key(instance, 7)
    assert outbox.idempotency_key(instance, 7) != outbox.idempotency_key(instance, 8)


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "db" / "t.db") as s:
        yield s


def approve(store: Store, *texts: str) -> list[int]:
    ids = store.add_samples([{"text": t, "seed": "", "novelty": 1.0} for t in texts])
    store.review(ids, "approved")
    return ids


def settings_for(tmp_path: Path, port: int) -> Settings:
    return Settings(home=tmp_path, webhook_url=f"http://127.0.0.1:{port}/hook",
                    webhook_retry_seconds=0.05, webhook_max_backoff_seconds=0.2,
                    webhook_timeout_seconds=5)


def test_down_then_up_delivers_every_approved_tweet_with_its_key(tmp_path: Path, store: Store) -> None:
    port_holder = reserve_port()
    port = port_holder.getsockname()[1]
    settings = settings_for(tmp_path, port)
    ids = approve(store, "first approved", "second approved", "third approved")
    store.add_samples([{"text": "never reviewed", "seed": ""}])

    down = outbox.deliver(settings, store)
    assert down.enqueued == 3 and down.delivered == 0 and down.retrying == 1  # stops at the first refusal
    assert "Connection" in down.errors[0] or "refused" in down.errors[0]
    pending = store.outbox_rows(["pending"])
    assert [m["attempts"] for m in pending] == [1, 0, 0]
    keys = {m["sample_id"]: m["idempotency_key"] for m in pending}

    port_holder.close()
    receiver = Receiver.start(port)
    try:
        time.sleep(0.1)  # past the first backoff
        up = outbox.deliver(settings, store)
        assert up.enqueued == 0 and up.delivered == 3
        assert receiver.received_ids() == set(ids)
        assert {i: {keys[i]} for i in ids} == receiver.keys_by_id()
        body = receiver.deliveries[0].body
        assert body["text"] == "first approved" and body["idempotency_key"] == keys[ids[0]]
        assert store.outbox_counts()["delivered"] == 3
        assert outbox.deliver(settings, store).delivered == 0  # nothing twice once marked
    finally:
        receiver.stop()


def test_a_refusal_fails_until_retried_and_an_unapproved_tweet_is_cancelled(tmp_path: Path,
                                                                             store: Store) -> None:
    receiver = Receiver.start(0, answer=400)
    port = receiver.server.server_address[1]
    try:
        settings = settings_for(tmp_path, port)
        refused, undone = approve(store, "the receiver refuses this", "approved, then undone")
        outbox.enqueue_approved(store)
        store.review([undone], "new")
        report = outbox.deliver(settings, store)
        assert (report.failed, report.cancelled, report.delivered) == (1, 1, 0)
        assert [m["sample_id"] for m in store.outbox_rows(["failed"])] == [refused]
        assert store.outbox_rows(["cancelled"])[0]["sample_id"] == undone

        receiver.answer = 200
        assert outbox.deliver(settings, store).delivered == 0  # failed stays failed
        assert store.retry_failed_outbox() == 1
        assert outbox.deliver(settings, store).delivered == 1
        keys = receiver.keys_by_id()[refused]
        assert len(keys) == 1  # the retry carried the same key
    finally:
        receiver.stop()


def test_a_server_error_is_retried(tmp_path: Path, store: Store) -> None:
    receiver = Receiver.start(0, answer=503)
    try:
        settings = settings_for(tmp_path, receiver.server.server_address[1])
        [tweet] = approve(store, "try again later")
        assert outbox.deliver(settings, store).retrying == 1
        receiver.answer = 200
        time.sleep(0.1)
        assert outbox.deliver(settings, store).delivered == 1
        assert len(receiver.deliveries) == 2 and len(receiver.keys_by_id()[tweet]) == 1
    finally:
        receiver.stop()


@pytest.mark.slow
def test_daemon_delivers_every_approval_across_a_kill_9(tmp_path: Path) -> None:
    port_holder = reserve_port()
    port = port_holder.getsockname()[1]
    home = make_home(tmp_path, webhook_url=f"http://127.0.0.1:{port}/hook", webhook_poll_seconds=0.3,
                     webhook_retry_seconds=0.2, webhook_max_backoff_seconds=0.5,
                     webhook_timeout_seconds=30, generate_interval_minutes=60)
    daemon = start_daemon(home)
    receiver = None
    try:
        wait_for(lambda: (home / "db" / "tweetgen.db").exists()
                 and query(home, "select 1 from job_events where job_id = 'startup'"),
                 what="the start-up", proc=daemon)
        # Tweets of our own: how many the tiny model's selection keeps is not the point here.
        with Store(home / "db" / "tweetgen.db") as store:
            ids = store.add_samples([{"text": f"tweet to deliver {i}", "seed": ""} for i in range(4)])
        tweetgen(home, "review", *map(str, ids[:3]), "--approve")
        # The receiver is down: the daemon keeps the messages and retries.
        wait_for(lambda: query(home, "select count(*) n from outbox where attempts > 0")[0]["n"] >= 1,
                 what="a failed attempt", proc=daemon)
        waiting = json.loads(tweetgen(home, "outbox", "--json").stdout)
        assert waiting["counts"]["pending"] == 3 and len(waiting["messages"]) == 3

        # Up, but holding its answer: the daemon dies while its POST is in flight.
        port_holder.close()
        receiver = Receiver.start(port, hold=threading.Event())
        wait_for(lambda: receiver.deliveries, what="a delivery in flight", proc=daemon)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        receiver.hold.set()
        receiver.hold = None
        assert query(home, "select count(*) n from outbox where status = 'delivered'")[0]["n"] == 0

        tweetgen(home, "review", str(ids[3]), "--approve")  # approved while the daemon is down
        daemon = start_daemon(home)
        wait_for(lambda: query(home, "select count(*) n from outbox where status = 'delivered'")[0]["n"] == 4,
                 what="every approval delivered", proc=daemon)
        assert receiver.received_ids() == set(ids)
        keys = receiver.keys_by_id()
        assert all(len(k) == 1 for k in keys.values())  # a redelivery carries the same key
        assert len({k for ks in keys.values() for k in ks}) == 4
        assert len(receiver.deliveries) >= 5  # the one in flight at the kill was sent again
    finally:
        code = stop(daemon)
        if receiver is not None:
            receiver.stop()
    assert code == 0
