"""The dashboard without a browser: auth, CSRF, roles, every page and API, actions, /metrics."""

from __future__ import annotations

import base64
import re
import time

import pytest

pytest.importorskip(
    "starlette", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')"
)
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (the dev extra)")

from click.testing import CliRunner  # noqa: E402

from conveyor import Conveyor
from conveyor.backends.base import ResultRecord
from conveyor.cli.main import cli
from conveyor.dashboard import Auth, is_loopback, serve
from conveyor.dashboard.forms import safe_next as _safe_next
from conveyor.exceptions import ConfigurationError
from tests.dashboard.conftest import client, dead_letter, decode_message, emit, task_events

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

AUTH = {"auth": "admin:s3cret", "viewer_auth": "alice:pw:with:colons"}
PAGES = ("/", "/tasks", "/workers", "/queues", "/dlq", "/periodic")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def csrf_of(html: str) -> str:
    match = re.search(r'data-csrf="([0-9a-f]+)"', html)
    assert match, "page carries no CSRF token"
    return match.group(1)


def login(c: object, user: str, password: str) -> str:
    """Log in and return the CSRF token of the session."""
    resp = c.post("/login", data={"username": user, "password": password, "next": "/queues"})  # type: ignore[attr-defined]
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/queues"
    page = c.get("/queues")  # type: ignore[attr-defined]
    assert page.status_code == 200
    return csrf_of(page.text)


# -- without users (loopback only) ---------------------------------------------------------
def test_every_page_and_api_renders_without_auth(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2])
    c = client(app)
    for path in PAGES:
        resp = c.get(path)
        assert resp.status_code == 200, (path, resp.text[:300])
        assert "content-security-policy" in resp.headers
        fragment = c.get(path + "?fragment=1")
        assert fragment.status_code == 200 and "<html" not in fragment.text
    for path in ("/api/overview", "/api/tasks", "/api/workers", "/api/queues", "/api/dlq", "/api/periodic"):
        assert c.get(path).status_code == 200, path
    assert c.get("/api/queues").json()["queues"][0] == {
        "name": "default",
        "ready": 1,
        "in_flight": 0,
        "delayed": 0,
        "dead": 0,
    }
    assert c.get("/static/dashboard.js").status_code == 200
    assert c.get("/static/dashboard.css").status_code == 200
    unknown = c.get("/tasks/nope")
    assert unknown.status_code == 200 and "No event or stored result for this task yet" in unknown.text
    assert c.get("/api/tasks/nope").status_code == 404


