"""Which Host names the dashboard answers to, and which sites may post to it.

DNS rebinding: a page on evil.example re-points its name at 127.0.0.1, and the
victim's browser then treats an anonymous loopback dashboard as evil.example's own
origin, free to read task arguments and post actions. Every such request still
carries ``Host: evil.example``, so answering only the dashboard's own names stops
it. Starlette's TrustedHostMiddleware does that check, but its refusal is a fixed
"Invalid host header" that tells nobody which name was refused or how to allow it.

Cross-site posts: a browser's POST names the page that sent it (``Origin``, else
``Referer``); one from any other site is refused before it reaches an action, as a
second lock beside the CSRF token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.dashboard import is_loopback

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::")
ALLOWED_HOSTS_ENV = "CONVEYOR_DASHBOARD_ALLOWED_HOSTS"


def split_hosts(value: str | Iterable[str] | None) -> list[str]:
    """``"a, b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (the setting and the option)."""
    if value is None:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    return [name.strip() for part in parts for name in part.split(",") if name.strip()]


def host_name(netloc: str) -> str | None:
    """The name in a ``Host`` header or URL authority, lower-case, without port or brackets.

    None when it is not a valid ``host[:port]``: the request is refused then.
    """
    if not netloc or any(c in netloc for c in "/?#@ \\"):
        return None
    try:
        parts = urlsplit("//" + netloc)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:  # also a bracketed name that is no IPv6 address
        return None
    return (parts.hostname or "").rstrip(".") or None


def bound_hosts(bind: str) -> list[str]:
    """The names a dashboard listening on ``bind`` answers to without --allowed-host.

    A loopback or every-interface bind is reached as localhost too, so the usual
    loopback names are in.
    """
    name = _normalize(bind)
    names = [name] if name else []
    if name in WILDCARD_BINDS or is_loopback(name):
        names += [n for n in LOOPBACK_NAMES if n != name]
    return names


class HostCheck:
    """ASGI middleware: 400 for a Host not in ``allowed``, 403 for a cross-site POST.

    ``allowed`` holds names (``dash.example``), ``*.example`` for every subdomain, or
    ``*`` for any name (behind a proxy that checks it). ``vouched`` are the names
    given by the user (option or setting), trusted as the origin of a POST on any
    port, as when a proxy rewrites the Host on the way in.
    """

    def __init__(self, app: ASGIApp, *, allowed: Sequence[str], vouched: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = _patterns(allowed)
        self.vouched = _patterns(vouched)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        name = host_name(host)
        if name is None or not _matches(name, self.allowed):
            fix = f"--allowed-host {name}" if name else "--allowed-host NAME"
            text = (
                f"Host {host!r} is not a name of this dashboard: if it is, serve it with {fix} "
                f"(or {ALLOWED_HOSTS_ENV})"
            )
            await PlainTextResponse(text, status_code=400)(scope, receive, send)
            return
        if scope.get("method") == "POST":
            source = headers.get("origin") or headers.get("referer")
            if source is not None and not self._same_site(source, host):
                text = f"cross-site request refused: {source!r} is not this dashboard"
                await PlainTextResponse(text, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _same_site(self, source: str, host: str) -> bool:
        # "null" (a sandboxed frame, a file:// page) has no authority: never this dashboard.
        netloc = urlsplit(source).netloc.lower()
        if netloc == host.lower():
            return True
        name = host_name(netloc)
        return name is not None and _matches(name, self.vouched)


def _patterns(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(_normalize(n) for n in names)


def _normalize(name: str) -> str:
    # A name given with its port ("dash.example:8080") allows that name on any port;
    # an IPv6 address may come bare ("::1", as --host takes it) or in brackets.
    name = name.strip().lower()
    if name == "*" or name.startswith("*."):
        return name
    if _is_ip(name.strip("[]")):
        return name.strip("[]")
    return host_name(name) or name


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(p == "*" or p == name or (p.startswith("*.") and name.endswith(p[1:])) for p in patterns)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
