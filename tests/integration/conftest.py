"""Real worker processes against a real SQLite file.

Each test gets its own directory with a ``proj`` module (the tasks below) and a
broker file; workers are started with the real CLI in subprocesses and stopped (or
SIGKILLed) by the test. Task bodies append to ``runs.log`` so a test can count how
many times each task really ran, whether or not its result was stored.
"""

from __future__ import annotations

import contextlib
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

PROJECT = """
import os, time
from conveyor import Conveyor, SoftTimeLimitExceeded

HERE = os.path.dirname(os.path.abspath(__file__))
# TEST_BROKER_URL (set before the project fixture) runs the same project on another broker.
app = Conveyor("proj", broker=os.environ.get("TEST_BROKER_URL") or "sqlite:///" + os.path.join(HERE, "broker.sqlite3"))
app.conf.update(broker_visibility_timeout=float(os.environ.get("TEST_VISIBILITY", "30")), worker_shutdown_timeout=20)


def record(*parts):
    line = " ".join(str(p) for p in parts) + "\\n"
    with open(os.path.join(HERE, "runs.log"), "a") as fh:
        fh.write(line)


@app.task(name="proj.add")
def add(x, y):
    return x + y


@app.task(name="proj.mark", acks_late=True)
def mark(n, sleep=0.0):
    record("mark", n)
    if sleep:
        time.sleep(sleep)
    return n


@app.task(name="proj.slow", acks_late=True)
def slow(key, seconds):
    record("start", key)
    time.sleep(seconds)
    record("done", key)
    return key


@app.task(name="proj.flaky", bind=True, max_retries=5)
def flaky(self, key, fail_times):
    record("flaky", key, self.request.retries)
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError("upstream down"), countdown=0.2 * 2 ** self.request.retries)
    return "ok after %d" % self.request.retries


@app.task(name="proj.doomed", autoretry_for=(ConnectionError,), retry_backoff=0.1, retry_jitter=False,
          retry_kwargs={"max_retries": 2})
def doomed(key):
    record("doomed", key)
    raise ConnectionError("still down")


@app.task(name="proj.soft", soft_time_limit=0.3)
def soft():
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        record("soft-caught")
        raise
    return "not reached"


@app.task(name="proj.hard", time_limit=0.5)
def hard():
    record("hard-start", os.getpid())
    time.sleep(30)


@app.task(name="proj.pid")
def pid():
    return os.getpid()


@app.task(name="proj.limited", rate_limit="5/s")
def limited(n):
    record("limited", n, "%.4f" % time.time())
    return n


@app.task(name="proj.other")
def other(n):
    record("other", n, "%.4f" % time.time())
    return n


@app.task(name="proj.total")
def total(values):
    return sum(values)


@app.task(name="proj.tally")
def tally(values):
    record("tally", len(values))
    return sum(values)


@app.task(name="proj.progress", bind=True)
def progress(self, total, go_file):
    # Reports each step, then waits for the test to have seen it (go_file grows by a line).
    for step in range(1, total + 1):
        self.update_state(state="PROGRESS", meta={"current": step, "total": total})
        deadline = time.time() + 20
        while time.time() < deadline:
            if os.path.exists(go_file) and len(open(go_file).read().split()) >= step:
                break
            time.sleep(0.005)
    return {"done": total}


@app.task(name="proj.order")
def order(n):
    record("order", n)
    return n


@app.task(name="proj.plus")
def plus(x, y=0):
    record("plus", x, y)
    return x + y


@app.task(name="proj.tsum")
def tsum(values):
    record("tsum", len(values))
    return sum(values)


@app.task(name="proj.echo")
def echo(value, *extra):
    record("echo", value, *extra)
    return value


@app.task(name="proj.boom")
def boom(key):
    record("boom", key)
    raise ValueError("boom " + key)


@app.task(name="proj.on_err")
def on_err(request, exc, traceback, tag=None):
    # Celery's error-callback signature: the failed task's request, its exception, its traceback.
    record("on_err", request.id, request.task, type(exc).__name__, str(exc).replace(" ", "_"),
           traceback.startswith("Traceback"), tag)
    return request.id


@app.task(name="proj.spawn")
def spawn(n):
    # Sends its own tasks while it runs: they become its children.
    return [add.delay(i, i).id for i in range(n)]


@app.task(name="proj.spawn_async")
def spawn_async(n):
    # The same from a coroutine: adelay on the async client, its store included.
    import asyncio

    async def send():
        return [(await add.adelay(i, i)).id for i in range(n)]

    return asyncio.run(send())
"""


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.workers: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.env.pop("CONVEYOR_BROKER_URL", None)

    @property
    def runs(self) -> list[list[str]]:
        path = self.root / "runs.log"
        if not path.exists():
            return []
        return [line.split() for line in path.read_text().splitlines() if line]

    def count(self, kind: str) -> int:
        return sum(1 for r in self.runs if r[0] == kind)

    def start_worker(
        self, *args: str, visibility: float = 30.0, name: str | None = None
    ) -> subprocess.Popen[bytes]:
        index = len(self.workers)
        log = open(self.root / f"worker{index}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**self.env, "TEST_VISIBILITY": str(visibility)}
        cmd = [
            sys.executable,
            "-m",
            "conveyor.cli.main",
            "-A",
            "proj",
            "worker",
            "-l",
            "info",
            "-n",
            name or f"w{index}@test",
            *args,
        ]
        proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.workers.append(proc)
        wait_for(
            lambda: b"ready." in (self.root / f"worker{index}.log").read_bytes() or proc.poll() is not None,
            timeout=15,
            message="worker did not start",
        )
        assert proc.poll() is None, self.log(index)
        return proc

    def log(self, index: int = 0) -> str:
        path = self.root / f"worker{index}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@contextlib.contextmanager
def project_from(
    source: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Project, Any]]:
    """A project whose ``proj`` module is ``source``, imported here as the client side;
    its workers are stopped afterwards (and their logs printed when the test failed)."""
    (tmp_path / "proj.py").write_text(textwrap.dedent(source))
    sys.modules.pop("proj", None)
    sys.path.insert(0, str(tmp_path))
    import proj  # type: ignore[import-not-found]

    proj.app.set_current()
    p = Project(tmp_path)
    try:
        yield p, proj
    finally:
        p.stop_all()
        if request.node.stash.get(_FAILED, False):
            # A failure on CI is read from its log: show what the workers said.
            for index in range(len(p.workers)):
                print(f"----- worker{index}.log -----\n{p.log(index)[-20000:]}")
        proj.app.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("proj", None)


@pytest.fixture
def project(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Project, Any]]:
    with project_from(PROJECT, tmp_path, request) as made:
        yield made
