"""The HTTP API against a real uvicorn server on loopback, a real SQLite file and a tiny real model."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from webhome import make_home, running_server, settings_of

from tweetgen.checkpoints import CheckpointManager
from tweetgen.config import load_settings
from tweetgen.corpus import count_lines_after
from tweetgen.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_home(tmp_path_factory.mktemp("http") / "home")


@pytest.fixture(scope="module")
def client(settings):
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


@pytest.fixture
def store(settings):
    with Store(settings.db_file) as store:
        yield store


def promoted_name(settings) -> str:
    return CheckpointManager(settings.checkpoints).promoted_path().name


def sample_row(text: str, **fields) -> dict:
    return {"text": text, "seed": "", "temperature": 0.8, "top_k": 0, "checkpoint_id": 1,
            "checkpoint_step": 20, "copied": False, "novelty": 1.0, "source": "scheduled",
            "mode": "continue", "ended": "eos", **fields}


# ---------------------------------------------------------------- generate


def test_generate_continue_stores_on_demand_tweets(client, store, settings):
    body = {"seed": "the c", "n": 3, "temperature": 0.9, "random_seed": 7}
    data = client.post("/api/generate", json=body).json()
    assert data["checkpoint"] == promoted_name(settings)
    assert len(data["tweets"]) == 3
    promoted_id = store.promoted_checkpoint()["id"]
    for tweet in data["tweets"]:
        assert tweet["text"].startswith("the c")
        assert len(tweet["text"]) <= settings.max_tweet_chars
        assert (tweet["mode"], tweet["source"], tweet["status"]) == ("continue", "on-demand", "new")
        stored = store.get_sample(tweet["id"])
        assert stored["text"] == tweet["text"] and stored["source"] == "on-demand"
        assert stored["checkpoint_id"] == promoted_id and stored["seed"] == "the c"
        assert tweet["score"] is not None and tweet["candidates"] == settings.candidates_per_tweet
        assert not tweet["copied"]
    assert data["sampled"] >= 3 * settings.candidates_per_tweet
    assert sum(data["dropped"].values()) == data["sampled"] - 3
    # Selection never stores a text twice, so the same request again keeps other candidates.
    again = client.post("/api/generate", json=body).json()
    assert not {t["text"] for t in again["tweets"]} & {t["text"] for t in data["tweets"]}
    # Raw samples: the same random seed repeats a batch exactly; each is still scored.
    raw = {**body, "raw": True}
    first, second = (client.post("/api/generate", json=raw).json() for _ in range(2))
    assert [t["text"] for t in first["tweets"]] == [t["text"] for t in second["tweets"]]
    assert len(first["tweets"]) == 3 == first["sampled"] and first["dropped"] == {}
    assert all(t["score"] is not None and t["candidates"] == 1 for t in first["tweets"])


def test_generate_reply_reads_the_seed_as_the_previous_line(client, store, settings):
    line = "the cat sat on the mat and then it ran over the city in the rain"  # > max_tweet_chars
    response = client.post("/api/generate", json={"seed": line, "n": 2, "mode": "reply"})
    assert response.status_code == 200, response.text
    for tweet in response.json()["tweets"]:
        assert tweet["mode"] == "reply" and tweet["seed"] == line
        assert len(tweet["text"]) <= settings.max_tweet_chars
        assert store.get_sample(tweet["id"])["mode"] == "reply"
        assert tweet["source"] == "chat" and tweet["status"] == "new"  # reviewable like tweets


def test_generate_reply_after_the_previous_turn(client, store):
    body = {"seed": "and the dog?", "previous": "the cat sat on the mat", "n": 1, "mode": "reply"}
    response = client.post("/api/generate", json=body)
    assert response.status_code == 200, response.text
    [tweet] = response.json()["tweets"]
    stored = store.get_sample(tweet["id"])
    assert stored["seed"] == "the cat sat on the mat and the dog?"  # what the reply answered
    assert (stored["source"], stored["mode"]) == ("chat", "reply")
    refused = client.post("/api/generate", json={**body, "mode": "continue", "seed": "the"})
    assert refused.status_code == 422 and "previous: only in reply mode" in refused.text


@pytest.mark.parametrize("body, field", [
    ({"n": 0}, "n"),
    ({"n": 65}, "n"),  # over http_max_generate
    ({"n": "5"}, "n"),  # strict: no coercion
    ({"n": True}, "n"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1.5}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 10**6}, "top_k"),
    ({"temperature": 1e-30}, "temperature"),  # the engine's own check, answered with the field name
    ({"mode": "shout"}, "mode"),
    ({"seed": 5}, "seed"),
    ({"seed": "x" * 60}, "seed"),  # continue mode: the tweet must have room after the seed
    ({"seed": "x" * 1001, "mode": "reply"}, "seed"),
    ({"random_seed": -1}, "random_seed"),
    ({"tweets": 5}, "tweets"),  # unknown field
])
def test_generate_rejects_bad_fields_and_stores_nothing(client, store, body, field):
    before = store.count_samples()
    response = client.post("/api/generate", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["field"] == field and error["error"].startswith(field)
    assert "\n" not in error["error"]
    assert store.count_samples() == before


def test_generate_rejects_an_unpaired_surrogate_in_the_seed(client, store):
    before = store.count_samples()
    response = client.post("/api/generate", content=json.dumps({"seed": "a\ud800"}).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == "seed"
    assert store.count_samples() == before


def test_generate_follows_a_newly_promoted_checkpoint(client, settings):
    from tweetgen import engine

    first = client.post("/api/generate", json={"n": 1}).json()
    with Store(settings.db_file) as store:
        outcome = engine.train(settings, 5, store=store)
        manager = engine.checkpoint_manager(settings)
        manager.promote(outcome.result.checkpoint)
        engine.sync_checkpoint_flags(store, manager)
    second = client.post("/api/generate", json={"n": 1}).json()
    assert second["checkpoint"] == outcome.result.checkpoint.name != first["checkpoint"]
    assert second["checkpoint_step"] == first["checkpoint_step"] + 5


# ---------------------------------------------------------------- tweets and review


def test_tweets_filters_and_paging(client, store):
    ids = store.add_samples([sample_row(f"paging tweet number {i}", seed="pg", copied=i % 3 == 0)
                             for i in range(7)])
    store.review(ids[:2], "approved")
    store.add_samples([sample_row("another seed entirely", seed="other")])

    def get(**params):
        response = client.get("/api/tweets", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    page = get(seed="pg", limit=3)
    assert page["total"] == 7 and page["limit"] == 3
    assert [t["id"] for t in page["tweets"]] == ids[::-1][:3]  # newest first
    assert [t["id"] for t in get(seed="pg", limit=3, offset=6)["tweets"]] == [ids[0]]
    assert {t["id"] for t in get(seed="pg", status="approved")["tweets"]} == set(ids[:2])
    assert get(seed="pg", novel_only="true")["total"] == 4
    assert get(search="paging number")["total"] == 7
    assert get(search="entirely")["tweets"][0]["seed"] == "other"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert get(seed="pg", since=future)["total"] == 0
    assert get(seed="pg", since="2000-01-01")["total"] == 7
    assert get(seed="pg", checkpoint=1)["total"] == 7 and get(seed="pg", checkpoint=999)["total"] == 0

    one = client.get(f"/api/tweets/{ids[3]}").json()
    stored = store.get_sample(ids[3])
    del stored["text_key"]  # selection's lookup column, not part of the answer
    assert one == {**stored, "copied": True}  # stored as 1, answered as a boolean


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=501", "limit"), ("offset=-1", "offset"), ("since=yesterday", "since"),
    ("status=maybe", "status"), ("checkpoint=abc", "checkpoint"), ("novel_only=perhaps", "novel_only"),
    ("checkpoint=99999999999999999999", "checkpoint"),  # beyond SQLite's integers
])
def test_tweets_rejects_bad_query_parameters(client, query, field):
    response = client.get("/api/tweets?" + query)
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_tweet_not_found(client):
    response = client.get("/api/tweets/987654")
    assert response.status_code == 404
    assert response.json() == {"error": "no tweet with id 987654", "field": "tweet_id"}
    for bad in ("0", "abc", "99999999999999999999"):
        assert client.get(f"/api/tweets/{bad}").json()["field"] == "tweet_id"


def test_review_changes_the_status_in_the_database(client, store):
    (tweet_id,) = store.add_samples([sample_row("to be reviewed")])
    response = client.post(f"/api/tweets/{tweet_id}/review", json={"status": "approved"})
    assert response.status_code == 200
    assert response.json()["status"] == "approved"
    row = store.get_sample(tweet_id)
    assert row["status"] == "approved" and row["reviewed"] is not None
    client.post(f"/api/tweets/{tweet_id}/review", json={"status": "new"})  # undo
    assert store.get_sample(tweet_id)["status"] == "new"
    client.post(f"/api/tweets/{tweet_id}/review", json={"status": "rejected"})
    assert store.get_sample(tweet_id)["status"] == "rejected"

    for body, field in (({"status": "maybe"}, "status"), ({}, "status"),
                        ({"status": "approved", "why": "x"}, "why")):
        bad = client.post(f"/api/tweets/{tweet_id}/review", json=body)
        assert (bad.status_code, bad.json()["field"]) == (422, field)
    assert store.get_sample(tweet_id)["status"] == "rejected"
    missing = client.post("/api/tweets/987654/review", json={"status": "approved"})
    assert missing.status_code == 404


def test_counts_per_status_and_sorting_by_score(client, store):
    before = client.get("/api/tweets/counts").json()
    low, high, unscored = store.add_samples([sample_row("scored low", score=0.1),
                                             sample_row("scored high", score=0.9),
                                             sample_row("not scored")])
    store.review([low], "approved")
    after = client.get("/api/tweets/counts").json()
    assert after["approved"] == before["approved"] + 1 and after["new"] == before["new"] + 2
    page = client.get("/api/tweets", params={"order": "score", "limit": 500}).json()
    ids = [t["id"] for t in page["tweets"]]
    assert ids.index(high) < ids.index(low) < ids.index(unscored)
    assert client.get("/api/tweets", params={"order": "best"}).status_code == 422


def test_the_feed_lists_approved_tweets_newest_approval_first(client, store):
    import xml.etree.ElementTree as ET

    first, second, _new = store.add_samples([sample_row("approved <first> & escaped"),
                                             sample_row("approved second"), sample_row("not approved")])
    store.review([first], "approved")
    store.review([second], "approved")
    response = client.get("/feed.atom")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    atom = "{http://www.w3.org/2005/Atom}"
    feed = ET.fromstring(response.content)
    titles = [e.findtext(f"{atom}title") for e in feed.findall(f"{atom}entry")]
    assert titles[:2] == ["approved second", "approved <first> & escaped"]
    assert "not approved" not in titles
    ids = [e.findtext(f"{atom}id") for e in feed.findall(f"{atom}entry")]
    assert all(i.startswith("urn:uuid:") for i in ids) and len(set(ids)) == len(ids)
    assert ET.fromstring(client.get("/feed.atom").content).findtext(f"{atom}id") == feed.findtext(f"{atom}id")
    assert feed.findtext(f"{atom}updated") == store.get_sample(second)["reviewed"]


# ---------------------------------------------------------------- corpus


def test_corpus_append_validates_and_counts(client, settings):
    before = settings.corpus_file.read_bytes()
    lines = ["a fresh line from the api", "   ", "two\nlines", "bad \ud800 surrogate"]
    response = client.post("/api/corpus", content=json.dumps({"lines": lines}).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json() == {"added": 3, "rejected": 2,
                               "rejected_reasons": {"empty": 1, "invalid utf-8": 1}}
    added = settings.corpus_file.read_bytes()[len(before):]
    assert added == b"a fresh line from the api\ntwo\nlines\n"


def test_corpus_append_refused_by_the_disk_is_a_507_and_adds_nothing(client, settings):
    before = settings.corpus_file.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    lines = [f"a line of a batch too big for the disk {i}" for i in range(2000)]
    # A real file size limit on this process (the server runs in it), for this one request.
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 10_000, hard))
    try:
        response = client.post("/api/corpus", json={"lines": lines})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert settings.corpus_file.read_bytes() == before
    assert response.status_code == 507, response.text
    assert "nothing was added" in response.json()["error"]


@pytest.mark.parametrize("body, field", [
    ({"lines": []}, "lines"), ({"lines": "one line"}, "lines"), ({"lines": ["ok", 5]}, "lines[1]"),
    ({}, "lines"), ([], "body"),
])
def test_corpus_rejects_bad_bodies_and_appends_nothing(client, settings, body, field):
    before = settings.corpus_file.read_bytes()
    response = client.post("/api/corpus", json=body)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert settings.corpus_file.read_bytes() == before


def test_invalid_json_is_a_422_naming_the_body(client, settings):
    before = settings.corpus_file.read_bytes()
    response = client.post("/api/corpus", content=b'{"lines": ["half',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {"error": "body: not valid JSON", "field": "body"}
    assert settings.corpus_file.read_bytes() == before


def test_writes_must_be_json(client, settings):
    before = settings.corpus_file.read_bytes()
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"},
                    {}):
        response = client.post("/api/corpus", content=b'{"lines": ["sneaky"]}', headers=headers)
        assert response.status_code == 415
        assert response.json()["field"] == "content-type"
    assert settings.corpus_file.read_bytes() == before


def test_oversized_bodies_are_refused_whole(settings):
    small = settings_of(settings.home, http_max_body_bytes=2048)
    before = settings.corpus_file.read_bytes()
    with running_server(small) as url, httpx.Client(base_url=url, timeout=30) as http:
        big = json.dumps({"lines": ["x" * 100] * 30}).encode()
        announced = http.post("/api/corpus", content=big, headers={"content-type": "application/json"})
        assert announced.status_code == 413
        assert announced.json()["field"] == "body" and "2048" in announced.json()["error"]

    with running_server(small) as url, httpx.Client(base_url=url, timeout=30) as http:
        def chunks():  # no Content-Length: the server counts as the body streams in
            for _ in range(30):
                yield json.dumps("x" * 100).encode()

        streamed = http.post("/api/corpus", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert settings.corpus_file.read_bytes() == before

        fits = http.post("/api/corpus", json={"lines": ["a small line"]})
        assert fits.status_code == 200 and fits.json()["added"] == 1


# ---------------------------------------------------------------- security


def test_writes_need_the_token_when_one_is_configured(settings, store):
    (tweet_id,) = store.add_samples([sample_row("token test")])
    guarded = settings_of(settings.home, api_token="s3cret-token")
    with running_server(guarded) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/tweets").status_code == 200  # reads stay open
        assert http.get("/api/status").json()["api"] == {"token_required": True, "writes_open": True}
        review = f"/api/tweets/{tweet_id}/review"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"}):
            refused = http.post(review, json={"status": "approved"}, headers=headers)
            assert refused.status_code == 401
            assert refused.json()["field"] == "authorization"
            assert refused.headers["www-authenticate"] == "Bearer"
        assert store.get_sample(tweet_id)["status"] == "new"
        allowed = http.post(review, json={"status": "approved"},
                            headers={"Authorization": "Bearer s3cret-token"})
        assert allowed.status_code == 200
        assert store.get_sample(tweet_id)["status"] == "approved"


def test_the_token_comes_from_the_environment_and_stays_out_of_checkpoints(settings):
    from_env = load_settings(overrides={"home": str(settings.home)}, environ={"TWEETGEN_API_TOKEN": "abc"})
    assert from_env.api_token == "abc"
    assert "api_token" not in from_env.as_dict() and "abc" not in repr(from_env)


def test_writes_are_refused_off_loopback_without_a_token(settings, store):
    (tweet_id,) = store.add_samples([sample_row("exposed server")])
    with running_server(settings, bind_host="0.0.0.0") as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/tweets").status_code == 200
        assert http.get("/api/status").json()["api"]["writes_open"] is False
        for path, body in ((f"/api/tweets/{tweet_id}/review", {"status": "approved"}),
                           ("/api/corpus", {"lines": ["from afar"]}), ("/api/generate", {"n": 1})):
            refused = http.post(path, json=body)
            assert refused.status_code == 403
            assert "api_token" in refused.json()["error"]
    assert store.get_sample(tweet_id)["status"] == "new"

    with_token = settings_of(settings.home, api_token="tok")
    with running_server(with_token, bind_host="0.0.0.0") as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        ok = http.post(f"/api/tweets/{tweet_id}/review", json={"status": "approved"},
                       headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200


def test_foreign_host_names_are_refused_on_every_route(client, store):
    """DNS rebinding: a page on another site that points its own DNS name at 127.0.0.1 must
    neither read (status holds paths and the pid; tweets) nor write through a visitor's browser."""
    (tweet_id,) = store.add_samples([sample_row("rebinding")])
    review = f"/api/tweets/{tweet_id}/review"
    evil = {"Host": "evil.example:8080"}
    for path in ("/", "/api/status", "/api/tweets", f"/api/tweets/{tweet_id}", "/api/runs", "/metrics",
                 "/static/app.js", "/openapi.json"):
        refused = client.get(path, headers=evil)
        assert refused.status_code == 400, path
        assert "evil" not in refused.text and "content-security-policy" in refused.headers
    assert client.post(review, json={"status": "approved"}, headers=evil).status_code == 400
    assert store.get_sample(tweet_id)["status"] == "new"
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080", "LocalHost"):
        assert client.get("/api/status", headers={"Host": host}).status_code == 200, host
        ok = client.post(review, json={"status": "approved"}, headers={"Host": host})
        assert ok.status_code == 200, host


