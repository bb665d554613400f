"""What every framework's task module shares: the completion counter, the start stamp
and the Redis URL.

Each framework's no-op task calls :func:`mark_done` and nothing else, so every system pays
the same measuring cost: one Redis round trip per task (a Lua script: INCR, and the
epoch time of the first and of the latest task), over a plain socket. The driver reads those times instead
of polling each framework's own state, which would cost each a different amount.

Each framework's ``stamp(i)`` task calls :func:`mark_started` first thing: it reads
``CLOCK_MONOTONIC`` (one clock for every process on the machine, the one the driver read
before sending) and pushes ``"<i> <time>"`` to a list the driver waits on, so the
round trip "send .. task running" is timed by the task itself, not by each framework's
result API.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

REDIS_URL = os.environ.get("PEERS_REDIS_URL", "")
COUNT_KEY = "peers:done"
FIRST_KEY = "peers:first"
LAST_KEY = "peers:last"
STARTED_KEY = "peers:started"

_MARK = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('SET', KEYS[2], ARGV[1]) end
redis.call('SET', KEYS[3], ARGV[1])
return n
"""

_sock: socket.socket | None = None
_pid = 0


def _command(*args: str) -> bytes:
    """One RESP array: the counter speaks Redis's protocol itself, so that it adds no
    import (redis-py costs ~20 MiB per process) to a worker that would not load it."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _call(*args: str) -> None:
    """One command, its integer reply awaited (a connection per process: workers fork)."""
    global _sock, _pid
    if _sock is None or _pid != os.getpid():
        where = urlsplit(REDIS_URL)
        _sock = socket.create_connection((where.hostname or "127.0.0.1", where.port or 6379))
        _sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pid = os.getpid()
    _sock.sendall(_command(*args))
    reply = b""
    while not reply.endswith(b"\r\n"):  # ":<count>\r\n"
        chunk = _sock.recv(64)
        if not chunk:
            raise RuntimeError("peers counter: Redis closed the connection")
        reply += chunk
    if not reply.startswith(b":"):
        raise RuntimeError(f"peers counter: unexpected reply {reply!r}")


def mark_done() -> None:
    """Count one finished task: one round trip."""
    _call("EVAL", _MARK, "3", COUNT_KEY, FIRST_KEY, LAST_KEY, repr(time.time()))


def mark_started(i: int) -> None:
    """Record that ``stamp(i)`` is running, with the clock read before anything else."""
    started = time.monotonic()
    _call("RPUSH", STARTED_KEY, f"{i} {started!r}")


class Peer:
    """One framework as the driver sees it: how to send, how to start workers, how to wait.

    A subclass lives beside its framework's tasks (``<framework>_peer.py``) and is built
    in the driver process only; worker processes import the same module for its tasks.
    Every method talks to the one private Redis (``PEERS_REDIS_URL``) the driver started.
    """

    name = ""
    #: The framework's bulk-send call, as shown in the table; "" when it has none.
    bulk_api = ""
    #: How this framework's workers are run (shown under the table).
    notes = ""

    def enqueue(self, n: int, results: bool = False) -> None:
        """Send ``noop(i)`` for i in range(n), one framework call per task.

        ``results``: send ``echo(i)`` instead, the same no-op but its result is stored.
        """
        raise NotImplementedError

    def enqueue_bulk(self, n: int, results: bool = False) -> None:
        """Send the same n tasks with the framework's bulk API (only when ``bulk_api``)."""
        raise NotImplementedError

    def queued(self) -> int:
        """Messages waiting in the queue: the driver checks every enqueue really landed."""
        raise NotImplementedError

    def worker_commands(self) -> list[list[str]]:
        """The command(s) that together run two worker processes (cwd: bench/peers)."""
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        """Extra environment for the worker commands."""
        return {}

    #: False for a system that keeps nothing in Redis (its memory row is n/a).
    uses_redis = True

    def round_trip(self, i: int, timeout: float) -> Any:
        """Send ``add(i, i)`` and wait for its result with the framework's own API."""
        raise NotImplementedError

    def send_add(self, x: int, y: int) -> None:
        """Send ``add(x, y)`` with the one-call API and return: the memory row queues these."""
        raise NotImplementedError

    def send_stamp(self, i: int) -> None:
        """Send ``stamp(i)`` (results stored, as for ``add``) with the one-call API and
        return; the task reports its own start with :func:`mark_started`."""
        raise NotImplementedError

    def reset(self) -> None:
        """Called after the driver emptied the store between phases."""

    def close(self) -> None:
        """Release connections."""