def test_actions_need_a_csrf_token_even_without_users(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2])
    c = client(app)
    assert c.post("/api/queues/default/purge").status_code == 403
    assert c.post("/api/queues/default/purge", headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert app.broker.queue_stats()[0].ready == 1
    token = csrf_of(c.get("/queues").text)
    resp = c.post("/api/queues/default/purge", headers={"X-CSRF-Token": token})
    assert resp.status_code == 200 and resp.json()["ok"] is True
    assert sum(s.ready for s in app.broker.queue_stats()) == 0


# -- login, basic auth, roles --------------------------------------------------------------
def test_login_is_required(app: Conveyor) -> None:
    c = client(app, **AUTH)
    for path in PAGES:
        resp = c.get(path)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login?next="), path
    for path in ("/api/overview", "/api/queues", "/metrics"):
        resp = c.get(path)
        assert resp.status_code == 401, path
        assert "www-authenticate" not in resp.headers  # browsers must never cache basic credentials
    assert c.get("/login").status_code == 200
    bad = c.post("/login", data={"username": "admin", "password": "wrong"})
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text
    assert "conveyor_session" not in bad.cookies
    assert c.post("/login", data={"username": "nobody", "password": "s3cret"}).status_code == 401


def test_basic_auth_on_api_and_metrics_but_not_pages(app: Conveyor) -> None:
    c = client(app, **AUTH)
    assert c.get("/api/queues", headers=basic("admin", "s3cret")).status_code == 200
    assert c.get("/api/queues", headers=basic("alice", "pw:with:colons")).status_code == 200
    assert c.get("/metrics", headers=basic("alice", "pw:with:colons")).status_code == 200
    assert c.get("/api/queues", headers=basic("admin", "nope")).status_code == 401
    assert c.get("/api/queues", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert c.get("/", headers=basic("admin", "s3cret")).status_code == 303


def test_admin_session_acts_with_token_only(app: Conveyor) -> None:
    entry = dead_letter(app)
    c = client(app, **AUTH)
    token = login(c, "admin", "s3cret")
    assert "admin" in c.get("/").text
    assert c.post("/api/dlq/replay", json={"ids": [entry]}).status_code == 403  # no token
    resp = c.post("/api/dlq/replay", json={"ids": [entry]}, headers={"X-CSRF-Token": token})
    assert resp.status_code == 200, resp.text
    assert resp.json()["message"] == "Replayed 1 dead letter(s)."
    assert app.broker.queue_stats()[0].ready == 1


def test_a_form_post_redirects_back_with_a_message(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2])
    c = client(app, **AUTH)
    token = login(c, "admin", "s3cret")
    resp = c.post("/api/queues/default/purge", data={"csrf_token": token, "next": "/queues"})
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/queues?msg=Purged+1+message")
    page = c.get(resp.headers["location"])
    assert "Purged 1 message(s) from default." in page.text
    # An unsafe "next" never leaves the site.
    resp = c.post("/api/queues/default/purge", data={"csrf_token": token, "next": "//evil.example/x"})
    assert resp.headers["location"].startswith("/?msg=")


def test_a_session_token_is_bound_to_its_session(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2])
    # Two browsers against dashboards sharing one secret key (as behind a load balancer).
    first = client(app, auth=Auth("admin:s3cret", secret_key="k"))
    second = client(app, auth=Auth("admin:s3cret", secret_key="k"))
    token = login(first, "admin", "s3cret")
    login(second, "admin", "s3cret")
    resp = second.post("/api/queues/default/purge", headers={"X-CSRF-Token": token})
    assert resp.status_code == 403
    assert app.broker.queue_stats()[0].ready == 1
    # A dashboard with another key does not accept the first one's session at all.
    stranger = client(app, auth=Auth("admin:s3cret", secret_key="other"))
    stranger.cookies.update(first.cookies)
    assert stranger.get("/queues").status_code == 303


def test_a_viewer_sees_everything_but_cannot_act(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2])
    entry = dead_letter(app)
    c = client(app, **AUTH)
    token = login(c, "alice", "pw:with:colons")
    page = c.get("/dlq")
    assert page.status_code == 200 and "viewer" in page.text
    assert entry in page.text
    buttons = re.findall(r"<button type=\"submit\"[^>]*>(?:Replay|Delete|Replay all)</button>", page.text)
    assert buttons and all("disabled" in b for b in buttons)
    for path, body in (
        ("/api/dlq/replay", {"ids": [entry]}),
        ("/api/dlq/delete", {"all": True}),
        ("/api/queues/default/purge", {}),
        ("/api/tasks/x/revoke", {"terminate": True}),
    ):
        resp = c.post(path, json=body, headers={"X-CSRF-Token": token})
        assert resp.status_code == 403, path
        assert "viewer" in resp.json()["error"]
    form = c.post("/api/dlq/replay", data={"csrf_token": token, "ids": entry, "next": "/dlq"})
    assert form.status_code == 403
    by_script = c.post("/api/dlq/replay", json={"all": True}, headers=basic("alice", "pw:with:colons"))
    assert by_script.status_code == 403
    stats = {s.name: s for s in app.broker.queue_stats()}
    assert stats["default"].ready == 1 and stats["default"].dead == 1


