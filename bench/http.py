"""HTTP benchmark: requests/s and p50/p99 latency of the API, from a load generator on loopback.

    .venv/bin/python -m bench.http [--seconds 5] [--concurrency 4] [--json]

(As a module only: run as a script, bench/ would come first on the path and this file's name
would shadow the standard library's `http`.)

Set-up, in a scratch home: the default model (`Settings()`: embedding 64, GRU 128 then 256)
trained for one step by `tweetgen train` on the FreeBSD fortunes (generation cost does not
depend on how well it is trained; a barely trained model rarely stops early, so its tweets run
to the 140-character limit, the worst case), and a database of 100,000 samples written through
`Store.add_samples` (FTS index included) whose texts are the corpus's lines (real text, so a
search matches as it would on tweets). Then `tweetgen serve --port 0` runs as its own
process (so the load generator does not share its interpreter) and, after a warm-up (the first
generate request loads the model and traces the sampling loop), each scenario runs for
`--seconds` (at most `--max-requests` requests) from `--concurrency` client threads, each with
its own keep-alive connection to 127.0.0.1:

1. `GET /api/tweets` (the first page of 50, newest first, with the total count of 100k rows).
2. `GET /api/tweets?status=new&search=love` (a filtered, full-text page).
3. `POST /api/generate` with n=1 and 4. with n=16, from one client at a time: the server serves
   generate requests one at a time (one batched loop each), so more clients would only queue.

Latency is per request, measured by the client (connection reuse, JSON parsing on the server,
SQLite, serialisation). The machine is shared and has 2 cores, which the server and the load
generator share, so read the same-run ratio of generate n=16 to n=1 rather than absolute figures.

0. `GET /healthz` from one client on one keep-alive connection (Nagle's algorithm off on
   accepted connections: no answer waits ~40 ms for the client's delayed ACK).

Targets (issue 4): `GET /api/tweets` p99 under 50 ms; generate n=16 well under 16x n=1 (batched);
(issue 13) keep-alive `GET /healthz` p50 under 20 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

SAMPLES = 100_000
INSERT_BATCH = 10_000
SERVER_START_TIMEOUT_S = 120
SEARCH = "love"


def tweetgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "tweetgen.cli", *args]


def prepare_home(home: Path) -> dict:
    """Train the default model one step and fill the database; timings of each."""
    from tweetgen import corpus
    from tweetgen.store import Store

    started = time.monotonic()
    subprocess.run(tweetgen("train", "--home", str(home), "--steps", "1"), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    trained_s = time.monotonic() - started
    started = time.monotonic()
    texts = corpus.read_lines(home / "data" / "corpus.txt").lines
    with Store(home / "db" / "tweetgen.db") as store:
        checkpoint_id = store.latest_checkpoint()["id"]
        for first in range(0, SAMPLES, INSERT_BATCH):
            store.add_samples([sample_row(i, texts[i % len(texts)], checkpoint_id)
                               for i in range(first, first + INSERT_BATCH)])
        count = store.count_samples()
        matches = store.count_samples(status="new", search=SEARCH)
    return {"train_s": trained_s, "fill_s": time.monotonic() - started, "samples": count,
            "search_matches": matches}


def sample_row(i: int, text: str, checkpoint_id: int) -> dict:
    """Tweet-like rows: fortune lines (real text, so a search matches what it would on tweets)."""
    return {"text": text, "seed": text.split(" ", 1)[0], "temperature": (0.7, 1.0)[i % 2], "top_k": 0,
            "checkpoint_id": checkpoint_id, "checkpoint_step": 1, "mean_logprob": -2.0,
            "copied": i % 50 == 0, "novelty": 0.9, "source": "scheduled", "mode": "continue",
            "ended": "limit", "status": ("new", "new", "approved", "rejected")[i % 4]}


class Server:
    """`tweetgen serve` in a child process on a free loopback port."""

    def __init__(self, home: Path, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(tweetgen("serve", "--home", str(home), "--port", "0"),
                                            stdout=out, stderr=out)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not (found := re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        self.port = int(found.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> int:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def load(port: int, method: str, path: str, body: dict | None, seconds: float, clients: int,
         max_requests: int) -> dict:
    """Closed loop: each client sends its next request when the last one is answered."""
    payload = json.dumps(body).encode() if body is not None else None
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if len(latencies) + errors[0] >= max_requests:
                        return
                started = time.perf_counter()
                try:
                    ok = request(conn, method, path, payload) < 300
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                took = time.perf_counter() - started
                with lock:
                    if ok:
                        latencies.append(took)
                    else:
                        errors[0] += 1
        finally:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return summarize(latencies, errors[0], elapsed, clients)


def summarize(latencies: list[float], errors: int, elapsed: float, clients: int) -> dict:
    ordered = sorted(latencies)

    def percentile(p: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else None

    return {"requests": len(ordered), "errors": errors, "seconds": elapsed, "clients": clients,
            "requests_per_s": len(ordered) / elapsed if elapsed else 0.0,
            "p50_ms": percentile(0.50), "p99_ms": percentile(0.99),
            "mean_ms": statistics.fmean(ordered) * 1000 if ordered else None}


SCENARIOS = (
    # name, method, path, body, tweets per request, concurrent clients (None: --concurrency)
    # One client on one keep-alive connection: ~1 ms each, or ~40 ms if Nagle's algorithm were on
    # for accepted connections (the answer would wait for the client's delayed ACK).
    ("GET /healthz (keep-alive, 1 client)", "GET", "/healthz", None, 0, 1),
    ("GET /api/tweets (page of 50)", "GET", "/api/tweets", None, 0, None),
    (f"GET /api/tweets?status=new&search={SEARCH}", "GET", f"/api/tweets?status=new&search={SEARCH}",
     None, 0, None),
    ("POST /api/generate n=1", "POST", "/api/generate", {"seed": "the", "n": 1}, 1, 1),
    ("POST /api/generate n=16", "POST", "/api/generate", {"seed": "the", "n": 16}, 16, 1),
)


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="tweetgen-bench-http-"))
    home = workdir / "home"
    results: dict = {"meta": {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
        "python": platform.python_version(), "seconds": args.seconds, "concurrency": args.concurrency,
    }}
    try:
        results["setup"] = prepare_home(home)
        server = Server(home, workdir / "serve.log")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
            started = time.monotonic()
            for _, method, path, body, _, _ in SCENARIOS:  # load the model, trace, fill caches
                payload = json.dumps(body).encode() if body is not None else None
                for _ in range(3):
                    assert request(conn, method, path, payload) == 200, (method, path)
            conn.close()
            results["setup"]["warmup_s"] = time.monotonic() - started
            rows = []
            for name, method, path, body, tweets, clients in SCENARIOS:
                row = load(server.port, method, path, body, args.seconds, clients or args.concurrency,
                           args.max_requests)
                row.update(name=name, tweets_per_s=row["requests_per_s"] * tweets if tweets else None)
                rows.append(row)
            results["scenarios"] = rows
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    by_name = {row["name"]: row for row in results["scenarios"]}
    one, sixteen = by_name["POST /api/generate n=1"], by_name["POST /api/generate n=16"]
    tweets = by_name["GET /api/tweets (page of 50)"]
    health = by_name["GET /healthz (keep-alive, 1 client)"]
    ratio = sixteen["p50_ms"] / one["p50_ms"]
    results["summary"] = {
        "generate_n16_over_n1_p50": ratio,
        "targets_met": {"GET /api/tweets p99 < 50 ms": tweets["p99_ms"] < 50 and tweets["errors"] == 0,
                        "keep-alive GET /healthz p50 < 20 ms (no delayed-ACK wait)": health["p50_ms"] < 20,
                        "generate n=16 well under 16x n=1 (< 4x)": ratio < 4},
    }
    return results


def print_table(r: dict) -> None:
    m, s = r["meta"], r["setup"]
    print(f"tweetgen HTTP benchmark, {m['date']}, {m['cores']} cores, Python {m['python']}; "
          f"{s['samples']:,} samples (filled in {s['fill_s']:.1f} s; the search matches "
          f"{s['search_matches']:,}), warm-up {s['warmup_s']:.1f} s")
    print(f"each scenario {m['seconds']:g} s, GET with {m['concurrency']} clients, POST with 1; loopback")
    print()
    head = ["scenario", "clients", "requests", "errors", "req/s", "p50 ms", "p99 ms", "tweets/s"]
    rows = [head]
    for row in r["scenarios"]:
        rows.append([row["name"], str(row["clients"]), str(row["requests"]), str(row["errors"]),
                     f"{row['requests_per_s']:.1f}", f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
                     f"{row['tweets_per_s']:.1f}" if row["tweets_per_s"] else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("  ".join(cells))
    print()
    print(f"generate n=16 / n=1 latency (p50): {r['summary']['generate_n16_over_n1_p50']:.2f}x "
          "(16x would mean no batching)")
    targets = r["summary"]["targets_met"].items()
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each scenario (default 5)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads for the GET scenarios")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap per scenario")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 120 or not 1 <= args.concurrency <= 64:
        parser.error("--seconds must be in (0, 120] and --concurrency in [1, 64]")
    results = run(args)
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
