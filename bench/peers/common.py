"""What every framework's task module shares: the completion counter and the Redis URL.

Each framework's no-op task calls :func:`mark_done` and nothing else, so every system pays
the same measuring cost: one Redis round trip per task (a Lua script: INCR, and the
epoch time of the first and of the latest task). The driver reads those times instead
of polling each framework's own state, which would cost each a different amount.
"""

from __future__ import annotations

import os
import time
from typing import Any

REDIS_URL = os.environ.get("PEERS_REDIS_URL", "")
COUNT_KEY = "peers:done"
FIRST_KEY = "peers:first"
LAST_KEY = "peers:last"

_MARK = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('SET', KEYS[2], ARGV[1]) end
redis.call('SET', KEYS[3], ARGV[1])
return n
"""

_client: Any = None
_script: Any = None
_pid = 0


def mark_done() -> None:
    """Count one finished task; one Redis round trip (a client per process: workers fork)."""
    global _client, _script, _pid
    if _client is None or _pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(REDIS_URL)
        _script = _client.register_script(_MARK)
        _pid = os.getpid()
    _script(keys=[COUNT_KEY, FIRST_KEY, LAST_KEY], args=[repr(time.time())])


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

    def round_trip(self, i: int, timeout: float) -> Any:
        """Send ``add(i, i)`` and wait for its result with the framework's own API."""
        raise NotImplementedError

    def reset(self) -> None:
        """Called after the driver emptied the store between phases."""

    def close(self) -> None:
        """Release connections."""
