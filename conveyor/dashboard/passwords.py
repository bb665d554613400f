"""Hashed dashboard passwords (stdlib scrypt) and the ``--auth-file`` that holds them.

A hash reads ``scrypt$N$R$P$SALT$HASH``: scrypt's cost parameters in decimal, then
the salt and the 32-byte derived key in unpadded URL-safe base64, so it holds no
``:`` and fits a ``user:hash`` line. ``conveyor hash-password USER`` prints such a
line, reading the password from a prompt or stdin: a password on a command line is
visible to every local user in ``ps`` and lands in shell histories.

The file has one user a line, ``user:hash`` for an admin or ``user:hash:viewer`` for
a read-only user (``:admin`` is accepted too); blank lines and ``#`` comments are
skipped. Plain passwords are refused there: the file exists so that none is stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from conveyor.exceptions import ConfigurationError

SCHEME = "scrypt"
# 16 MiB and a few tens of milliseconds per check: the interactive-login
# parameters scrypt's author recommends.
DEFAULT_N = 2**14
DEFAULT_R = 8
DEFAULT_P = 1
MAX_N = 2**20  # a file asking for more would let one login exhaust the memory
KEY_BYTES = 32
ROLES = ("admin", "viewer")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * r * (n + p + 2), dklen=KEY_BYTES
    )


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """``scrypt$N$R$P$SALT$HASH`` for ``password``, with a fresh random salt."""
    salt = os.urandom(16)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(_derive(password, salt, n, r, p))}"


def is_hash(secret: str) -> bool:
    return secret.startswith(SCHEME + "$")


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, key) of a hash.

    Raises:
        ValueError: not a hash this module wrote.
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not scrypt$N$R$P$SALT$HASH")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ValueError("not scrypt$N$R$P$SALT$HASH") from None
    if n < 2 or n > MAX_N or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or not salt or not key:
        raise ValueError(f"scrypt parameters out of range (N a power of two up to {MAX_N}, R 1-64, P 1-16)")
    return n, r, p, salt, key


def verify(password: str, encoded: str) -> bool:
    """True when ``password`` matches the hash (one scrypt run, constant-time compare)."""
    try:
        n, r, p, salt, key = parse_hash(encoded)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(password, salt, n, r, p), key)


def dummy_hash() -> str:
    """A well-formed hash nothing matches: checked for unknown names, so they cost a run too."""
    return f"{SCHEME}${DEFAULT_N}${DEFAULT_R}${DEFAULT_P}${_b64(bytes(16))}${_b64(os.urandom(KEY_BYTES))}"


def read_auth_file(path: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """{name: (hash, role)} from an auth file.

    Raises:
        ConfigurationError: the file cannot be read, or a line is not ``user:hash[:role]``
            with a scrypt hash (the message names the line, never its secret).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the dashboard auth file {path}: {exc.strerror}") from None
    users: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        secret, _, role = rest.partition(":")
        role = role or "admin"
        where = f"{path}, line {number} (user {name!r})"
        if not name or not is_hash(secret):
            raise ConfigurationError(
                f"{where}: expected user:scrypt$N$R$P$SALT$HASH[:viewer]; "
                "make the line with `conveyor hash-password USER`"
            )
        try:
            parse_hash(secret)
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        if role not in ROLES:
            raise ConfigurationError(f"{where}: the role must be admin or viewer, got {role!r}")
        users[name] = (secret, role)
    return users
