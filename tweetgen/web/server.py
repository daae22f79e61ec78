"""Listening: parse HOST:PORT, bind the socket, run uvicorn in the foreground or in a thread.

The socket is bound here rather than by uvicorn, so a port in use is a one-line error before
anything starts, and port 0 works (the log line tells the port the kernel chose).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from ..config import ConfigError, Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def parse_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:8080', 'localhost:8080' or '[::1]:8080' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"http address {address!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or 'localhost') is this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP (not 0): accepted connections inherit it, and asyncio then turns Nagle's
    # algorithm off on them; without that, a keep-alive answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "choose another host or port") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app: FastAPI) -> uvicorn.Server:
    # log_config=None keeps tweetgen's logging set-up; requests are counted in /metrics instead
    # of an access log line each. proxy_headers=False: the client address is the real peer's,
    # never one taken from X-Forwarded-For (the write rules in security.py decide about proxies).
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_keep_alive=5,
                            timeout_graceful_shutdown=5, proxy_headers=False)
    return uvicorn.Server(config)


def create(settings: Settings, host: str) -> FastAPI:
    from .app import create_app

    return create_app(settings, host)


def serve(settings: Settings, host: str, port: int) -> int:
    """`tweetgen serve`: run in the foreground until SIGINT or SIGTERM."""
    sock = bind(host, port)
    server = make_server(create(settings, host))
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again for the previous
    # handler: this one (a graceful stop too) makes that an exit 0, as for the daemon.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: setattr(server, "should_exit", True))
    log.info("serving the API and review page on %s", url_of(sock))
    server.run(sockets=[sock])
    return 0


class ServerThread:
    """uvicorn in a background thread (the daemon's `--http`, and the tests)."""

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        self.url = url_of(sock)
        self.server = make_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {self.url} did not start")
            time.sleep(0.01)
        log.info("serving the API and review page on %s", self.url)

    @classmethod
    def start(cls, settings: Settings, address: str) -> ServerThread:
        host, port = parse_address(address)
        sock = bind(host, port)
        return cls(create(settings, host), sock)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)
        if self.thread.is_alive():
            log.warning("the HTTP server on %s did not stop within %.0f s", self.url, STOP_TIMEOUT_S)
