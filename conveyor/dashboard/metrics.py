"""``/metrics``: Prometheus text format, computed when scraped.

Counters and the runtime histogram are fed by the dashboard's task index as it reads
the event log (its first read is the retained history), so they only grow while
this process lives, as Prometheus expects of counters, and the log is read once for
the pages and the metrics alike. Tasks by state come from the index, so they are
the numbers the pages show. Queue depths and workers are read fresh from the broker
on every scrape.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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

RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
FINISHED_EVENTS = ("task-succeeded", "task-failed")


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
    """Event counts and runtimes, fed with every event the task index reads."""

    def __init__(self) -> None:
        self.events: Counter[tuple[str, str]] = Counter()
        self.histograms: dict[str, _Histogram] = {}
        self._lock = threading.Lock()

    def observe(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        name = str(event.get("name") or "")
        runtime = event.get("runtime")
        with self._lock:
            self.events[(kind, name)] += 1
            if kind in FINISHED_EVENTS and isinstance(runtime, (int, float)):
                self.histograms.setdefault(name, _Histogram()).observe(float(runtime))

    def snapshot(self) -> tuple[list[tuple[tuple[str, str], int]], list[tuple[str, _Histogram]]]:
        with self._lock:
            return sorted(self.events.items()), sorted(self.histograms.items())


class ConveyorCollector:
    """A prometheus-client collector over one dashboard's data source."""

    def __init__(self, data: DashboardData) -> None:
        self.data = data
        self.tally = EventTally()
        data.add_listener(self.tally.observe)

    def collect(self) -> Iterator[Metric]:
        broker = self.data.app.broker
        try:
            index = self.data.index(fresh=True)  # a scrape counts every event written before it
        except (AttributeError, NotImplementedError):
            index = None  # a broker without the event log: queues and workers only

        if index is not None:
            tasks = GaugeMetricFamily(
                "conveyor_tasks",
                "Tasks by their latest state, over the retained events",
                labels=["state", "name"],
            )
            for (state, name), n in sorted(index.counts_by_name().items()):
                tasks.add_metric([state, name], n)
            yield tasks
            counted, histograms = self.tally.snapshot()
            events = CounterMetricFamily(
                "conveyor_task_events", "Task events read since this process started", labels=["type", "name"]
            )
            for (kind, name), n in counted:
                events.add_metric([kind, name], n)
            yield events
            runtime = HistogramMetricFamily(
                "conveyor_task_runtime_seconds", "Runtime of finished tasks", labels=["name"]
            )
            for name, hist in histograms:
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
