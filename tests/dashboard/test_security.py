"""Dashboard hardening: path segments, password guessing, request bodies, sessions, hashed passwords."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "starlette", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')"
)
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (the dev extra)")

from click.testing import CliRunner  # noqa: E402

from conveyor import Conveyor  # noqa: E402
from conveyor.cli.main import cli  # noqa: E402
from conveyor.dashboard import Auth, create_app  # noqa: E402
from tests.dashboard.conftest import client, emit  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

AUTH = {"auth": "admin:s3cret", "viewer_auth": "alice:pw"}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def csrf_of(html: str) -> str:
    match = re.search(r'data-csrf="([0-9a-f]+)"', html)
    assert match, "page carries no CSRF token"
    return match.group(1)


def login(c: Any, user: str, password: str) -> str:
    resp = c.post("/login", data={"username": user, "password": password, "next": "/queues"})
    assert resp.status_code == 303, resp.text
    return csrf_of(c.get("/queues").text)


# -- 1. every path segment built from data is encoded; crafted ids are refused --------------
def test_a_crafted_task_id_cannot_turn_a_button_into_another_action(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2], queue="victimq")
    c = client(app)
    crafted = c.get("/tasks/..%5Cqueues%5Cvictimq%5Cpurge%3F")
    assert crafted.status_code == 400, crafted.text[:300]
    assert "/purge" not in crafted.text
    for path in (
        "/api/tasks/..%5Cqueues%5Cvictimq%5Cpurge%3F",
        "/api/tasks/a%23b/revoke",
        "/api/periodic/x%5C..%5Cy/remove",
        "/api/queues/a%3Fb/purge",
    ):
        method = c.get if not path.endswith(("revoke", "remove", "purge")) else c.post
        assert method(path).status_code == 400, path
    assert app.broker.queue_stats()[0].ready == 1


def test_ids_and_names_are_percent_encoded_in_every_url(app: Conveyor) -> None:
    odd = "a%b c&d"
    emit(
        app, {"type": "task-received", "id": odd, "name": "dash.add", "ts": time.time(), "parent_id": "p%1 x"}
    )
    app.periodic.add("nightly report%", "dash.add", 3600.0)
    c = client(app)
    page = c.get("/tasks/a%25b%20c%26d")
    assert page.status_code == 200
    actions = re.findall(r'action="([^"]+)"', page.text)
    assert "/api/tasks/a%25b%20c%26d/revoke" in actions, actions
    assert 'href="/tasks/p%251%20x"' in page.text
    listing = c.get("/tasks").text
    assert 'href="/tasks/a%25b%20c%26d"' in listing
    periodic = re.findall(r'action="([^"]+)"', c.get("/periodic").text)
    assert "/api/periodic/nightly%20report%25/remove" in periodic, periodic
    token = csrf_of(c.get("/periodic").text)
    resp = c.post("/api/periodic/nightly%20report%25/disable", headers={"X-CSRF-Token": token})
    assert resp.status_code == 200, resp.text


# -- 3. password guessing ---------------------------------------------------------------------
def _throttled_client(app: Conveyor) -> tuple[Any, list[float]]:
    app.conf.dashboard_login_max_failures = 5
    app.conf.dashboard_login_window = 60.0
    c = client(app, **AUTH)
    now = [1000.0]
    c.app.state.dashboard.throttle.clock = lambda: now[0]  # type: ignore[attr-defined]
    return c, now


def test_basic_auth_guessing_is_locked_out_and_logged(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    c, now = _throttled_client(app)
    with caplog.at_level(logging.WARNING, logger="conveyor.dashboard"):
        for i in range(5):
            assert c.get("/api/queues", headers=basic("admin", f"guess{i}")).status_code == 401
    failures = [r for r in caplog.records if "failed login" in r.getMessage()]
    assert len(failures) == 5, [r.getMessage() for r in caplog.records]
    assert "admin" in failures[0].getMessage() and "testclient" in failures[0].getMessage()
    assert sum("refused for" in r.getMessage() for r in caplog.records) == 1  # the lockout, once
    locked = c.get("/api/queues", headers=basic("admin", "s3cret"))
    assert locked.status_code == 429, locked.text
    assert 0 < int(locked.headers["retry-after"]) <= 60
    assert c.get("/metrics", headers=basic("admin", "s3cret")).status_code == 429
    now[0] += 61
    assert c.get("/api/queues", headers=basic("admin", "s3cret")).status_code == 200


def test_login_form_guessing_is_locked_out_per_user_and_per_client(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    c, now = _throttled_client(app)
    with caplog.at_level(logging.WARNING, logger="conveyor.dashboard"):
        for i in range(5):
            resp = c.post("/login", data={"username": "admin", "password": f"guess{i}"})
            assert resp.status_code == 401
    assert sum("failed login" in r.getMessage() for r in caplog.records) == 5
    right = c.post("/login", data={"username": "admin", "password": "s3cret"})
    assert right.status_code == 429 and "conveyor_session" not in right.cookies
    assert int(right.headers["retry-after"]) > 0
    # The same client is locked out for other names too (one address guessing many users).
    assert c.post("/login", data={"username": "alice", "password": "pw"}).status_code == 429
    now[0] += 61
    assert c.post("/login", data={"username": "admin", "password": "s3cret"}).status_code == 303


def test_a_user_under_attack_from_many_addresses_is_locked(app: Conveyor) -> None:
    from conveyor.dashboard.throttle import LoginThrottle

    now = [0.0]
    throttle = LoginThrottle(max_failures=5, window_s=30, clock=lambda: now[0])
    for i in range(5):
        assert throttle.retry_after(f"10.0.0.{i}", "admin") is None
        throttle.failed(f"10.0.0.{i}", "admin")
    wait = throttle.retry_after("10.9.9.9", "admin")
    assert wait is not None and 0 < wait <= 30
    assert throttle.retry_after("10.9.9.9", "bob") is None
    now[0] = 31
    assert throttle.retry_after("10.9.9.9", "admin") is None


# -- 4. bodies: identity first, then a capped read ---------------------------------------------
async def _call(
    asgi: Any, path: str, headers: dict[str, str], chunks: int, chunk_size: int
) -> tuple[int, int]:
    """POST a streamed body of ``chunks`` x ``chunk_size`` bytes; (status, bytes the app consumed)."""
    consumed = 0
    sent = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal consumed, sent
        if sent >= chunks:
            return {"type": "http.disconnect"}
        sent += 1
        consumed += chunk_size
        return {"type": "http.request", "body": b"x" * chunk_size, "more_body": sent < chunks}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1:5555", **headers}.items()
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5555),
    }
    await asgi(scope, receive, send)
    return status, consumed


def test_an_anonymous_big_post_is_refused_before_its_body_is_read(app: Conveyor) -> None:
    asgi = create_app(app, **AUTH)
    chunk = 64 * 1024
    status, consumed = asyncio.run(
        _call(asgi, "/api/queues/default/purge", {"content-type": "application/json"}, 4800, chunk)
    )
    assert status == 401
    assert consumed == 0, f"read {consumed} bytes of an anonymous request"
    # The login form is anonymous by nature: its body is read, but only up to the cap.
    status, consumed = asyncio.run(
        _call(asgi, "/login", {"content-type": "application/x-www-form-urlencoded"}, 4800, chunk)
    )
    assert status == 413
    assert consumed <= 2 * chunk, consumed


def test_an_oversize_post_gets_413(app: Conveyor) -> None:
    c = client(app, **AUTH)
    big = b'{"ids": ["' + b"x" * (1024 * 1024 + 10) + b'"]}'
    declared = c.post(
        "/api/dlq/delete",
        content=big,
        headers={**basic("admin", "s3cret"), "content-type": "application/json"},
    )
    assert declared.status_code == 413, declared.text

    def chunked() -> Any:
        for _ in range(20):
            yield b"x" * (100 * 1024)

    streamed = c.post(
        "/api/dlq/delete",
        content=chunked(),
        headers={**basic("admin", "s3cret"), "content-type": "application/json"},
    )
    assert streamed.status_code == 413, streamed.text
    ok = c.post("/api/dlq/delete", json={"all": True}, headers=basic("admin", "s3cret"))
    assert ok.status_code == 200


# -- 5. sessions live in the broker: logout and a password change end them ----------------------
def test_logout_ends_the_session_on_the_server(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2])
    c = client(app, **AUTH)
    token = login(c, "admin", "s3cret")
    old_cookie = c.cookies.get("conveyor_session")
    assert old_cookie
    assert c.post("/logout", data={"csrf_token": token}).status_code == 303
    assert c.cookies.get("conveyor_session") is None
    c.cookies.set("conveyor_session", old_cookie)  # a copy kept by whoever stole it
    assert c.get("/queues").status_code == 303
    resp = c.post("/api/queues/default/purge", headers={"X-CSRF-Token": token})
    assert resp.status_code == 401, resp.text
    assert app.broker.queue_stats()[0].ready == 1


def test_a_password_change_ends_old_sessions(app: Conveyor) -> None:
    first = client(app, auth=Auth("admin:old-pw", secret_key="k"))
    login(first, "admin", "old-pw")
    cookie = first.cookies.get("conveyor_session")
    assert cookie
    same = client(app, auth=Auth("admin:old-pw", secret_key="k"))  # a restart, same password
    same.cookies.set("conveyor_session", cookie)
    assert same.get("/queues").status_code == 200
    changed = client(app, auth=Auth("admin:new-pw", secret_key="k"))  # a restart, new password
    changed.cookies.set("conveyor_session", cookie)
    assert changed.get("/queues").status_code == 303


# -- 6. hashed passwords in a file --------------------------------------------------------------
def test_auth_file_with_scrypt_hashes_and_roles(app: Conveyor, tmp_path: Path) -> None:
    runner = CliRunner()
    admin = runner.invoke(cli, ["hash-password", "ops"], input="correct horse\ncorrect horse\n")
    assert admin.exit_code == 0, admin.output
    admin_line = admin.output.strip().splitlines()[-1]
    assert re.fullmatch(r"ops:scrypt\$\d+\$\d+\$\d+\$[^$:]+\$[^$:]+", admin_line), admin_line
    assert "correct horse" not in admin.output
    viewer = runner.invoke(cli, ["hash-password", "support", "--viewer"], input="look only\nlook only\n")
    viewer_line = viewer.output.strip().splitlines()[-1]
    assert viewer_line.startswith("support:scrypt$") and viewer_line.endswith(":viewer")
    path = tmp_path / "users"
    path.write_text(f"# dashboard users\n{admin_line}\n\n{viewer_line}\n")
    app.conf.dashboard_auth_file = str(path)
    c = client(app)
    assert c.get("/api/queues", headers=basic("ops", "correct horse")).status_code == 200
    assert c.get("/api/queues", headers=basic("ops", "wrong")).status_code == 401
    assert c.get("/api/queues", headers=basic("support", "look only")).status_code == 200
    denied = c.post("/api/queues/default/purge", headers=basic("support", "look only"))
    assert denied.status_code == 403
    assert c.post("/api/queues/default/purge", headers=basic("ops", "correct horse")).status_code == 200


def test_the_dashboard_command_takes_an_auth_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_DASHBOARD_AUTH", raising=False)
    bad = tmp_path / "users"
    bad.write_text("ops:plain-password\n")
    result = CliRunner().invoke(
        cli, ["dashboard", "--auth-file", str(bad), "-b", f"sqlite:///{tmp_path}/b.sqlite3"]
    )
    assert result.exit_code == 1, result.output
    assert "scrypt$" in result.output and "hash-password" in result.output
    assert "plain-password" not in result.output


def test_hash_password_never_takes_the_password_on_the_command_line() -> None:
    result = CliRunner().invoke(cli, ["hash-password", "ops", "secret-on-argv"])
    assert result.exit_code == 2


def test_a_verified_password_is_not_hashed_again_on_every_request(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from conveyor.dashboard import passwords

    auth = Auth([f"ops:{passwords.hash_password('pw')}"])
    runs = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(passwords.hashlib, "scrypt", counting)
    # Scripts poll /api with basic auth: a verified password is remembered (as an HMAC),
    # so 20 checks cost one scrypt run, not twenty; a wrong one always costs a run.
    for _ in range(20):
        assert auth.check("ops", "pw") is not None
    assert len(runs) == 1
    assert auth.check("ops", "nope") is None
    assert auth.check("nobody", "pw") is None
    assert len(runs) == 3
