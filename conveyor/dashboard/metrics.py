"""``/metrics``: Prometheus text format, computed when scraped.

Counters and the runtime histogram are kept by reading the task-event log forward
from where the last scrape stopped (the first scrape reads the retained history),
so they only grow while this process lives, as Prometheus expects of counters.
Queue depths and workers are read fresh from the broker on every scrape.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from conveyor.dashboard.data import DashboardData

EVENTS_LOG = "events"
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
EVENT_STATES = {
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
}  # dead-lettering says where the message went, not how the task ended: no state change
MAX_TRACKED_TASKS = 200_000  # the newest tasks whose current state the gauge counts
READ_BATCH = 5000


class _Histogram:
    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(RUNTIME_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(RUNTIME_BUCKETS, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip(RUNTIME_BUCKETS, self.counts, strict=False):
            running += n
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


class EventTally:
    """Event counts, runtimes and each task's latest state, read forward from the log."""

    def __init__(self) -> None:
        self.after = "0"
        self.events: Counter[tuple[str, str]] = Counter()
        self.histograms: dict[str, _Histogram] = {}
        self.latest: OrderedDict[str, tuple[float, str, str]] = OrderedDict()  # id -> (ts, name, state)
        self._lock = threading.Lock()

    def catch_up(self, broker: Any) -> None:
        with self._lock:
            while True:
                entries = broker.log_read(EVENTS_LOG, after=self.after, limit=READ_BATCH)
                for entry_id, raw in entries:
                    self.after = entry_id
                    try:
                        event = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(event, dict):
                        self._count(event)
                if len(entries) < READ_BATCH:
                    return

    def _count(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        task_id = event.get("id")
        name = str(event.get("name") or "")
        self.events[(kind, name)] += 1
        state = EVENT_STATES.get(kind)
        if state is None or not task_id:
            return
        runtime = event.get("runtime")
        if state in ("SUCCESS", "FAILURE") and isinstance(runtime, (int, float)):
            self.histograms.setdefault(name, _Histogram()).observe(float(runtime))
        ts = float(event.get("ts") or 0.0)
        previous = self.latest.get(task_id)
        if previous is not None:
            if previous[0] > ts:  # an older event delivered late must not undo a newer state
                return
            name = name or previous[1]
            self.latest.move_to_end(task_id)
        self.latest[task_id] = (ts, name, state)
        if len(self.latest) > MAX_TRACKED_TASKS:
            self.latest.popitem(last=False)

    def by_state(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter((state, name) for _, name, state in self.latest.values())


class ConveyorCollector:
    """A prometheus-client collector over one dashboard's data source."""

    def __init__(self, data: DashboardData) -> None:
        self.data = data
        self.tally = EventTally()

    def collect(self) -> Iterator[Metric]:
        broker = self.data.app.broker
        events_ok = True
        try:
            self.tally.catch_up(broker)
        except (AttributeError, NotImplementedError):
            events_ok = False  # a broker without the event log: queues and workers only

        if events_ok:
            tasks = GaugeMetricFamily(
                "conveyor_tasks",
                "Tasks by their latest state, over the retained events",
                labels=["state", "name"],
            )
            for (state, name), n in sorted(self.tally.by_state().items()):
                tasks.add_metric([state, name], n)
            yield tasks
            events = CounterMetricFamily(
                "conveyor_task_events", "Task events read since this process started", labels=["type", "name"]
            )
            for (kind, name), n in sorted(self.tally.events.items()):
                events.add_metric([kind, name], n)
            yield events
            runtime = HistogramMetricFamily(
                "conveyor_task_runtime_seconds", "Runtime of finished tasks", labels=["name"]
            )
            for name, hist in sorted(self.tally.histograms.items()):
                runtime.add_metric([name], hist.cumulative(), hist.total)
            yield runtime

        backlog = GaugeMetricFamily(
            "conveyor_queue_backlog", "Messages waiting in a queue (ready and delayed)", labels=["queue"]
        )
        messages = GaugeMetricFamily(
            "conveyor_queue_messages", "Messages per queue and state", labels=["queue", "state"]
        )
        for q in broker.queue_stats():
            backlog.add_metric([q.name], q.ready + q.delayed)
            for state in ("ready", "in_flight", "delayed", "dead"):
                messages.add_metric([q.name, state], getattr(q, state))
        yield backlog
        yield messages

        workers = self.data.workers()["workers"]
        yield GaugeMetricFamily(
            "conveyor_workers_online",
            "Workers whose heartbeat is current",
            value=sum(w["online"] for w in workers),
        )
        up = GaugeMetricFamily(
            "conveyor_worker_up", "1 when the worker's heartbeat is current", labels=["worker"]
        )
        for w in workers:
            up.add_metric([str(w.get("name"))], 1.0 if w["online"] else 0.0)
        yield up


def make_registry(data: DashboardData) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConveyorCollector(data))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
