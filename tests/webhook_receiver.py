"""A webhook receiver on 127.0.0.1 for the outbox tests and bench/review.py: it records every
POST (its Idempotency-Key header and JSON body) and can be down, up, refusing, or holding.

`reserve_port()` binds a port without listening, so deliveries to it are refused (the receiver
is down) until `Receiver.start(port)` serves there.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reserve_port() -> socket.socket:
    """A bound, not listening, loopback socket: connections to its port are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Delivery:
    key: str
    body: dict


@dataclass
class Receiver:
    port: int
    answer: int = 200  # the HTTP status it answers
    hold: threading.Event | None = None  # when set: each request waits for it before answering
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @classmethod
    def start(cls, port: int, **options) -> Receiver:
        receiver = cls(port, **options)
        receiver.server = ThreadingHTTPServer(("127.0.0.1", port), receiver._handler())
        receiver.server.daemon_threads = True
        threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
        return receiver

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.deliveries.append(Delivery(self.headers.get("Idempotency-Key", ""), body))
                if receiver.hold is not None:
                    receiver.hold.wait(60)
                self.send_response(receiver.answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        return Handler

    def received_ids(self) -> set[int]:
        with self.lock:
            return {d.body["id"] for d in self.deliveries}

    def keys_by_id(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        with self.lock:
            for d in self.deliveries:
                out.setdefault(d.body["id"], set()).add(d.key)
        return out

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
