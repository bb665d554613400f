"""What the task pages and the overview show: past attempts, expired events, totals
that agree, the backlog bar (Hardening issue 8, 9; first-hour issue 10, 14)."""

from __future__ import annotations

import re
import time

import orjson
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (the dev extra)")

from conveyor import Conveyor  # noqa: E402
from conveyor.testing import wait_for  # noqa: E402
from tests.dashboard.conftest import client, emit, task_events  # noqa: E402


def test_a_task_that_succeeded_after_a_retry_shows_it_as_a_past_attempt(app: Conveyor) -> None:
    now = time.time() - 5
    base = {"id": "r1", "name": "dash.fetch", "queue": "default", "worker": "w1@host"}
    emit(
        app,
        {**base, "type": "task-received", "ts": now, "args": "('https://x',)", "kwargs": "{}", "retries": 0},
        {**base, "type": "task-started", "ts": now + 0.1},
        {
            **base,
            "type": "task-retried",
            "ts": now + 0.2,
            "exception": "ConnectionError: upstream down",
            "traceback": "Traceback (most recent call last):\nConnectionError: upstream down",
        },
        {**base, "type": "task-received", "ts": now + 1, "retries": 1},
        {**base, "type": "task-started", "ts": now + 1.1, "retries": 1},
        {**base, "type": "task-succeeded", "ts": now + 1.2, "runtime": 0.1, "retries": 1, "result": "'ok'"},
    )
    emit(app, *task_events("f1", "dash.fail", outcome="task-failed", ts=now, exception="ValueError: bad"))
    c = client(app)
    rows = {row["id"]: row for row in c.get("/api/tasks").json()["tasks"]}
    assert rows["r1"]["state"] == "SUCCESS" and rows["r1"]["exception"] is None
    assert rows["f1"]["exception"] == "ValueError: bad"
    listing = c.get("/tasks").text
    assert "ConnectionError" not in listing and "ValueError: bad" in listing
    detail = c.get("/api/tasks/r1").json()
    assert detail["exception"] is None and detail["traceback"] is None
    retried = [e for e in detail["events"] if e["type"] == "task-retried"]
    assert len(retried) == 1 and retried[0]["past"] is True
    html = c.get("/tasks/r1").text
    assert 'id="task-exception"' not in html and 'id="task-traceback"' not in html
    past = re.search(r'<li class="past[^"]*">(.*?)</li>', html, re.S)
    assert past is not None and "ConnectionError: upstream down" in past.group(1)
    assert "earlier attempt" in past.group(1)
    failed = c.get("/tasks/f1").text
    assert 'id="task-exception"' in failed and "ValueError: bad" in failed


def test_a_running_dashboard_drops_tasks_whose_events_expired(app: Conveyor) -> None:
    app.conf.events_max_age = 1.0
    emit(app, *task_events("soon-gone", "dash.add", ts=time.time()))
    c = client(app)
    assert c.get("/api/tasks").json()["total"] == 1

    def gone() -> bool:
        return c.get("/api/tasks").json()["total"] == 0 and app.broker.log_read("events") == []

    # No worker runs here: the dashboard's own reader applies events_max_age.
    wait_for(gone, timeout=15, interval=0.1, message="the expired task stayed on the page (or in the log)")
    assert c.get("/api/tasks/soon-gone").status_code == 404


def test_two_dashboards_on_one_store_show_the_same_totals(app: Conveyor) -> None:
    now = time.time() - 100
    early = client(app)
    for n in range(30):
        events = task_events(
            f"t{n:02d}", "dash.add", ts=now + n, outcome="task-failed" if n % 3 else "task-succeeded"
        )
        app.broker.log_append("events", [orjson.dumps(e) for e in events], maxlen=45)
        early.get("/api/tasks")
        early.app.state.dashboard.data._refreshed_at = 0.0  # noqa: SLF001 - read every step, like a long-lived page
    late = client(app)
    first, second = early.get("/api/tasks").json(), late.get("/api/tasks").json()
    assert first["total"] == second["total"] <= 15
    assert [t["id"] for t in first["tasks"]] == [t["id"] for t in second["tasks"]]
    assert early.get("/api/overview").json()["totals"] == late.get("/api/overview").json()["totals"]


def test_the_backlog_bar_counts_delayed_messages(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2], queue="later", countdown=600)
    app.send_task("dash.add", [3, 4], queue="later", countdown=600)
    c = client(app)
    data = c.get("/api/overview").json()
    assert data["backlog"] == 2
    html = c.get("/").text
    row = re.search(r"<tr><td>later</td>.*?</tr>", html, re.S)
    assert row is not None
    width = re.search(r'<rect[^>]*width="([\d.]+)"', row.group(0))
    assert width is not None and float(width.group(1)) == 100.0


def test_a_task_retrying_forever_has_a_small_page(app: Conveyor) -> None:
    start = time.time() - 3000
    base = {"id": "forever", "name": "dash.poll", "queue": "default", "worker": "w1@host"}
    events = []
    for n in range(1500):
        events += [
            {**base, "type": "task-received", "ts": start + n, "args": "[1]", "kwargs": "{}", "retries": n},
            {**base, "type": "task-started", "ts": start + n + 0.1, "retries": n},
            {
                **base,
                "type": "task-retried",
                "ts": start + n + 0.2,
                "retries": n,
                "exception": f"TimeoutError: attempt {n}",
                "traceback": "Traceback (most recent call last):\n" + "  frame\n" * 120,
            },
        ]
    app.broker.log_append("events", [orjson.dumps(e) for e in events], maxlen=100_000)
    c = client(app)
    detail = c.get("/api/tasks/forever")
    assert detail.status_code == 200 and len(detail.content) < 50_000, len(detail.content)
    data = detail.json()
    assert data["state"] == "RETRY" and data["exception"] == "TimeoutError: attempt 1499"
    assert len(data["events"]) + data["omitted_events"] == 4500
    page = c.get("/tasks/forever")
    assert len(page.content) < 50_000, len(page.content)
    assert "4477 event(s) between the first and the last ones shown" in page.text
