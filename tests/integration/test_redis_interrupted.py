"""A Redis call interrupted by a signal inside a task must not leave its reply behind.

The soft time limit (like revoke-terminate and Ctrl-C) raises from a signal handler,
wherever the task is: here, inside ``AsyncResult.get()``, blocked on Redis. The reply
to that command is still on its way; were the connection kept, the next command on the
thread would read it as its own. The same worker child then runs more tasks that each
read a known result and must get exactly it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.base import ResultRecord

from ..redis_server import REDIS_SERVER, RedisServer, redis_server_or_skip

pytestmark = pytest.mark.integration

PROJECT = """
import os
from conveyor import Conveyor, SoftTimeLimitExceeded

app = Conveyor("interp", broker=os.environ["TEST_BROKER_URL"])


@app.task(name="interp.never")
def never():
    return "never runs: its queue has no worker"


@app.task(name="interp.waiter", soft_time_limit=0.5)
def waiter():
    try:
        never.apply_async(queue="nobody").get(timeout=3)
    except SoftTimeLimitExceeded:
        return ("interrupted", os.getpid())
    return ("not interrupted", os.getpid())


@app.task(name="interp.echo")
def echo(n, known_id, expected):
    # Two Redis round trips from inside the task: a read and a send.
    seen = app.AsyncResult(known_id).result
    app.send_task("interp.never", args=(), queue="nobody")
    return [n, seen == expected, os.getpid()]
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which(REDIS_SERVER) is None:
        redis_server_or_skip()
    directory = tmp_path / "redis"
    directory.mkdir()
    own = RedisServer(directory)
    own.start()
    try:
        yield own
    finally:
        own.stop()


def test_soft_limit_inside_get_leaves_the_connection_in_step(server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "interp.py").write_text(textwrap.dedent(PROJECT))
    env = {**os.environ, "TEST_BROKER_URL": server.url, "PYTHONPATH": str(tmp_path)}
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("interp", None)
    os.environ["TEST_BROKER_URL"] = server.url
    try:
        import interp  # type: ignore[import-not-found]

        app = interp.app
        known = ResultRecord(task_id="known-result", state="SUCCESS", result={"known": 42})
        app.backend.store([known])
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "interp", "worker", "-c", "1", "-l", "info"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            state, first_pid = interp.waiter.delay().get(timeout=30)
            assert state == "interrupted"
            results = [interp.echo.delay(n, known.task_id, {"known": 42}) for n in range(200)]
            got = [r.get(timeout=30) for r in results]
            assert [g[0] for g in got] == list(range(200))
            assert all(g[1] for g in got), "a task read another command's reply"
            assert {g[2] for g in got} == {first_pid}, "the interrupted child was replaced"
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
            log.close()
            print((tmp_path / "worker.log").read_text(errors="replace")[-5000:])
        app.close()
    finally:
        os.environ.pop("TEST_BROKER_URL", None)
        sys.path.remove(str(tmp_path))
        sys.modules.pop("interp", None)