def test_allowed_host_names_are_a_setting(settings):
    from tweetgen.config import ConfigError
    from tweetgen.web.app import create_app
    from tweetgen.web.security import allowed_hosts

    named = settings_of(settings.home, http_allowed_hosts=["tweets.example.org", "*.lan"])
    with running_server(named) as url, httpx.Client(base_url=url, timeout=30) as http:
        for host in ("tweets.example.org", "box.lan:8080", "127.0.0.1"):  # the last: the bind address
            assert http.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("localhost", "example.org", "lan"):
            assert http.get("/healthz", headers={"Host": host}).status_code == 400, host
    from_env = load_settings(overrides={"home": str(settings.home)},
                             environ={"TWEETGEN_HTTP_ALLOWED_HOSTS": "a.example,::1"})
    assert from_env.http_allowed_hosts == ("a.example", "::1")
    for bad in ("bad.*.example", "localhost:8080", "*bad.example"):
        with pytest.raises(ConfigError, match="http_allowed_hosts"):
            create_app(settings_of(settings.home, http_allowed_hosts=[bad]))
    assert allowed_hosts(["LocalHost", "::1", "[::1]"], "10.0.0.5") == \
        ["localhost", "[::1]", "[::1]", "10.0.0.5"]


@pytest.mark.parametrize("header, value", [
    ("Forwarded", "for=203.0.113.7;proto=https"),
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Forwarded-Host", "tweets.example.org"),
    ("X-Forwarded-Proto", "https"),
    ("X-Real-IP", "203.0.113.7"),
    ("Via", "1.1 proxy"),
])
def test_token_less_writes_are_refused_through_a_proxy(client, store, header, value):
    """Behind a reverse proxy on the same machine every client is 127.0.0.1 with a local Host."""
    (tweet_id,) = store.add_samples([sample_row("proxied")])
    refused = client.post(f"/api/tweets/{tweet_id}/review", json={"status": "approved"},
                          headers={header: value})
    assert refused.status_code == 403
    assert refused.json()["field"] == header.lower() and "api_token" in refused.json()["error"]
    assert store.get_sample(tweet_id)["status"] == "new"
    assert client.get(f"/api/tweets/{tweet_id}", headers={header: value}).status_code == 200


