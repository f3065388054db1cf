"""Who may use the web view, and which requests may change anything.

- Bound to loopback with no token: anyone on this box; the Host header must name a
  loopback address, so a web page elsewhere cannot reach the view by DNS rebinding.
- With a token (required for any other bind): `Authorization: Bearer <token>` (curl,
  Prometheus, Node-RED fetching a `clip_url`) or the session cookie the login form sets
  (HttpOnly, SameSite=Strict; its value is an HMAC of the token, never the token itself).
- State-changing requests (POST) authenticated by the cookie or by being local must also
  carry the page's CSRF token in `X-CSRF-Token` (only a script of the page itself can read
  it and set that header), and an `Origin`, when sent, must be this server's own.
  A bearer token is not ambient, so a POST with it needs neither.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from edge_monitor.config.sections import is_loopback

COOKIE_NAME = "edge_monitor_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(host_header: str) -> str:
    """The host part of a Host header (`[::1]:8080` -> `::1`, `box:80` -> `box`)."""
    host = host_header.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@dataclass
class Guard:
    """The checks of the module docstring, for one server's token (None: loopback only)."""

    token: str | None
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def session_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), b"edge-monitor web session",
                        hashlib.sha256).hexdigest()

    def host_allowed(self, host_header: str | None) -> bool:
        if self.token is not None:
            return True
        return bool(host_header) and is_loopback(host_name(host_header or ""))

    def bearer_ok(self, authorization: str | None) -> bool:
        if self.token is None or not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                  self.token.encode())

    def cookie_ok(self, cookie: str | None) -> bool:
        if self.token is None or not cookie:
            return False
        return hmac.compare_digest(cookie.encode(), self.session_value.encode())

    def login_ok(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.strip().encode(),
                                                              self.token.encode())

    def csrf_ok(self, header: str | None) -> bool:
        return bool(header) and hmac.compare_digest(header.encode(), self.csrf_token.encode())


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(origin: str | None, allowed: set[str]) -> bool:
    """Whether an Origin header is one of ours (absent: not a cross-site browser request;
    browsers send it with every cross-origin POST)."""
    if origin is None:
        return True
    return origin.lower() in allowed
