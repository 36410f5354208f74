"""Where endpoint URLs are checked: https only, no redirects, and no internal addresses.

An endpoint is registered by whoever holds API_TOKEN, but a URL is still a
way to make this service send requests inside its own network (a cloud's
metadata address, the database, an admin page). So, unless the operator
says otherwise for local work (ENDPOINTS_ALLOW_HTTP, ENDPOINTS_ALLOW_PRIVATE):
a URL must be https; its host is resolved at every delivery and the
request goes to that very address (no second lookup a DNS answer could
change in between), which must be a public one; redirects are never
followed; and what an endpoint answers is never shown, only its status.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_CHARS = 2000


class NotAllowed(ValueError):
    """A URL or address this service will not send to; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the URL's parts, and the address its host resolved to."""

    scheme: str
    host: str
    port: int
    path: str  # with its query
    address: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: str, *, allow_http: bool, allow_private: bool) -> str:
    """The URL if this service may send to it; else NotAllowed saying why."""
    if len(url) > MAX_URL_CHARS:
        raise NotAllowed(f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise NotAllowed("the URL holds spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not one
    except ValueError as exc:
        raise NotAllowed(f"the URL cannot be read ({exc})") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme.lower() not in schemes:
        raise NotAllowed(
            "the URL must be https"
            + ("" if allow_http else " (ENDPOINTS_ALLOW_HTTP=true allows http, for local work)")
        )
    if not parts.hostname:
        raise NotAllowed("the URL names no host")
    if parts.fragment:
        raise NotAllowed("the URL has a fragment (#...), which is never sent")
    literal = _ip(parts.hostname)
    if not allow_private and (
        (literal is not None and not literal.is_global) or parts.hostname == "localhost"
    ):
        raise NotAllowed(_private(parts.hostname))
    return url


def resolve(url: str, *, allow_private: bool) -> Target:
    """Resolve the URL's host now; NotAllowed if it is not public (unless allowed)."""
    parts = urlsplit(url)
    host = parts.hostname
    assert host is not None  # checked when registered
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise NotAllowed(f"cannot resolve {host} ({exc})") from None
    address = str(found[0][4][0])
    ip = _ip(address)
    if not allow_private and (ip is None or not ip.is_global):
        raise NotAllowed(_private(f"{host} ({address})"))
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port, path, address)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def _private(what: str) -> str:
    return (
        f"{what} is not a public address (ENDPOINTS_ALLOW_PRIVATE=true allows it, for local work)"
    )