def test_reads_answer_while_a_write_waits_for_the_lock(settings, store):
    """The daemon holds the write lock; a review waits for it (busy timeout), GETs do not."""
    (tweet_id,) = store.add_samples([sample_row("waiting write")])
    patient = settings_of(settings.home, db_busy_timeout_seconds=120)
    with running_server(patient) as url, httpx.Client(base_url=url, timeout=10) as http:
        daemon = sqlite3.connect(settings.db_file, isolation_level=None)
        daemon.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a write
        write: dict = {}

        def review() -> None:
            write["response"] = httpx.post(url + f"/api/tweets/{tweet_id}/review",
                                           json={"status": "approved"}, timeout=130)

        writer = threading.Thread(target=review)
        writer.start()
        try:
            # Reads for a while after the write started waiting, each well within its timeout
            # (10 s; the write waits up to 120 s). With one shared connection they would queue.
            for _ in range(8):
                for path in ("/api/tweets", f"/api/tweets/{tweet_id}", "/api/runs", "/api/losses",
                             "/api/status", "/metrics"):
                    assert http.get(path).status_code == 200, path
                time.sleep(0.1)
            assert writer.is_alive() and "response" not in write  # still waiting for the lock
        finally:
            daemon.rollback()
            daemon.close()
            writer.join(130)
    assert write["response"].status_code == 200
    assert store.get_sample(tweet_id)["status"] == "approved"


