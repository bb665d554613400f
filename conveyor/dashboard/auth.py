"""Who may look and who may act: users, signed session cookies, CSRF tokens.

Two roles. Admins act (revoke, retry, purge, replay, edit schedules); viewers only
read, because a dashboard left open on a wall screen or shared with support staff
must not be one click from purging production. With no users configured the
dashboard has a single anonymous admin, which ``serve`` only allows on loopback.

Sessions are a signed cookie (HMAC-SHA256 over the payload) plus a record in the
broker's kv store (namespace ``dashboard-sessions``, expiring with the login), so
several dashboard processes behind one load balancer share logins when they share
``dashboard_secret_key``, and logging out ends the session everywhere: the cookie
alone, kept by whoever copied it, no longer works. The cookie also carries a
fingerprint of the user's credentials as configured, so changing a password (or
removing the user) ends every session made with the old one. Scripts and Prometheus use HTTP basic auth instead
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
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import orjson

from conveyor.dashboard import passwords
from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.brokers.base import AdminBroker

ADMIN = "admin"
VIEWER = "viewer"
SESSION_COOKIE = "conveyor_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSIONS_NAMESPACE = "dashboard-sessions"


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
    not commas (a comma separates users). A password of the form
    ``scrypt$N$R$P$SALT$HASH`` is a hash (``conveyor hash-password``), not the password.

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


class SessionStore(Protocol):
    """Where live sessions are recorded; keys are digests of the session nonce."""

    def add(self, key: str, ttl_s: float) -> None: ...
    def exists(self, key: str) -> bool: ...
    def remove(self, key: str) -> None: ...


class MemorySessions:
    """Sessions of one process: for an ``Auth`` used without a dashboard app."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, key: str, ttl_s: float) -> None:
        with self._lock:
            now = time.time()
            self._expiry = {k: e for k, e in self._expiry.items() if e > now}
            self._expiry[key] = now + ttl_s

    def exists(self, key: str) -> bool:
        return self._expiry.get(key, 0.0) > time.time()

    def remove(self, key: str) -> None:
        with self._lock:
            self._expiry.pop(key, None)


class BrokerSessions:
    """Sessions in the broker's kv store, shared by every dashboard on the broker."""

    def __init__(self, broker: AdminBroker) -> None:
        self.broker = broker

    def add(self, key: str, ttl_s: float) -> None:
        self.broker.kv_set(SESSIONS_NAMESPACE, key, b"1", ttl_s=ttl_s)

    def exists(self, key: str) -> bool:
        return self.broker.kv_get(SESSIONS_NAMESPACE, key) is not None

    def remove(self, key: str) -> None:
        self.broker.kv_delete(SESSIONS_NAMESPACE, key)


