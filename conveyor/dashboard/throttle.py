"""Failed-login limits: per client address and per user name, over a sliding window.

A pause after each failure only slows one connection; a guesser opens many. So
failures are counted: after ``max_failures`` within ``window_s`` seconds from one
address, or against one user name from anywhere, further attempts are refused
(HTTP 429 with Retry-After) until the oldest of those failures leaves the window,
the right password included, or the lock would tell the guesser when it is right.
Counting per user stops a guesser spread over many addresses; counting per address
stops one address trying many names.

The counts live in the dashboard process: several dashboards behind a load
balancer each count their own, and a restart forgets them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

MAX_KEYS = 10_000  # distinct addresses and names tracked; a flood of fresh ones evicts the oldest


class LoginThrottle:
    """Failure counts per ``("client", address)`` and ``("user", name)``.

    Args:
        max_failures: failures in the window that lock the address or name; 0 turns it off.
        window_s: how long a failure counts.
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(
        self, max_failures: int = 5, window_s: float = 300.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str, user: str) -> float | None:
        """Seconds until ``user`` may try again from ``client``; None when it may now."""
        if self.max_failures <= 0:
            return None
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in (("client", client), ("user", user)):
                times = self._recent(key, now)
                if times is not None and len(times) >= self.max_failures:
                    wait = max(wait, times[-self.max_failures] + self.window_s - now)
        return wait if wait > 0 else None

    def failed(self, client: str, user: str) -> None:
        if self.max_failures <= 0:
            return
        now = self.clock()
        with self._lock:
            for key in (("client", client), ("user", user)):
                times = self._recent(key, now)
                if times is None:
                    self._evict(now)
                    times = self._failures[key] = deque(maxlen=self.max_failures)
                times.append(now)

    def succeeded(self, client: str, user: str) -> None:
        """A right password clears its address's count, so a user's typos do not pile up.

        Not the name's: a script polling with basic auth every few seconds would
        otherwise reset the count a guesser on other addresses runs up against it.
        """
        with self._lock:
            self._failures.pop(("client", client), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _evict(self, now: float) -> None:
        if len(self._failures) < MAX_KEYS:
            return
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= now - self.window_s]:
            del self._failures[key]
        while len(self._failures) >= MAX_KEYS:
            del self._failures[next(iter(self._failures))]


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))}