def test_every_answer_carries_the_security_headers(client):
    for path in ("/", "/api/tweets", "/static/app.js", "/nope"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


def test_accepted_connections_have_nagle_off():
    """Keep-alive answers must not wait ~40 ms for a delayed ACK: asyncio turns Nagle's algorithm
    off on accepted sockets only when the listening socket was made with proto IPPROTO_TCP.
    (The latency itself is measured by `python -m bench.http`.)"""
    import asyncio

    from tweetgen.web.server import bind

    async def nodelay_of_an_accepted_connection() -> int:
        accepted = asyncio.get_running_loop().create_future()

        def handle(_reader, writer) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                            socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=bind("127.0.0.1", 0))
        async with server:
            _reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            value = await asyncio.wait_for(accepted, 30)
            writer.close()
        return value

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0


# ---------------------------------------------------------------- the daemon's record


def test_status_runs_losses_and_health(client, store):
    status = client.get("/api/status").json()
    assert status["samples"] == store.count_samples()
    assert status["promoted_checkpoint"]["id"] == store.promoted_checkpoint()["id"]
    assert status["daemon"]["state"] == "never started" and status["daemon"]["alive"] is False

    runs = client.get("/api/runs").json()
    initial = [r for r in runs if r["kind"] == "initial"]
    assert initial and initial[-1]["status"] == "completed" and initial[-1]["steps"] == 20
    assert len(client.get("/api/runs?limit=1").json()) == 1

    losses = client.get("/api/losses", params={"run": initial[-1]["id"]}).json()
    assert losses and {row["run_id"] for row in losses} == {initial[-1]["id"]}
    assert [row["step"] for row in losses] == sorted(row["step"] for row in losses)
    assert {"train", "val"} <= {row["kind"] for row in losses}
    assert client.get("/api/losses", params={"run": 987654}).json() == []
    assert client.get("/healthz").json() == {"ok": True}


