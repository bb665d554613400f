"""The dashboard's first hour: a broker that is down, arguments as JSON, restarted workers."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip(
    "starlette", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')"
)
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (the dev extra)")

from conveyor import Conveyor  # noqa: E402
from conveyor.message import Message  # noqa: E402
from conveyor.monitor import WORKERS_NAMESPACE  # noqa: E402
from conveyor.monitor.events import REPR_LIMIT, received_event  # noqa: E402
from tests.dashboard.conftest import client, emit  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PAGES = ("/", "/tasks", "/tasks/some-id", "/workers", "/queues", "/dlq", "/periodic")
APIS = ("/api/overview", "/api/tasks", "/api/tasks/some-id", "/api/workers", "/api/queues", "/api/dlq")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def csrf_of(html: str) -> str:
    match = re.search(r'data-csrf="([0-9a-f]+)"', html)
    assert match, "page carries no CSRF token"
    return match.group(1)


# -- 11. broker down --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_broker_that_is_down_shows_a_banner_and_logs_one_line(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if kind == "redis":
        url = f"redis://127.0.0.1:{closed_port()}/0"
    else:
        url = f"sqlite:///{tmp_path}/missing-dir/broker.sqlite3"
    down = Conveyor("down", broker=url, set_as_current=False)
    try:
        c = client(down)
        with caplog.at_level(logging.INFO, logger="conveyor"):
            for path in PAGES:
                resp = c.get(path)
                assert resp.status_code == 503, (path, resp.text[:400])
                assert f"broker unreachable: {url}, retrying" in resp.text, path
                assert "<nav>" in resp.text  # the page, not a bare error
                fragment = c.get(path + ("&" if "?" in path else "?") + "fragment=1")
                assert fragment.status_code == 503 and "broker unreachable" in fragment.text
            for path in APIS:
                resp = c.get(path)
                assert resp.status_code == 503, (path, resp.text[:400])
                assert resp.json() == {"error": f"broker unreachable: {url}, retrying"}
            token = csrf_of(c.get("/queues").text)
            purge = c.post("/api/queues/default/purge", headers={"X-CSRF-Token": token})
            assert purge.status_code == 503 and "broker unreachable" in purge.json()["error"]
        records = [r for r in caplog.records if r.name.startswith("conveyor")]
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].levelno == logging.WARNING and records[0].exc_info is None
        assert "broker unreachable" in records[0].getMessage()
        # With users, no session can be checked or made: a login says why.
        guarded = client(down, auth="admin:pw")
        assert guarded.get("/login").status_code == 200
        login = guarded.post("/login", data={"username": "admin", "password": "pw"})
        assert login.status_code == 503 and "broker unreachable" in login.text
    finally:
        down.close()


# -- 12. arguments are JSON everywhere ----------------------------------------------------------
def _message(args: list[Any], kwargs: dict[str, Any]) -> Message:
    app = Conveyor("m", broker="memory://", set_as_current=False)
    try:
        return app.build_message("dash.add", args, kwargs)
    finally:
        app.close()


def test_task_received_events_carry_arguments_as_json_text() -> None:
    event = received_event(_message([1, "two", None, True], {"flag": False}), "w1", time.time())
    assert json.loads(event["args"]) == [1, "two", None, True]
    assert json.loads(event["kwargs"]) == {"flag": False}
    big = received_event(_message(["é" * 5000], {}), "w1", time.time())
    assert len(big["args"]) <= REPR_LIMIT
    assert big["args"].startswith('["éé') and big["args"].endswith("…")


def test_list_detail_and_api_show_arguments_as_json(app: Conveyor) -> None:
    event = received_event(_message([1, "two", None], {"flag": True}), "w1@host", time.time())
    emit(app, event)
    task_id = event["id"]
    c = client(app)
    row = c.get(f"/api/tasks?search={task_id}").json()["tasks"][0]
    assert row["args"] == [1, "two", None] and row["kwargs"] == {"flag": True}
    detail = c.get(f"/api/tasks/{task_id}").json()
    assert detail["args"] == [1, "two", None] and detail["kwargs"] == {"flag": True}
    listing = c.get("/tasks").text
    assert "[1, &#34;two&#34;, null]" in listing and "{&#34;flag&#34;: true}" in listing
    page = c.get(f"/tasks/{task_id}").text
    assert re.search(r'id="task-args">\[1, &#34;two&#34;, null\]<', page), page


# -- 13. restarted workers fold away, and can be forgotten ----------------------------------------
def _heartbeat(app: Conveyor, name: str, *, age_s: float, state: str = "online") -> None:
    now = time.time()
    record = {
        "hostname": "host",
        "pid": 1,
        "pool": "prefork",
        "concurrency": 2,
        "queues": ["default"],
        "active": 0,
        "processed": 0,
        "failed": 0,
        "loadavg": [],
        "started_at": now - age_s - 10,
        "sent_at": now - age_s,
        "interval": 2.0,
        "state": state,
    }
    app.broker.kv_set(WORKERS_NAMESPACE, name, orjson.dumps(record), ttl_s=3600)


def test_long_offline_workers_fold_away_and_can_be_forgotten(app: Conveyor) -> None:
    _heartbeat(app, "w-now@host", age_s=0)
    _heartbeat(app, "w-just-stopped@host", age_s=30, state="offline")
    for i in range(5):
        _heartbeat(app, f"w-old{i}@host", age_s=1800 + i)
    c = client(app, auth="admin:pw", viewer_auth="look:pw")
    admin = {"Authorization": "Basic YWRtaW46cHc="}  # admin:pw
    viewer = {"Authorization": "Basic bG9vazpwdw=="}  # look:pw
    overview = c.get("/api/overview", headers=admin).json()
    assert (overview["workers_online"], overview["workers_total"]) == (1, 2)
    assert overview["workers_hidden"] == 5
    data = c.get("/api/workers", headers=admin).json()
    shown = {w["name"]: w.get("folded", False) for w in data["workers"]}
    assert len(shown) == 7 and sum(shown.values()) == 5 and not shown["w-just-stopped@host"]
    browser = client(app, auth="admin:pw")
    browser.post("/login", data={"username": "admin", "password": "pw"})
    page = browser.get("/workers").text
    assert re.search(r"<summary[^>]*>\s*show 5 offline", page), page
    assert "/api/workers/w-old0%40host/forget" in page
    refused = c.post("/api/workers/w-old0@host/forget", headers=viewer)
    assert refused.status_code == 403
    forgot = c.post("/api/workers/w-old0@host/forget", headers=admin)
    assert forgot.status_code == 200, forgot.text
    assert "w-old0@host" not in app.broker.kv_items(WORKERS_NAMESPACE)
    assert c.post("/api/workers/w-old0@host/forget", headers=admin).status_code == 404
    # An online worker is not forgotten: its next heartbeat would bring it back anyway.
    assert c.post("/api/workers/w-now@host/forget", headers=admin).status_code == 400


def test_a_dead_letter_shows_its_arguments_whichever_format_wrote_it() -> None:
    from types import SimpleNamespace

    from conveyor.dashboard.data import dead_letter_dict
    from conveyor.message import Message

    packed = Message(id="m2", task="proj.add", args=[1, "x"], kwargs={"k": 2}).encode()
    object_form = b'{"v":1,"id":"m1","task":"proj.add","args":[1,"x"],"kwargs":{"k":2}}'
    for body in (packed, object_form):
        entry = SimpleNamespace(
            id="1", queue="default", task_name="proj.add", task_id="m", reason="r", failed_at=0.0, body=body
        )
        shown = dead_letter_dict(entry)
        assert (shown["args"], shown["kwargs"]) == ([1, "x"], {"k": 2}), body
        assert shown["body"]["task"] == "proj.add"
