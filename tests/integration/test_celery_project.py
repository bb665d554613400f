"""A Celery-style project, moved over by changing imports, on a real prefork worker.

The project has what real Celery code has: a base class with hooks, signal receivers
connected at import, a task that reports progress while a client polls it, msgpack as
the serializer, and a pickle task that a worker refuses (dead-lettered unread) until
its accept_content lists pickle. Runs on SQLite and on Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.testing import wait_for
from tests.redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration

PROJECT = """
import os
from dataclasses import dataclass

from conveyor import Conveyor, Task, signals

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("celeryproj", broker=os.environ["TEST_BROKER_URL"])
app.conf.update(
    task_serializer="msgpack",
    result_serializer="msgpack",
    accept_content=os.environ.get("TEST_ACCEPT", "json,msgpack").split(","),
)


def note(*parts):
    with open(os.path.join(HERE, "notes.log"), "a") as fh:
        fh.write(" ".join(str(p) for p in parts) + "\\n")


class Audited(Task):
    autoretry_for = (ConnectionError,)
    max_retries = 3
    default_retry_delay = 0.05

    def on_success(self, retval, task_id, args, kwargs):
        note("on_success", self.name, retval, os.getpid())

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        note("on_retry", self.name, type(exc).__name__, os.getpid())


@signals.task_prerun.connect
def prerun(sender=None, task_id=None, task=None, args=None, **kwargs):
    note("task_prerun", sender.name, os.getpid())


@signals.task_postrun.connect
def postrun(sender=None, state=None, retval=None, **kwargs):
    note("task_postrun", sender.name, state, os.getpid())


@app.task(base=Audited, name="celeryproj.flaky_add", bind=True)
def flaky_add(self, x, y):
    if self.request.retries == 0:
        raise ConnectionError("first try fails")
    return x + y


@dataclass
class Point:
    x: int
    y: int


@app.task(name="celeryproj.norm", serializer="pickle")
def norm(point):
    return point.x * point.x + point.y * point.y
"""


class Worker:
    def __init__(self, root: Path, env: dict[str, str], accept: str) -> None:
        self.log = root / f"worker-{accept}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "conveyor.cli.main",
                    "-A",
                    "celeryproj",
                    "worker",
                    "-c",
                    "2",
                    "-l",
                    "info",
                ],
                cwd=root,
                env={**env, "TEST_ACCEPT": accept},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: b"ready." in self.log.read_bytes(), timeout=20, message="worker did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture(params=["sqlite", "redis"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Path, dict[str, str]]]:
    url = (
        f"sqlite:///{tmp_path / 'b.sqlite3'}"
        if request.param == "sqlite"
        else fresh_url(redis_server_or_skip())
    )
    (tmp_path / "celeryproj.py").write_text(textwrap.dedent(PROJECT))
    env = {**os.environ, "TEST_BROKER_URL": url, "PYTHONPATH": str(tmp_path)}
    os.environ["TEST_BROKER_URL"] = url
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("celeryproj", None)
    import celeryproj  # type: ignore[import-not-found]

    try:
        yield celeryproj, tmp_path, env
    finally:
        celeryproj.app.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("celeryproj", None)
        os.environ.pop("TEST_BROKER_URL", None)


def test_a_celery_style_project_runs_unchanged(project: tuple[Any, Path, dict[str, str]]) -> None:
    proj, root, env = project
    worker = Worker(root, env, "json,msgpack")
    try:
        assert proj.flaky_add.delay(2, 3).get(timeout=30) == 5  # msgpack in, msgpack out, one retry

        refused = proj.norm.delay(proj.Point(3, 4))
        (entry,) = wait_for(lambda: proj.app.broker.dead_letters(), timeout=20)
        assert "content type 'pickle' refused" in entry.reason, entry.reason
        assert refused.state == "PENDING"
    finally:
        worker.stop()
    notes = [line.split() for line in (root / "notes.log").read_text().splitlines()]
    supervisor = worker.proc.pid
    hooks = [n[:3] for n in notes if n[0].startswith("on_")]
    assert hooks == [
        ["on_retry", "celeryproj.flaky_add", "ConnectionError"],
        ["on_success", "celeryproj.flaky_add", "5"],
    ]
    states = [n[2] for n in notes if n[0] == "task_postrun"]
    assert states == ["RETRY", "SUCCESS"]
    assert {int(n[-1]) for n in notes} and supervisor not in {int(n[-1]) for n in notes}, (
        "ran in the children"
    )

    trusting = Worker(root, env, "json,msgpack,pickle")
    try:
        assert proj.app.broker.replay_dead_letters([entry.id]) == 1
        assert refused.get(timeout=30) == 25
    finally:
        trusting.stop()
