"""DNS rebinding and cross-site posts: the dashboard answers only to its own host names.

A page on evil.example whose name is re-pointed at 127.0.0.1 reaches an anonymous
loopback dashboard from the victim's browser with ``Host: evil.example``; refusing
that Host (400) is what stops it reading task arguments or posting actions.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

pytest.importorskip(
    "starlette", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')"
)
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (the dev extra)")

from conveyor import Conveyor  # noqa: E402
from conveyor.dashboard.hosts import bound_hosts  # noqa: E402
from conveyor.testing import wait_for  # noqa: E402
from tests.cli.conftest import PROJECT, REPO_ROOT  # noqa: E402
from tests.dashboard.conftest import client  # noqa: E402
from tests.dashboard.test_web import csrf_of  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LOOPBACK_HOSTS = ("127.0.0.1", "127.0.0.1:5555", "localhost", "LocalHost:5555", "[::1]", "[::1]:5555")


def test_a_foreign_host_is_refused_on_pages_api_and_actions(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2])
    c = client(app)  # create_app's default: the names of a dashboard bound to 127.0.0.1
    token = csrf_of(c.get("/queues", headers={"Host": "127.0.0.1:5555"}).text)
    evil = {"Host": "evil.example:5555"}
    for resp in (
        c.get("/", headers=evil),
        c.get("/tasks", headers=evil),
        c.get("/api/tasks", headers=evil),
        c.get("/api/overview", headers=evil),
        c.post("/api/queues/default/purge", headers={**evil, "X-CSRF-Token": token}),
    ):
        assert resp.status_code == 400, (resp.request.url, resp.text)
        lines = resp.text.strip().splitlines()
        assert len(lines) == 1, resp.text
        assert "evil.example:5555" in lines[0] and "--allowed-host evil.example" in lines[0], lines
    assert app.broker.queue_stats()[0].ready == 1  # the refused purge did nothing
    for host in LOOPBACK_HOSTS:
        assert c.get("/api/queues", headers={"Host": host}).status_code == 200, host
    purged = c.post("/api/queues/default/purge", headers={"Host": "localhost:5555", "X-CSRF-Token": token})
    assert purged.status_code == 200, purged.text
    assert sum(s.ready for s in app.broker.queue_stats()) == 0


def test_the_names_of_a_bind_address() -> None:
    # Loopback and every-interface binds are reached as localhost too; others only by themselves.
    assert bound_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert bound_hosts("::1") == ["::1", "localhost", "127.0.0.1"]
    assert bound_hosts("0.0.0.0") == ["0.0.0.0", "localhost", "127.0.0.1", "::1"]
    assert bound_hosts("10.1.2.3") == ["10.1.2.3"]
    assert bound_hosts("Dash.Example") == ["dash.example"]


def test_allowed_hosts_from_the_argument_and_the_setting(app: Conveyor) -> None:
    app.conf.update(dashboard_allowed_hosts="ops.example, *.tasks.example")
    c = client(app, allowed_hosts=["dash.internal"])
    for host in ("dash.internal", "dash.internal:8080", "ops.example", "eu.tasks.example:443"):
        assert c.get("/api/queues", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "tasks.example.evil.example", "dash.internal.evil.example", "", "a b"):
        assert c.get("/api/queues", headers={"Host": host}).status_code == 400, host


def test_a_post_from_a_foreign_origin_is_refused(app: Conveyor) -> None:
    app.send_task("dash.add", [1, 2])
    c = client(app)
    host = {"Host": "127.0.0.1:5555"}
    token = csrf_of(c.get("/queues", headers=host).text)
    acting = {**host, "X-CSRF-Token": token}
    for foreign in (
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:8000"},  # another site on this machine
        {"Origin": "null"},
        {"Referer": "http://evil.example/page"},
    ):
        resp = c.post("/api/queues/default/purge", headers={**acting, **foreign})
        assert resp.status_code == 403, (foreign, resp.text)
        assert "not this dashboard" in resp.text, resp.text
    assert app.broker.queue_stats()[0].ready == 1
    same = c.post("/api/queues/default/purge", headers={**acting, "Origin": "http://127.0.0.1:5555"})
    assert same.status_code == 200, same.text
    referred = c.post("/api/queues/default/purge", headers={**acting, "Referer": "http://127.0.0.1:5555/q"})
    assert referred.status_code == 200, referred.text
    # A GET is not an action: a link from another site still opens the page.
    assert c.get("/queues", headers={**host, "Origin": "http://evil.example"}).status_code == 200


# -- the real commands: `conveyor dashboard` and `conveyor run` ------------------------------
@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    (tmp_path / "proj.py").write_text(textwrap.dedent(PROJECT))
    return tmp_path


def _get(port: int, path: str, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _serving(proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    assert proc.poll() is None, log.read_text(errors="replace")
    try:
        return _get(port, "/api/queues", f"127.0.0.1:{port}")[0] == 200
    except OSError:
        return False


@pytest.fixture
def start(project_dir: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(*args: str, env: Mapping[str, str] | None = None) -> int:
        port = free_port()
        log = project_dir / f"cmd{len(procs)}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        environ["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{project_dir}"
        cmd = [sys.executable, "-m", "conveyor.cli.main", *args, "--port", str(port)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=project_dir,
                env={**environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        wait_for(lambda: _serving(proc, port, log), timeout=30, interval=0.1, message="not serving")
        return port

    yield run
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.mark.parametrize("command", ["dashboard", "run"])
def test_the_commands_allow_the_bound_host_and_allowed_hosts_only(start: object, command: str) -> None:
    args = ["-A", "proj", command, "--allowed-host", "dash.internal", "--allowed-host", "ops.internal"]
    if command == "run":
        args += ["-P", "threads", "-c", "1"]
    port = start(*args, env={"CONVEYOR_DASHBOARD_ALLOWED_HOSTS": "from-env.internal"})  # type: ignore[operator]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "dash.internal", "ops.internal:80"):
        assert _get(port, "/api/queues", host)[0] == 200, host
        assert _get(port, "/queues", host)[0] == 200, host
    # The option replaces nothing: the environment's hosts still count.
    assert _get(port, "/api/queues", "from-env.internal")[0] == 200
    status, body = _get(port, "/api/tasks", f"evil.example:{port}")
    assert status == 400, body
    assert body.strip() == (
        f"Host 'evil.example:{port}' is not a name of this dashboard: if it is, serve it with "
        "--allowed-host evil.example (or CONVEYOR_DASHBOARD_ALLOWED_HOSTS)"
    )
