"""End to end through the command line only: a worker, ``call``, ``result --wait``, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess

from conveyor.testing import wait_for
from tests.cli.conftest import Project


def test_worker_runs_a_called_task_and_stops_on_sigterm(project: Project) -> None:
    log_path = project.root / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            project.command("-A", "proj", "worker", "-c", "1", "--pool", "solo", "-n", "cli-test@host"),
            cwd=project.root,
            env=project.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a failed test can kill its whole tree
        )
    try:
        wait_for(
            lambda: b"ready." in log_path.read_bytes() or worker.poll() is not None,
            timeout=15,
            message="the worker did not start",
        )
        assert worker.poll() is None, log_path.read_text()

        sent = project.run("-A", "proj", "call", "proj.add", "--args", "[20, 22]")
        assert sent.code == 0, sent
        done = project.run("-A", "proj", "result", sent.out.strip(), "--wait", "10")
        assert done.code == 0, done
        assert "state:     SUCCESS" in done.out and "result:    42" in done.out
        assert "cli-test@host" in done.out

        failed = project.run("-A", "proj", "call", "proj.fail")
        outcome = project.run("-A", "proj", "result", failed.out.strip(), "--wait", "10")
        assert outcome.code == 1, outcome
        assert "FAILURE" in outcome.out and "ValueError: boom" in outcome.out and "Traceback" in outcome.out

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0, log_path.read_text()
        assert "warm shutdown" in log_path.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
