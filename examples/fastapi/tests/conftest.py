"""A real worker (`conveyor -A tasks worker`) on a broker file of the test's own, and
the app imported against the same broker."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.testing import wait_for

HERE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp_path = tmp_path_factory.mktemp("fastapi")
    os.environ["CONVEYOR_BROKER_URL"] = f"sqlite:///{tmp_path / 'conveyor.sqlite3'}"
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "tasks", "worker", "-c", "1", "-l", "info"],
            cwd=HERE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: b"ready." in log.read_bytes() or worker.poll() is not None, timeout=15)
        assert worker.poll() is None, log.read_text()
        for name in ("app", "tasks"):
            sys.modules.pop(name, None)
        import app  # the environment is set: tasks.py's app uses the test's broker

        yield app.api
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(5)
