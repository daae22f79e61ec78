"""Who may write, and headers that keep untrusted text inert in the browser.

Writes (review, corpus, generate) need `Authorization: Bearer <api_token>` when a token is
configured (setting `api_token`, env TWEETGEN_API_TOKEN). Without one, writes are allowed only
on a loopback server, from a loopback client, to a loopback host name (the last refuses a page
of another site that points its own DNS name at 127.0.0.1). Writes must be JSON, which a
cross-site form cannot send without the browser asking first.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .server import is_loopback

bearer = HTTPBearer(auto_error=False, description="the api_token setting (env TWEETGEN_API_TOKEN)")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]

# Only this server's own files run in its pages: untrusted text that reached the markup would
# still not execute, load or submit anything.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _host_name(host_header: str) -> str:
    """'127.0.0.1:8080' -> '127.0.0.1', '[::1]:8080' -> '::1', 'localhost' -> 'localhost'."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class WriteGuard:
    """A FastAPI dependency on every write route; the bearer scheme shows in OpenAPI."""

    def __init__(self, token: str, bind_host: str) -> None:
        self.token = token
        self.bind_host = bind_host

    @property
    def writes_open(self) -> bool:
        """Whether writes can be allowed at all (a token, or a loopback server)."""
        return bool(self.token) or is_loopback(self.bind_host)

    def __call__(self, request: Request, credentials: BearerCredentials) -> None:
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "writes must be sent as Content-Type: application/json", "content-type")
        if self.token:
            given = credentials.credentials if credentials is not None else ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                raise ApiError(401, "writes need the header Authorization: Bearer <api_token>",
                               "authorization", {"WWW-Authenticate": "Bearer"})
            return
        if not is_loopback(self.bind_host):
            raise ApiError(403, f"writes are refused: the server listens on {self.bind_host}, not "
                                "loopback, and no api_token is set (set it, or TWEETGEN_API_TOKEN)")
        client = request.client.host if request.client else ""
        if not is_loopback(client):
            raise ApiError(403, f"writes without an api_token are accepted from loopback only, "
                                f"not from {client}")
        host = _host_name(request.headers.get("host", ""))
        if not is_loopback(host):
            raise ApiError(403, f"writes without an api_token need a loopback Host header "
                                f"(127.0.0.1, localhost), not {host!r}", "host")


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)