def metric_values(text: str) -> dict[tuple, float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_reflect_the_database(client, store, settings):
    client.post("/api/corpus", json={"lines": ["metric line one", "metric line two"]})
    store.record_job_event("generate", "executed", duration_s=1.5)
    store.record_job_event("generate", "executed", duration_s=2.5)
    store.record_job_event("finetune", "error", error="boom")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values = metric_values(response.text)

    samples = {labels: v for (name, labels), v in values.items() if name == "tweetgen_samples"}
    for row in store.count_by("samples", "status", "source"):
        assert samples[(("source", row["source"]), ("status", row["status"]))] == row["count"]
    assert sum(samples.values()) == store.count_samples()
    assert values[("tweetgen_runs", (("kind", "initial"), ("status", "completed")))] == 1
    promoted = store.promoted_checkpoint()
    assert promoted["val_bpc"] is not None
    assert values[("tweetgen_validation_bits_per_char", (("checkpoint", "promoted"),))] == \
        pytest.approx(promoted["val_bpc"])
    assert values[("tweetgen_job_duration_seconds_count", (("job", "generate"),))] == 2
    assert values[("tweetgen_job_duration_seconds_sum", (("job", "generate"),))] == 4.0
    assert values[("tweetgen_job_last_duration_seconds", (("job", "generate"),))] == 2.5
    assert values[("tweetgen_job_events_total", (("event", "error"), ("job", "finetune")))] == 1
    cursor = store.cursor(str(settings.corpus_file))
    waiting = count_lines_after(settings.corpus_file, cursor["offset"])
    assert waiting >= 2 and values[("tweetgen_lines_waiting", ())] == waiting
    timed = [labels for (name, labels) in values if name == "tweetgen_http_request_duration_seconds_count"]
    assert (("method", "POST"), ("route", "/api/corpus"), ("status", "200")) in timed


def test_metrics_show_the_last_fine_tune_on_old_and_new_lines(client, store):
    run = store.start_run("finetune", 1, val_bpc_before=2.5, val_new_bpc_before=3.5)
    store.finish_run(run, "completed", val_bpc_after=2.49, val_new_bpc_after=3.0, promoted=1)
    values = metric_values(client.get("/metrics").text)
    name = "tweetgen_last_finetune_bits_per_char"
    assert values[(name, (("lines", "new"), ("model", "served_before")))] == 3.5
    assert values[(name, (("lines", "new"), ("model", "fine_tuned")))] == 3.0
    assert values[(name, (("lines", "old"), ("model", "fine_tuned")))] == 2.49


# ---------------------------------------------------------------- OpenAPI and the page


def test_openapi_describes_every_route_and_the_bearer_scheme(client):
    spec = client.get("/openapi.json").json()
    expected = {
        "/api/tweets": {"get"}, "/api/tweets/{tweet_id}": {"get"}, "/api/tweets/{tweet_id}/review": {"post"},
        "/api/corpus": {"post"}, "/api/generate": {"post"}, "/api/status": {"get"}, "/api/runs": {"get"},
        "/api/losses": {"get"}, "/healthz": {"get"}, "/metrics": {"get"}, "/api/tweets/counts": {"get"},
        "/feed.atom": {"get"},
    }
    assert {path: set(ops) for path, ops in spec["paths"].items()} == expected
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert (op.get("security") == [{"HTTPBearer": []}]) == (method == "post"), path
    generate = spec["components"]["schemas"]["GenerateRequest"]
    assert set(generate["properties"]) == {"seed", "n", "temperature", "top_k", "mode", "random_seed",
                                           "raw", "previous"}
    assert generate["additionalProperties"] is False
    params = {p["name"] for p in spec["paths"]["/api/tweets"]["get"]["parameters"]}
    assert params == {"since", "seed", "checkpoint", "status", "search", "novel_only", "limit", "offset",
                      "order"}
    assert client.get("/docs").status_code == 404  # its page would load scripts from a CDN


def test_review_page_uses_only_its_own_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith("/static/") for ref in refs)
    for ref in refs:
        asset = client.get(ref)
        assert asset.status_code == 200
        assert not re.search(r"https?://", asset.text), ref
    assert not re.search(r"https?://", page.text)
    assert "innerHTML" not in client.get("/static/app.js").text


