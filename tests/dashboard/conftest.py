"""Shared helpers for the dashboard tests: an app on a private SQLite file, events, dead letters."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from conveyor import Conveyor
from conveyor.message import Message, decode

if TYPE_CHECKING:
    from starlette.testclient import TestClient


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    application = Conveyor("dash", broker=f"sqlite:///{tmp_path / 'broker.sqlite3'}", set_as_current=False)
    try:
        yield application
    finally:
        application.close()


def client(app: Conveyor, **options: Any) -> TestClient:
    with warnings.catch_warnings():
        # Starlette 1.x announces a move to httpx2; httpx still works and is what we ship with.
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from conveyor.dashboard import create_app

    # The Host of a dashboard on 127.0.0.1:5555 (TestClient's own "testserver" is refused).
    return TestClient(create_app(app, **options), base_url="http://127.0.0.1:5555", follow_redirects=False)


def emit(app: Conveyor, *events: dict[str, Any]) -> None:
    """Append task events the way workers do (one JSON object per log entry)."""
    app.broker.log_append("events", [orjson.dumps(e) for e in events], maxlen=100_000)


def task_events(
    task_id: str,
    name: str,
    *,
    outcome: str = "task-succeeded",
    queue: str = "default",
    worker: str = "w1@host",
    args: str = "(1, 2)",
    ts: float | None = None,
    runtime: float = 0.25,
    **extra: Any,
) -> list[dict[str, Any]]:
    now = time.time() if ts is None else ts
    base = {"id": task_id, "name": name, "queue": queue, "worker": worker}
    end: dict[str, Any] = {**base, "type": outcome, "ts": now + runtime, "runtime": runtime, **extra}
    return [
        {**base, "type": "task-received", "ts": now, "args": args, "kwargs": "{}", "retries": 0},
        {**base, "type": "task-started", "ts": now + 0.001},
        end,
    ]


def dead_letter(app: Conveyor, name: str = "dash.broken", args: list[Any] | None = None) -> str:
    """Publish a message and dead-letter it as a worker would; returns the entry id."""
    message = app.build_message(name, args if args is not None else [7])
    app.publish(message)
    deliveries = app.broker.fetch([message.queue], limit=1000, lease_s=30, timeout_s=0)
    ours = [d for d in deliveries if d.message_id == message.id]
    assert ours, "the message was not fetchable"
    app.broker.dead_letter(ours[0], reason="ValueError: boom (after 3 retries)")
    for other in deliveries:
        if other is not ours[0]:
            app.broker.nack(other)
    entries = app.broker.dead_letters()
    return next(e.id for e in entries if e.task_id == message.id)


def decode_message(body: bytes) -> Message:
    return decode(body)


@pytest.fixture(autouse=True)
def _fast_failed_logins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pause after a failed login guards real dashboards; tests fail logins on purpose."""
    try:
        from conveyor.dashboard import web
    except ImportError:
        return  # the dashboard extra is missing; the test modules skip themselves
    monkeypatch.setattr(web, "FAILED_LOGIN_DELAY_S", 0.0)