def test_scripts_act_with_basic_auth_and_no_token(app: Conveyor) -> None:
    entry = dead_letter(app)
    c = client(app, **AUTH)
    resp = c.post("/api/dlq/delete", json={"ids": [entry]}, headers=basic("admin", "s3cret"))
    assert resp.status_code == 200 and resp.json()["message"] == "Deleted 1 dead letter(s)."
    assert app.broker.dead_letters() == []
    resp = c.post("/api/dlq/delete", json={"ids": []}, headers=basic("admin", "s3cret"))
    assert resp.status_code == 400
    garbage = c.post(
        "/api/dlq/delete",
        content=b"{not json",
        headers={**basic("admin", "s3cret"), "content-type": "application/json"},
    )
    assert garbage.status_code == 400 and "not JSON" in garbage.json()["error"]


def test_a_tampered_or_expired_session_is_refused() -> None:
    auth = Auth("admin:pw", "bob:pw2", secret_key="key")
    admin = auth.check("admin", "pw")
    assert admin is not None and admin.is_admin
    cookie = auth.make_session(admin)
    assert auth.read_session(cookie) is not None
    body, _, sig = cookie.rpartition(".")
    assert auth.read_session(body + "x." + sig) is None
    assert auth.read_session(cookie[:-1] + ("0" if cookie[-1] != "0" else "1")) is None
    assert auth.read_session(cookie, now=time.time() + 13 * 3600) is None
    assert Auth("admin:pw", secret_key="other").read_session(cookie) is None
    # Demoting the user ends the session.
    assert Auth("bob:pw2", "admin:pw", secret_key="key").read_session(cookie) is None
    viewer = auth.check("bob", "pw2")
    assert viewer is not None and not viewer.is_admin
    assert auth.check("bob", "wrong") is None


@pytest.mark.parametrize("spec", ["admin", "admin:", ":pw", "a:b,c"])
def test_bad_credentials_spec_is_one_clear_error(spec: str) -> None:
    with pytest.raises(ConfigurationError, match="user:password"):
        Auth(spec)


def test_viewers_need_an_admin(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="admin"):
        client(app, viewer_auth="alice:pw")


def test_safe_next() -> None:
    assert _safe_next("/tasks?state=FAILURE") == "/tasks?state=FAILURE"
    for bad in ("//evil.com", "https://evil.com", "javascript:x", None, "/\\evil"):
        assert _safe_next(bad) == "/"


# -- binding ---------------------------------------------------------------------------------
def test_refuses_non_loopback_without_auth(app: Conveyor) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    with pytest.raises(ConfigurationError, match="without a login"):
        serve(app, host="0.0.0.0", port=1)


