"""Lua scripts as files: a ``Script`` is one ``lua/<name>.lua`` of a package, its
shared snippets included, named by SHA-1 for EVALSHA."""

from __future__ import annotations

import re


def _sha1_hex(data: bytes) -> str:
    """SHA-1 for naming scripts, preferably without OpenSSL: hashlib loads libcrypto,
    about 4 MiB of resident memory in every worker process, for this alone."""
    try:
        from _sha1 import sha1  # type: ignore[import-not-found]  # CPython's own SHA-1
    except ImportError:  # pragma: no cover - an interpreter without it
        from hashlib import sha1
    digest: str = sha1(data).hexdigest()
    return digest


_INCLUDE = re.compile(r"^--#(\w+)$", re.MULTILINE)


class Script:
    """A Lua script, a ``.lua`` file in a package's ``lua`` folder, run by SHA and
    loaded again when Redis lost it (restart, SCRIPT FLUSH).

    A line ``--#name`` in a file stands for the file ``name.lua`` beside it (shared
    snippets). The header says what the script does, its ``KEYS`` and its ``ARGV``;
    every key it touches is passed in KEYS, or said there when its name comes from
    data read inside the script.

    Attributes:
        name: the file's name without ``.lua``.
        source: the Lua text as sent to Redis, snippets included.
        keys: the header's ``KEYS:`` paragraph: what the caller passes, in order.
        sha: what EVALSHA names it by.
    """

    def __init__(self, package: str, name: str) -> None:
        self.name = name
        self.source = _lua_source(package, name)
        self.keys = _declared(self.source, "KEYS")
        self.sha = _sha1_hex(self.source.encode())

    def __repr__(self) -> str:
        return f"<Script {self.name}>"


def _lua_source(package: str, name: str, seen: tuple[str, ...] = ()) -> str:
    from importlib.resources import files

    if name in seen:
        raise RuntimeError(f"Lua snippet {name} includes itself")
    text = files(package).joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: _lua_source(package, m.group(1), (*seen, name)).rstrip("\n"), text)


def _declared(source: str, what: str) -> str:
    """A header paragraph (``-- KEYS: ...`` and its continuation lines) as one line."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"-- {what}:"):
            text = [line[len(what) + 4 :].strip()]
            for more in lines[i + 1 :]:
                if not more.startswith("-- ") or re.match(r"-- [A-Z][A-Za-z ]*:", more):
                    break
                text.append(more[3:].strip())
            return " ".join(text)
    return ""
