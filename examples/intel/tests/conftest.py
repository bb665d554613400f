"""The services the tasks call, faked by one local HTTP server, and the command from the
README (`conveyor -A intel run ... --worker-per-queue`) running for the whole module."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conveyor.testing import wait_for

HERE = Path(__file__).resolve().parents[1]
QUEUES = "default,feeds,observables,notifications"


class Services:
    """Feeds at /feeds/NAME, a reputation service at /reputation, the alert API at
    /webhook (POST), the framework export at /framework; every call is recorded."""

    def __init__(self) -> None:
        self.feeds: dict[str, str] = {}
        self.bad: set[str] = set()
        self.framework: dict = {"techniques": []}
        self.lookups: list[str] = []
        self.alerts: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        services = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
                url = urllib.parse.urlsplit(self.path)
                if url.path.startswith("/feeds/"):
                    self.answer(services.feeds[url.path.removeprefix("/feeds/")], "text/plain")
                elif url.path == "/reputation":
                    value = urllib.parse.parse_qs(url.query)["value"][0]
                    with services.lock:
                        services.lookups.append(value)
                    self.answer(json.dumps({"score": 90 if value in services.bad else 10}))
                elif url.path == "/framework":
                    self.answer(json.dumps(services.framework))
                else:
                    self.send_error(404)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with services.lock:
                    services.alerts.append((time.time(), body))
                self.answer("{}")

            def answer(self, text: str, content_type: str = "application/json") -> None:
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Intel:
    """The running workers, the services, and the store they write."""

    def __init__(self, services: Services, db: Path, app: object) -> None:
        self.services = services
        self.db = db
        self.app = app

    def query(self, sql: str, *params: object) -> list[tuple]:
        with sqlite3.connect(self.db, timeout=30) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="session")
def intel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intel]:
    work = tmp_path_factory.mktemp("intel")
    services = Services()
    env = {
        "CONVEYOR_BROKER_URL": f"sqlite:///{work / 'conveyor.sqlite3'}",
        "INTEL_DB": str(work / "intel.db"),
        "INTEL_REPUTATION_URL": f"{services.url}/reputation",
        "INTEL_WEBHOOK_URL": f"{services.url}/webhook",
        "INTEL_FRAMEWORK_URL": f"{services.url}/framework",
    }
    os.environ.update(env)  # this process sends tasks to the same broker
    log_path = work / "run.log"
    command = [sys.executable, "-m", "conveyor.cli.main", "-A", "intel", "run", "--no-dashboard"]
    command += ["-Q", QUEUES, "--worker-per-queue", "-P", "threads", "-c", "4"]
    with open(log_path, "wb") as log:
        run = subprocess.Popen(
            command, cwd=work, env={**os.environ, "PYTHONPATH": str(HERE)}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    from intel.celery import app

    try:
        wait_for(
            lambda: log_path.read_bytes().count(b"ready.") >= 4 or run.poll() is not None,
            timeout=60,
            message="the workers did not start",
        )
        assert run.poll() is None, log_path.read_text()
        yield Intel(services, work / "intel.db", app)
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0, log_path.read_text()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
        app.close()
        services.stop()
