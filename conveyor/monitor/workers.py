"""Worker heartbeats and the worker registry (kv "workers").

Each worker's main process (the prefork supervisor, or the one process of the
threads and solo pools) writes one record under its name every
``worker_heartbeat_interval`` seconds. A record is the whole state, not a delta,
so a reader needs only the latest one; ``sent_at`` and ``interval`` travel with it
so a reader decides "offline" (no heartbeat within 3 intervals) without knowing
the worker's settings. A warm shutdown writes a last record with
``"state": "offline"``, so a stopped worker shows offline at once rather than
after 3 intervals. Records live ``RECORD_TTL_S`` so that a dead worker stays
visible (offline) for a while and then disappears.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from conveyor.exceptions import BrokerError
from conveyor.monitor import WORKERS_NAMESPACE

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.worker")

OFFLINE_AFTER_INTERVALS = 3
RECORD_TTL_S = 3600.0
TRIM_EVERY_S = 60.0


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as its latest heartbeat describes it."""

    name: str
    hostname: str
    pid: int
    pool: str
    concurrency: int
    queues: list[str]
    active: int
    processed: int
    failed: int
    loadavg: list[float]
    started_at: float
    sent_at: float
    interval: float
    state: str = "online"  # "offline" after a warm shutdown's last heartbeat
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return (
            self.state != "offline" and time.time() - self.sent_at <= OFFLINE_AFTER_INTERVALS * self.interval
        )

    @property
    def uptime(self) -> float:
        return max(0.0, self.sent_at - self.started_at)

    @property
    def last_seen_s(self) -> float:
        return max(0.0, time.time() - self.sent_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hostname": self.hostname,
            "pid": self.pid,
            "pool": self.pool,
            "concurrency": self.concurrency,
            "queues": list(self.queues),
            "active": self.active,
            "processed": self.processed,
            "failed": self.failed,
            "loadavg": list(self.loadavg),
            "started_at": self.started_at,
            "sent_at": self.sent_at,
            "interval": self.interval,
            "uptime": self.uptime,
            "online": self.online,
            "state": self.state,
        }


_FIELDS = (
    "hostname",
    "pid",
    "pool",
    "concurrency",
    "queues",
    "active",
    "processed",
    "failed",
    "loadavg",
    "started_at",
    "sent_at",
    "interval",
    "state",
)


def parse_heartbeat(name: str, body: bytes) -> WorkerInfo | None:
    """A stored heartbeat as a WorkerInfo, or None when it cannot be read (never raises)."""
    try:
        data = orjson.loads(body)
        return WorkerInfo(
            name=name,
            hostname=str(data.get("hostname", "")),
            pid=int(data.get("pid", 0)),
            pool=str(data.get("pool", "")),
            concurrency=int(data.get("concurrency", 0)),
            queues=[str(q) for q in data.get("queues", [])],
            active=int(data.get("active", 0)),
            processed=int(data.get("processed", 0)),
            failed=int(data.get("failed", 0)),
            loadavg=[float(x) for x in data.get("loadavg", [])],
            started_at=float(data.get("started_at", 0.0)),
            sent_at=float(data.get("sent_at", 0.0)),
            interval=float(data.get("interval", 2.0)) or 2.0,
            state=str(data.get("state", "online")),
            extra={k: v for k, v in data.items() if k not in _FIELDS},
        )
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return None


def list_workers(app: Conveyor) -> list[WorkerInfo]:
    """Every worker that heartbeated within the last hour, online first, then by name."""
    workers = [
        info
        for name, body in app.broker.kv_items(WORKERS_NAMESPACE).items()
        if (info := parse_heartbeat(name, body)) is not None
    ]
    workers.sort(key=lambda w: (not w.online, w.name))
    return workers


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class Heartbeat:
    """The thread that publishes a worker's heartbeat (and trims old events).

    ``snapshot`` returns the live fields (active, processed, failed); the rest is
    fixed at start. Failures to write are logged once per outage, never raised: a
    broker hiccup must not stop the worker, and the next beat repairs the record.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        name: str,
        pool: str,
        concurrency: int,
        queues: list[str],
        snapshot: Callable[[], dict[str, Any]],
        interval: float | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.interval = float(interval if interval is not None else app.conf.worker_heartbeat_interval)
        self.static: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "pool": pool,
            "concurrency": concurrency,
            "queues": list(queues),
            "started_at": time.time(),
            "interval": self.interval,
        }
        self.snapshot = snapshot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._last_trim = 0.0

    def record(self, state: str = "online") -> dict[str, Any]:
        data = dict(self.static)
        data.update(self.snapshot())
        data["loadavg"] = loadavg()
        data["sent_at"] = time.time()
        data["state"] = state
        return data

    def beat(self, state: str = "online") -> None:
        try:
            self.app.broker.kv_set(
                WORKERS_NAMESPACE, self.name, orjson.dumps(self.record(state)), ttl_s=RECORD_TTL_S
            )
        except BrokerError as exc:
            if not self._failing:
                log.warning("Cannot publish the heartbeat: %s (will keep trying)", exc)
            self._failing = True
            return
        if self._failing:
            log.info("Heartbeats published again")
        self._failing = False

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
            now = time.monotonic()
            if now - self._last_trim >= TRIM_EVERY_S:
                self._last_trim = now
                self._trim()

    def _trim(self) -> None:
        from conveyor.monitor.events import trim_events

        try:
            trim_events(self.app)
        except BrokerError as exc:
            log.debug("Cannot trim old task events: %s", exc)

    def stop(self, *, offline: bool = True) -> None:
        """Stop beating; with ``offline`` write the last record saying so (warm shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if offline:
            self.beat("offline")
