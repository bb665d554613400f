"""Who may look and who may act: users, signed session cookies, CSRF tokens.

Two roles. Admins act (revoke, retry, purge, replay, edit schedules); viewers only
read, because a dashboard left open on a wall screen or shared with support staff
must not be one click from purging production. With no users configured the
dashboard has a single anonymous admin, which ``serve`` only allows on loopback.

Sessions are a signed cookie (HMAC-SHA256 over the payload): no server-side store,
so several dashboard processes behind one load balancer share logins when they
share ``dashboard_secret_key``. Scripts and Prometheus use HTTP basic auth instead
(accepted on ``/api/`` and ``/metrics`` only). The server never sends a basic-auth
challenge, so a browser never caches those credentials and never attaches them to
a forged cross-site request; that is why a request that carries them itself needs
no CSRF token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from conveyor.exceptions import ConfigurationError

ADMIN = "admin"
VIEWER = "viewer"
SESSION_COOKIE = "conveyor_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str  # ADMIN or VIEWER

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


ANONYMOUS_ADMIN = User("anonymous", ADMIN)


def parse_users(spec: str | Iterable[str] | None, role: str) -> dict[str, tuple[str, str]]:
    """``"alice:pw,bob:pw2"`` (or a list of such strings) -> {name: (password, role)}.

    The password is everything after the first colon, so it may hold colons but
    not commas (a comma separates users).

    Raises:
        ConfigurationError: an entry has no colon, or an empty name or password.
    """
    if spec is None:
        return {}
    parts = [spec] if isinstance(spec, str) else list(spec)
    users: dict[str, tuple[str, str]] = {}
    for part in parts:
        for entry in part.split(","):
            entry = entry.strip()
            if not entry:
                continue
            name, sep, password = entry.partition(":")
            if not sep or not name or not password:
                raise ConfigurationError(
                    f"dashboard {role} credentials must be user:password (comma-separated for several), "
                    f"got {_masked(entry)!r}"
                )
            users[name] = (password, role)
    return users


def _masked(entry: str) -> str:
    name, sep, _ = entry.partition(":")
    return f"{name}:***" if sep else entry


class Auth:
    """The dashboard's users and the key that signs their sessions.

    Args:
        admins: ``user:password`` entries with full rights (``--auth``).
        viewers: ``user:password`` entries that can only read (``--viewer-auth``).
        secret_key: signs session cookies and CSRF tokens; random per process when
            None (every restart logs everyone out, which is the safe default).
        session_max_age: seconds a login lasts.
    """

    def __init__(
        self,
        admins: str | Iterable[str] | None = None,
        viewers: str | Iterable[str] | None = None,
        *,
        secret_key: str | None = None,
        session_max_age: float = 12 * 3600,
    ) -> None:
        self._users = parse_users(viewers, VIEWER)
        # An admin listed as a viewer too is an admin: the stronger grant wins.
        self._users.update(parse_users(admins, ADMIN))
        self._key = (secret_key or secrets.token_hex(32)).encode()
        self.session_max_age = session_max_age
        # Login compares against this when the name is unknown, so a wrong name
        # costs the same time as a wrong password.
        self._dummy = secrets.token_hex(16)

    @property
    def enabled(self) -> bool:
        """False: no users were configured, everyone is the anonymous admin."""
        return bool(self._users)

    def user_names(self) -> list[str]:
        return sorted(self._users)

    def check(self, name: str, password: str) -> User | None:
        """The user when the password matches, else None (constant time per attempt)."""
        stored, role = self._users.get(name, (self._dummy, ""))
        ok = hmac.compare_digest(password.encode(), stored.encode())
        return User(name, role) if ok and role else None

    # -- sessions ---------------------------------------------------------------------
    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def make_session(self, user: User, *, now: float | None = None) -> str:
        """A cookie value naming the user, its expiry and a nonce the CSRF token binds to."""
        body = orjson.dumps(
            {
                "u": user.name,
                "r": user.role,
                "e": int((now or time.time()) + self.session_max_age),
                "n": secrets.token_hex(8),
            }
        )
        encoded = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{encoded}.{self._sign(encoded.encode())}"

    def read_session(self, cookie: str | None, *, now: float | None = None) -> tuple[User, str] | None:
        """(user, nonce) for a valid, unexpired cookie of a user that still exists."""
        if not cookie or "." not in cookie:
            return None
        encoded, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(encoded.encode())):
            return None
        try:
            data = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            name, role, expires, nonce = str(data["u"]), str(data["r"]), float(data["e"]), str(data["n"])
        except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return None
        if expires < (now or time.time()):
            return None
        # A user removed from the configuration (or demoted) loses access at once.
        current = self._users.get(name)
        if current is None or current[1] != role:
            return None
        return User(name, role), nonce

    def csrf_token(self, nonce: str) -> str:
        """The token a page embeds for its forms and fetches; bound to one session."""
        return self._sign(b"csrf:" + nonce.encode())

    def check_csrf(self, nonce: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(nonce))

    def check_basic(self, header: str | None) -> User | None:
        """The user named by an ``Authorization: Basic ...`` header, when it is valid."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        name, sep, password = decoded.partition(":")
        return self.check(name, password) if sep else None


def anonymous_nonce() -> str:
    """The CSRF nonce for the anonymous admin (no auth): fixed per process.

    A loopback dashboard without users still needs CSRF tokens: any web page the
    user visits could otherwise POST a purge to http://127.0.0.1:5555.
    """
    return _ANON_NONCE


_ANON_NONCE = os.urandom(8).hex()
