"""The broker is down: one message for pages and the API, one log line per try.

Every page and API call reads the broker, so while it is down each request fails
the same way. Logging a traceback per request buries the one line that matters
(a wall of browsers refreshing every 2 s writes hundreds), so failures are logged
at most once per ``log_every_s``, with the count of those left out, and once more
when the broker answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from conveyor.brokers.base import mask_url

log = logging.getLogger("conveyor.dashboard")
LOG_EVERY_S = 30.0


class BrokerOutage:
    def __init__(
        self,
        broker_url: str,
        *,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.message = f"broker unreachable: {mask_url(broker_url)}, retrying"
        self.log_every_s = log_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._down = False
        self._logged_at: float | None = None
        self._unlogged = 0

    def failed(self, exc: BaseException) -> str:
        """Record a failed try; returns the message for the page or the API."""
        now = self.clock()
        with self._lock:
            self._down = True
            if self._logged_at is not None and now - self._logged_at < self.log_every_s:
                self._unlogged += 1
                return self.message
            skipped, self._unlogged, self._logged_at = self._unlogged, 0, now
        more = f"; {skipped} more failed request(s) since the last line" if skipped else ""
        log.warning("dashboard: %s (%s)%s", self.message, exc, more)
        return self.message

    def succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            was_down, self._down, self._logged_at, self._unlogged = self._down, False, None, 0
        if was_down:
            log.info("dashboard: the broker answers again")
