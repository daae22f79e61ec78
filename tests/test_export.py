"""`tweetgen export` and `tweetgen outbox`: real processes on a real database file."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from daemon_helpers import tweetgen

from tweetgen.export import export_text
from tweetgen.store import Store


def test_export_formats() -> None:
    rows = [{"id": 1, "text": 'a "quoted", tweet', "status": "approved", "score": 0.5, "extra": "x"}]
    parsed = list(csv.DictReader(io.StringIO(export_text(rows, "csv"))))
    assert parsed[0]["text"] == 'a "quoted", tweet' and parsed[0]["score"] == "0.5"
    assert "extra" not in parsed[0]
    assert json.loads(export_text(rows, "json"))[0]["text"] == 'a "quoted", tweet'
    assert export_text(rows, "txt") == 'a "quoted", tweet\n'
    with pytest.raises(ValueError, match="format"):
        export_text(rows, "xml")
    hostile = [{"id": 2, "text": "=HYPERLINK(\"http://x\")", "seed": "-1"}, {"id": 3, "text": "bell\x07"}]
    parsed = list(csv.DictReader(io.StringIO(export_text(hostile, "csv"))))
    assert parsed[0]["text"] == "'=HYPERLINK(\"http://x\")" and parsed[0]["seed"] == "'-1"
    assert export_text(hostile, "txt").splitlines()[1] == "bell\\x07"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    with Store(home / "db" / "tweetgen.db") as store:
        ids = store.add_samples([{"text": t, "seed": ""} for t in ("old approval", "new approval",
                                                                  "rejected one", "not reviewed")])
        store.review(ids[:1], "approved")
        time.sleep(0.01)
        (home / "since").write_text(store.db.execute("select strftime('%Y-%m-%dT%H:%M:%f', 'now')")
                                    .fetchone()[0])
        time.sleep(0.01)
        store.review(ids[1:2], "approved")
        store.review(ids[2:3], "rejected")
    return home


def test_export_approved_since(home: Path) -> None:
    assert tweetgen(home, "export").stdout == "old approval\nnew approval\n"  # approved, txt by default
    since = (home / "since").read_text()
    assert tweetgen(home, "export", "--since", since, "--format", "txt").stdout == "new approval\n"
    rows = json.loads(tweetgen(home, "export", "--status", "rejected", "--format", "json").stdout)
    assert [r["text"] for r in rows] == ["rejected one"] and rows[0]["status"] == "rejected"
    header = tweetgen(home, "export", "--format", "csv").stdout.splitlines()[0]
    assert header.startswith("id,text,seed,status,score")
    bad = tweetgen(home, "export", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "--since 'yesterday' is not an ISO 8601 time" in bad.stderr


def test_outbox_command_lists_waiting_and_retries_failed(home: Path) -> None:
    from tweetgen import outbox

    with Store(home / "db" / "tweetgen.db") as store:
        assert outbox.enqueue_approved(store) == 2
        first = store.outbox_rows(["pending"])[0]
        store.outbox_attempted(first["id"], "failed", "HTTP 400 Bad Request")
    text = tweetgen(home, "outbox").stdout
    assert "not configured" in text and "1 failed" in text and "1 pending" in text
    assert "HTTP 400 Bad Request" in text
    data = json.loads(tweetgen(home, "outbox", "--retry", "--json").stdout)
    assert data["retried"] == 1 and data["counts"]["pending"] == 2 and data["counts"]["failed"] == 0