# ---------------------------------------------------------------- processes


def test_the_web_app_answers_reads_without_importing_tensorflow(settings):
    script = f"""
import sys, httpx
from tweetgen.config import load_settings
from tweetgen.web.app import create_app
from tweetgen.web.server import ServerThread, bind
settings = load_settings(overrides={{"home": {str(settings.home)!r}}}, environ={{}})
server = ServerThread(create_app(settings), bind("127.0.0.1", 0))
for path in ("/", "/api/tweets", "/api/status", "/api/runs", "/api/losses", "/metrics", "/healthz",
             "/api/tweets/counts", "/feed.atom"):
    assert httpx.get(server.url + path, timeout=30).status_code == 200, path
server.stop()
assert "tensorflow" not in sys.modules, "tensorflow was imported"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def tweetgen_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tweetgen.cli", *args]


def wait_for_url(process: subprocess.Popen, log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no server address in the log within {timeout} s:\n{log.read_text()}")


def test_serve_command_runs_until_sigterm(settings, tmp_path):
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(tweetgen_cmd("serve", "--home", str(settings.home), "--port", "0"),
                                   stdout=out, stderr=out)
    try:
        url = wait_for_url(process, log)
        assert httpx.get(url + "/healthz", timeout=10).json() == {"ok": True}
        assert httpx.get(url + "/api/tweets?limit=1", timeout=10).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=5)


def test_serve_command_explains_a_bad_port(settings):
    bad = subprocess.run(tweetgen_cmd("serve", "--home", str(settings.home), "--port", "70000"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == \
        "tweetgen: error: --port must be between 0 and 65535, got 70000"
    with running_server(settings) as url:
        port = url.rsplit(":", 1)[1]
        taken = subprocess.run(tweetgen_cmd("serve", "--home", str(settings.home), "--port", port),
                               capture_output=True, text=True, timeout=60)
    assert taken.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr.strip().splitlines()[-1]


def test_daemon_explains_a_bad_http_address(tmp_path):
    result = subprocess.run(tweetgen_cmd("daemon", "--home", str(tmp_path), "--http", "localhost"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        "tweetgen: error: http address 'localhost' must be HOST:PORT, e.g. 127.0.0.1:8080"


@pytest.mark.slow
def test_daemon_http_generates_while_a_finetune_runs(tmp_path):
    """`tweetgen daemon --http`: one process; generation does not wait for its fine-tune."""
    home = tmp_path / "home"
    make_home(home, extra_toml="\n".join([
        "", "ingest_check_seconds = 1", "min_new_lines = 5", "heartbeat_seconds = 1",
        "generate_interval_minutes = 60", "finetune_interval_minutes = 60",
        "finetune_min_steps = 100000", "finetune_max_steps = 100000", ""]))
    with open(home / "data" / "corpus.txt", "a") as corpus:
        corpus.write("".join(f"the new line {i} over the sea\n" for i in range(20)))
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(tweetgen_cmd("daemon", "--home", str(home), "--http", "127.0.0.1:0"),
                                   stdout=out, stderr=out, cwd=ROOT,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        url = wait_for_url(process, log)
        with httpx.Client(base_url=url, timeout=30) as http:
            def finetune_running() -> bool:
                runs = http.get("/api/runs").json()
                return any(r["kind"] == "finetune" and r["status"] == "running" for r in runs)

            deadline = time.monotonic() + 90
            while not finetune_running():
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.2)
            started = time.monotonic()
            response = http.post("/api/generate", json={"seed": "the", "n": 4})
            took = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert took < 20
            assert finetune_running()
            assert http.get("/api/status").json()["daemon"]["alive"] is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=5)
    with Store(home / "db" / "tweetgen.db") as store:
        finetunes = [r for r in store.list_runs() if r["kind"] == "finetune"]
        assert finetunes and finetunes[0]["status"] == "interrupted"
        assert store.count_samples(seed="the") >= 4