def test_cli_refuses_non_loopback_without_auth(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_DASHBOARD_AUTH", raising=False)
    result = CliRunner().invoke(
        cli, ["dashboard", "--host", "0.0.0.0", "-b", f"sqlite:///{tmp_path}/b.sqlite3"]
    )
    assert result.exit_code == 1, result.output
    assert (
        result.output.strip().splitlines()[-1].startswith("Error: refusing to serve the dashboard on 0.0.0.0")
    )
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(cli, ["dashboard", "--auth", "nocolon", "-b", f"sqlite:///{tmp_path}/b.sqlite3"])
    assert bad.exit_code == 1 and "user:password" in bad.output


# -- tasks, detail, retry, revoke ----------------------------------------------------------
def test_tasks_list_filters_search_and_pages(app: Conveyor) -> None:
    now = time.time() - 100
    for i in range(120):
        emit(app, *task_events(f"ok-{i:03d}", "dash.add", args=f"({i}, 1)", ts=now + i * 0.01))
    emit(
        app,
        *task_events(
            "bad-1",
            "dash.fail",
            outcome="task-failed",
            queue="email",
            worker="w2@host",
            args="('needle-text',)",
            ts=now + 5,
            exception="ValueError: broken",
            traceback="Traceback (most recent call last):\nValueError: broken",
        ),
    )
    c = client(app)
    data = c.get("/api/tasks").json()
    assert data["total"] == 121 and len(data["tasks"]) == 50 and data["pages"] == 3
    assert data["choices"]["name"] == ["dash.add", "dash.fail"]
    assert data["tasks"][0]["id"] == "bad-1"  # newest first
    page3 = c.get("/api/tasks?page=3").json()
    assert len(page3["tasks"]) == 21 and page3["tasks"][-1]["id"] == "ok-000"
    failed = c.get("/api/tasks?state=FAILURE").json()
    assert [t["id"] for t in failed["tasks"]] == ["bad-1"]
    assert c.get("/api/tasks?queue=email&worker=w2@host").json()["total"] == 1
    assert c.get("/api/tasks?name=dash.add").json()["total"] == 120
    assert [t["id"] for t in c.get("/api/tasks?search=needle").json()["tasks"]] == ["bad-1"]
    assert [t["id"] for t in c.get("/api/tasks?search=ok-007").json()["tasks"]] == ["ok-007"]
    html = c.get("/tasks?state=FAILURE").text
    assert "bad-1" in html and "ok-001" not in html and "1 task(s)" in html
    assert c.get("/api/tasks?page=x").status_code == 400


def test_task_detail_shows_timeline_traceback_and_children(app: Conveyor) -> None:
    emit(
        app,
        *task_events(
            "parent-1",
            "dash.fail",
            outcome="task-failed",
            exception="ValueError: broken",
            traceback="Traceback (most recent call last):\n  File x\nValueError: broken",
        ),
    )
    emit(app, *task_events("child-1", "dash.add", parent_id="parent-1"))
    emit(
        app,
        {
            "type": "task-received",
            "id": "child-2",
            "name": "dash.add",
            "ts": time.time(),
            "parent_id": "parent-1",
        },
    )
    c = client(app)
    detail = c.get("/api/tasks/parent-1").json()
    assert detail["state"] == "FAILURE"
    assert [e["type"] for e in detail["events"]] == ["task-received", "task-started", "task-failed"]
    assert detail["children"] == ["child-2"] or "child-2" in detail["children"]
    html = c.get("/tasks/parent-1").text
    assert "ValueError: broken" in html and "task-failed" in html and "child-2" in html


def test_retry_sends_the_same_name_arguments_and_queue(app: Conveyor) -> None:
    app.backend.store(
        [
            ResultRecord(
                "failed-1",
                "FAILURE",
                task="dash.fail",
                args=[1, {"deep": [2, 3]}],
                kwargs={"flag": True},
                queue="email",
                exception={
                    "type": "ValueError",
                    "module": "builtins",
                    "message": "broken",
                    "args": ["broken"],
                },
                traceback="Traceback ...\nValueError: broken",
            )
        ]
    )
    c = client(app)
    detail = c.get("/api/tasks/failed-1").json()
    assert detail["retriable"] and detail["stored_result"]["args"] == [1, {"deep": [2, 3]}]
    token = csrf_of(c.get("/tasks/failed-1").text)
    resp = c.post("/api/tasks/failed-1/retry", headers={"X-CSRF-Token": token})
    assert resp.status_code == 200, resp.text
    deliveries = app.broker.fetch(["email"], limit=5, lease_s=30, timeout_s=0)
    assert len(deliveries) == 1
    message = decode_message(deliveries[0].body)
    assert (message.task, message.args, message.kwargs) == (
        "dash.fail",
        [1, {"deep": [2, 3]}],
        {"flag": True},
    )
    assert message.id != "failed-1" and message.id in resp.json()["message"]
    missing = c.post("/api/tasks/unknown/retry", headers={"X-CSRF-Token": token})
    assert missing.status_code == 404 and "not stored" in missing.json()["error"]


def test_revoke_goes_through_app_control(app: Conveyor) -> None:
    emit(app, {"type": "task-received", "id": "run-1", "name": "dash.slow", "ts": time.time()})
    c = client(app)
    token = csrf_of(c.get("/tasks/run-1").text)
    resp = c.post("/api/tasks/run-1/revoke", json={"terminate": True}, headers={"X-CSRF-Token": token})
    assert resp.status_code == 200, resp.text
    assert "run-1" in resp.json()["message"]


# -- overview, metrics ----------------------------------------------------------------------
def test_overview_series_runtime_and_backlog(app: Conveyor) -> None:
    now = time.time() - 30
    for i in range(8):
        emit(app, *task_events(f"s{i}", "dash.add", ts=now, runtime=0.1 * (i + 1)))
    emit(app, *task_events("f1", "dash.fail", outcome="task-failed", ts=now))
    app.send_task("dash.add", [1, 2], queue="email")
    data = client(app).get("/api/overview").json()
    assert data["totals"] == {"succeeded": 8, "failed": 1}
    assert len(data["series"]) == 60
    assert data["runtime"]["count"] == 9 and 0.1 < data["runtime"]["mean"] < 0.8
    assert data["backlog"] == 1 and data["queues"][0]["name"] == "email"


def test_metrics_in_prometheus_text_format(app: Conveyor) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    now = time.time() - 10
    emit(app, *task_events("m1", "dash.add", ts=now, runtime=0.02))
    emit(app, *task_events("m2", "dash.add", ts=now, runtime=3.0))
    emit(app, *task_events("m3", "dash.fail", outcome="task-failed", ts=now, runtime=0.2))
    app.send_task("dash.add", [1, 2])
    dead_letter(app, "dash.broken")
    c = client(app, **AUTH)
    text = c.get("/metrics", headers=basic("admin", "s3cret")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("conveyor_tasks", (("name", "dash.add"), ("state", "SUCCESS")))] == 2
    assert samples[("conveyor_tasks", (("name", "dash.fail"), ("state", "FAILURE")))] == 1
    assert samples[("conveyor_task_runtime_seconds_bucket", (("le", "0.025"), ("name", "dash.add")))] == 1
    assert samples[("conveyor_task_runtime_seconds_bucket", (("le", "+Inf"), ("name", "dash.add")))] == 2
    assert samples[("conveyor_task_runtime_seconds_sum", (("name", "dash.add"),))] == pytest.approx(3.02)
    assert samples[("conveyor_queue_backlog", (("queue", "default"),))] == 1
    assert samples[("conveyor_queue_messages", (("queue", "default"), ("state", "dead")))] == 1
    assert samples[("conveyor_workers_online", ())] == 0
    # Counters only grow: a second scrape reads only the new events.
    emit(app, *task_events("m4", "dash.add", ts=now, runtime=0.02))
    again = c.get("/metrics", headers=basic("admin", "s3cret")).text
    assert 'conveyor_task_runtime_seconds_count{name="dash.add"} 3.0' in again


# -- periodic tasks ---------------------------------------------------------------------------
def test_periodic_add_disable_enable_remove(app: Conveyor) -> None:
    app.conf.beat_schedule = {"from-config": {"task": "dash.add", "schedule": 60.0, "args": [1, 2]}}
    c = client(app, **AUTH)
    token = login(c, "admin", "s3cret")
    form = {
        "csrf_token": token,
        "next": "/periodic",
        "name": "every-15",
        "task": "dash.add",
        "cron": "*/15 * * * *",
        "args": "[1, 2]",
        "kwargs": "",
        "queue": "email",
    }
    resp = c.post("/api/periodic", data=form)
    assert resp.status_code == 303 and "Added+periodic+task+every-15" in resp.headers["location"]
    entries = {e["name"]: e for e in c.get("/api/periodic").json()["entries"]}
    assert entries["every-15"]["schedule"] == "*/15 * * * *"
    assert entries["every-15"]["args"] == [1, 2] and entries["every-15"]["options"] == {"queue": "email"}
    assert entries["every-15"]["next_run_at"] is not None
    assert entries["from-config"]["source"] == "config"
    headers = {"X-CSRF-Token": token}
    assert c.post("/api/periodic/every-15/disable", headers=headers).status_code == 200
    assert not app.periodic.get("every-15").enabled  # type: ignore[union-attr]
    assert c.post("/api/periodic/every-15/enable", headers=headers).status_code == 200
    assert app.periodic.get("every-15").enabled  # type: ignore[union-attr]
    page = c.get("/periodic").text
    assert "every-15" in page and "from-config" in page and "Add a periodic task" in page
    readonly = c.post("/api/periodic/from-config/disable", headers=headers)
    assert readonly.status_code == 400 and "read-only" in readonly.json()["error"]
    both = c.post(
        "/api/periodic",
        json={"name": "x", "task": "dash.add", "cron": "* * * * *", "every": "5s"},
        headers=headers,
    )
    assert both.status_code == 400 and "not both" in both.json()["error"]
    every = c.post(
        "/api/periodic", json={"name": "fast", "task": "dash.add", "every": "30s"}, headers=headers
    )
    assert every.status_code == 200, every.text
    assert c.post("/api/periodic/every-15/remove", headers=headers).status_code == 200
    assert app.periodic.get("every-15") is None
    assert c.post("/api/periodic/every-15/remove", headers=headers).status_code == 404


def test_adding_a_periodic_task_for_an_unknown_task_says_so(app: Conveyor) -> None:
    app.task(name="dash.add")(lambda x, y: x + y)  # the app knows its tasks, and not dash.nope
    c = client(app, **AUTH)
    token = login(c, "admin", "s3cret")
    headers = {"X-CSRF-Token": token}
    resp = c.post(
        "/api/periodic", json={"name": "ghost", "task": "dash.nope", "every": "30s"}, headers=headers
    )
    assert resp.status_code == 200, resp.text
    assert "dash.nope" in resp.text and "dead-letter" in resp.text
    assert app.periodic.get("ghost") is not None


def test_a_viewer_cannot_change_periodic_tasks(app: Conveyor) -> None:
    app.periodic.add("nightly", "dash.add", 3600.0)
    c = client(app, **AUTH)
    token = login(c, "alice", "pw:with:colons")
    page = c.get("/periodic").text
    assert "nightly" in page and "Add a periodic task" not in page
    resp = c.post("/api/periodic/nightly/disable", headers={"X-CSRF-Token": token})
    assert resp.status_code == 403
    assert app.periodic.get("nightly").enabled  # type: ignore[union-attr]


def test_users_from_the_environment(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DASHBOARD_AUTH", "ops:pw1,lead:pw2")
    monkeypatch.setenv("CONVEYOR_DASHBOARD_VIEWER_AUTH", "support:pw3")
    env_app = Conveyor("dash-env", broker=f"sqlite:///{tmp_path}/b.sqlite3", set_as_current=False)
    try:
        c = client(env_app)
        assert c.get("/").status_code == 303
        assert c.get("/api/queues", headers=basic("lead", "pw2")).status_code == 200
        viewer = c.post("/api/queues/default/purge", headers=basic("support", "pw3"))
        assert viewer.status_code == 403
        # An explicit argument (the CLI's --auth) replaces the setting.
        only_cli = client(env_app, auth="cli:pw")
        assert only_cli.get("/api/queues", headers=basic("ops", "pw1")).status_code == 401
        assert only_cli.get("/api/queues", headers=basic("cli", "pw")).status_code == 200
    finally:
        env_app.close()


def test_pages_show_times_in_the_apps_timezone_with_the_zone(app: Conveyor) -> None:
    app.conf.timezone = "Asia/Kolkata"  # UTC+05:30, IST all year
    app.conf.events_max_age = None  # the event is dated 2025
    emit(app, *task_events("t-zone", "dash.add", ts=1_765_000_000.0, runtime=0.5))
    html = client(app).get("/tasks/t-zone").text
    assert "2025-12-06 11:16:40 IST" in html, "the received time, in the app's zone, with the zone"