class Auth:
    """The dashboard's users and the key that signs their sessions.

    Args:
        admins: ``user:password`` entries with full rights (``--auth``).
        viewers: ``user:password`` entries that can only read (``--viewer-auth``).
        auth_file: a file of ``user:hash[:viewer]`` lines (``--auth-file``, see
            ``conveyor.dashboard.passwords``); its users join the others.
        secret_key: signs session cookies and CSRF tokens; random per process when
            None (every restart logs everyone out, which is the safe default).
        session_max_age: seconds a login lasts.
    """

    def __init__(
        self,
        admins: str | Iterable[str] | None = None,
        viewers: str | Iterable[str] | None = None,
        *,
        auth_file: str | os.PathLike[str] | None = None,
        secret_key: str | None = None,
        session_max_age: float = 12 * 3600,
    ) -> None:
        self._users = parse_users(viewers, VIEWER)
        # An admin listed as a viewer too is an admin: the stronger grant wins.
        self._users.update(parse_users(admins, ADMIN))
        if auth_file:
            self._users.update(passwords.read_auth_file(auth_file))
        for name, (secret, _) in self._users.items():
            if passwords.is_hash(secret):
                try:
                    passwords.parse_hash(secret)
                except ValueError as exc:
                    raise ConfigurationError(f"dashboard user {name!r}: bad password hash: {exc}") from None
        self._key = (secret_key or secrets.token_hex(32)).encode()
        self.session_max_age = session_max_age
        self.sessions: SessionStore = MemorySessions()
        # Login checks against these when the name is unknown, so a wrong name
        # costs the same time as a wrong password.
        self._dummy = secrets.token_hex(16)
        self._dummy_hash = passwords.dummy_hash()
        self._hashed = any(passwords.is_hash(secret) for secret, _ in self._users.values())
        # name -> HMAC of the password last verified against its hash: scripts send
        # basic auth with every request, and scrypt is slow on purpose.
        self._verified: dict[str, bytes] = {}

    @property
    def enabled(self) -> bool:
        """False: no users were configured, everyone is the anonymous admin."""
        return bool(self._users)

    @property
    def has_admin(self) -> bool:
        return any(role == ADMIN for _, role in self._users.values())

    def user_names(self) -> list[str]:
        return sorted(self._users)

    def check(self, name: str, password: str) -> User | None:
        """The user when the password matches, else None (same cost for unknown names)."""
        known = name in self._users
        stored, role = self._users.get(name, (self._dummy_hash if self._hashed else self._dummy, ""))
        if passwords.is_hash(stored):
            ok = self._check_hash(name, password, stored)
        else:
            ok = hmac.compare_digest(password.encode(), stored.encode())
        return User(name, role) if ok and known else None

    def _check_hash(self, name: str, password: str, stored: str) -> bool:
        mark = hmac.new(self._key, f"verified:{name}\0{stored}\0{password}".encode(), hashlib.sha256).digest()
        remembered = self._verified.get(name)
        if remembered is not None and hmac.compare_digest(remembered, mark):
            return True
        if not passwords.verify(password, stored):
            return False
        if name in self._users:
            self._verified[name] = mark
        return True

    def _fingerprint(self, name: str) -> str:
        """Changes when the user's password or role changes, which ends their sessions."""
        stored, role = self._users.get(name, ("", ""))
        return self._sign(f"credentials:{name}\0{role}\0{stored}".encode())[:32]

    # -- sessions ---------------------------------------------------------------------
    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def make_session(self, user: User, *, now: float | None = None) -> str:
        """A cookie value naming the user, its expiry and a nonce the CSRF token binds to;
        the session is recorded in ``sessions`` until it expires or ends."""
        nonce = secrets.token_hex(16)
        self.sessions.add(_session_key(nonce), self.session_max_age)
        body = orjson.dumps(
            {
                "u": user.name,
                "r": user.role,
                "e": int((now or time.time()) + self.session_max_age),
                "n": nonce,
                "c": self._fingerprint(user.name),
            }
        )
        encoded = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{encoded}.{self._sign(encoded.encode())}"

    def read_session(self, cookie: str | None, *, now: float | None = None) -> tuple[User, str] | None:
        """(user, nonce) for a valid, unexpired, not ended session of a user whose
        credentials are unchanged.

        Raises:
            BrokerError: the session store cannot be reached (refusing is then the
                caller's call, not a silent logout).
        """
        data = self._session_data(cookie)
        if data is None:
            return None
        name, role, expires, nonce, fingerprint = data
        if expires < (now or time.time()):
            return None
        # A user removed from the configuration, demoted, or with a new password
        # loses access at once.
        current = self._users.get(name)
        if current is None or current[1] != role:
            return None
        if not hmac.compare_digest(fingerprint, self._fingerprint(name)):
            return None
        if not self.sessions.exists(_session_key(nonce)):
            return None  # logged out
        return User(name, role), nonce

    def end_session(self, cookie: str | None) -> None:
        """Log out: the cookie stops working on every dashboard sharing the store."""
        data = self._session_data(cookie)
        if data is not None:
            self.sessions.remove(_session_key(data[3]))

    def _session_data(self, cookie: str | None) -> tuple[str, str, float, str, str] | None:
        if not cookie or "." not in cookie:
            return None
        encoded, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(encoded.encode())):
            return None
        try:
            data = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            return str(data["u"]), str(data["r"]), float(data["e"]), str(data["n"]), str(data["c"])
        except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return None

    def csrf_token(self, nonce: str) -> str:
        """The token a page embeds for its forms and fetches; bound to one session."""
        return self._sign(b"csrf:" + nonce.encode())

    def check_csrf(self, nonce: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(nonce))

    def check_basic(self, header: str | None) -> User | None:
        """The user named by an ``Authorization: Basic ...`` header, when it is valid."""
        credentials = parse_basic(header)
        return self.check(*credentials) if credentials is not None else None


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(name, password) from an ``Authorization: Basic ...`` header; None when there is none."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")  # sent, but unreadable: a failed attempt
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else (name, "")


def _session_key(nonce: str) -> str:
    # The store holds a digest, so reading the broker gives no usable CSRF nonce.
    return hashlib.sha256(nonce.encode()).hexdigest()


def anonymous_nonce() -> str:
    """The CSRF nonce for the anonymous admin (no auth): fixed per process.

    A loopback dashboard without users still needs CSRF tokens: any web page the
    user visits could otherwise POST a purge to http://127.0.0.1:5555.
    """
    return _ANON_NONCE


_ANON_NONCE = os.urandom(8).hex()
