"""Who may write, which Host names are answered, and headers that keep untrusted text inert.

Every request must name an allowed host in its Host header (setting `http_allowed_hosts`,
loopback names by default), or it is answered 400: a page of another site that points its own
DNS name at 127.0.0.1 can then neither read nor write (DNS rebinding).

Writes (review, corpus, generate) need `Authorization: Bearer <api_token>` when a token is
configured (setting `api_token`, env TWEETGEN_API_TOKEN). Without one, writes are allowed only
on a loopback server, from a loopback client, and not through a proxy: a request that carries
`Forwarded`, `X-Forwarded-*`, `X-Real-IP` or `Via` came through one, and behind a proxy on the
same machine every client looks like 127.0.0.1. Writes must be JSON, which a cross-site form
cannot send without the browser asking first.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import ConfigError
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


# Headers a proxy adds: their presence means the peer address is the proxy's, not the client's.
PROXY_HEADERS = ("forwarded", "via", "x-real-ip")
PROXY_HEADER_PREFIX = "x-forwarded-"


def proxy_header(headers: Iterable[str]) -> str | None:
    """The first header name among `headers` that a proxy adds, or None."""
    for name in headers:
        name = name.lower()
        if name in PROXY_HEADERS or name.startswith(PROXY_HEADER_PREFIX):
            return name
    return None


def allowed_hosts(names: Iterable[str], bind_host: str) -> list[str]:
    """The Host names TrustedHostMiddleware accepts: the setting's, plus the address the server
    listens on (an IP literal, which no other site's DNS name can be), IPv6 ones in brackets."""
    hosts = list(names)
    if bind_host not in ("", "0.0.0.0", "::"):
        hosts.append(bind_host)
    out = []
    for host in hosts:
        host = host.strip().lower()
        if _is_ipv6(host):
            host = f"[{host}]"  # as it appears in a Host header
        wildcard_ok = host == "*" or host.startswith("*.") or not host.startswith("*")
        port = ":" in host and not (host.startswith("[") and host.endswith("]"))
        if not host or "*" in host[1:] or not wildcard_ok or port:
            raise ConfigError(f"http_allowed_hosts: {host!r} is not a host name (without a port), "
                              "an address or a pattern like '*.example.com'")
        out.append(host)
    return out


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


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
        proxied = proxy_header(request.headers.keys())
        if proxied is not None:
            raise ApiError(403, f"writes through a proxy (header {proxied}) need the api_token: "
                                "set api_token (or TWEETGEN_API_TOKEN) and send it", proxied)


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
