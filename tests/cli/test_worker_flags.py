"""The worker flags Celery users have in their systemd units and Procfiles, with Celery's meaning."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from conveyor.testing import wait_for
from tests.cli.conftest import Project, assert_usage_error


def _start(project: Project, *args: str, out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as log:
        return subprocess.Popen(
            project.command("-A", "proj", "worker", *args),
            cwd=project.root,
            env=project.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_celery_unit_flags_log_to_a_file_and_hold_a_pidfile(project: Project) -> None:
    flags = (
        "--loglevel=info", "--pool=solo", "-E", "-O", "fair", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "-n", "mailer@%h", "--logfile", "%n.log", "--pidfile", "%n.pid",
    )  # fmt: skip
    worker = _start(project, *flags, out=project.root / "stdout.log")
    logfile, pidfile = project.root / "mailer.log", project.root / "mailer.pid"
    try:
        wait_for(lambda: logfile.exists() and b"ready." in logfile.read_bytes(), timeout=15)
        assert pidfile.read_text().strip() == str(worker.pid)
        assert f"mailer@{socket.getfqdn()} ready." in logfile.read_text()

        # A second worker on the same pidfile refuses to start while the first runs.
        second = project.run("-A", "proj", "worker", "--pool=solo", "--pidfile", "mailer.pid")
        assert second.code == 1 and f"holds pid {worker.pid}, which is running" in second.err, second

        sent = project.run("-A", "proj", "call", "proj.add", "--args", "[1, 2]")
        done = project.run("-A", "proj", "result", sent.out.strip(), "--wait", "10")
        assert "result:    3" in done.out, done
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, logfile.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
    assert not pidfile.exists(), "the pidfile outlived the worker"
    assert (project.root / "stdout.log").read_text() == "", "logged to stderr despite --logfile"


def test_a_stale_pidfile_is_taken_over(project: Project) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (project.root / "w.pid").write_text(f"{dead.pid}\n")
    worker = _start(project, "--pool=solo", "--pidfile", "w.pid", out=project.root / "w.log")
    try:
        wait_for(lambda: b"ready." in (project.root / "w.log").read_bytes(), timeout=15)
        assert (project.root / "w.pid").read_text().strip() == str(worker.pid)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(15)


def test_detach_says_to_run_in_the_foreground(project: Project) -> None:
    result = project.run("-A", "proj", "worker", "--detach")
    assert_usage_error(result, "--detach is not supported", "systemd")


EMPTY = """
import os
from conveyor import Conveyor

app = Conveyor("empty", broker="sqlite:///" + os.path.join(os.path.dirname(__file__), "b.sqlite3"))
"""

SPLIT = """
import os
from conveyor import Conveyor

URL = "sqlite:///" + os.path.join(os.path.dirname(__file__), "b.sqlite3")
app = Conveyor("core", broker=URL)
other = Conveyor("other", broker=URL)   # a second app by mistake, e.g. in feeds/tasks.py

@app.task(name="core.ping")
def ping():
    return "pong"

@other.task(name="feeds.collect")
def collect():
    return 0
"""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (EMPTY, "app 'p' has no task registered"),
        (SPLIT, "a second Conveyor app 'other' on the same broker holds feeds.collect"),
    ],
    ids=["no-tasks", "two-apps"],
)
def test_a_worker_warns_at_start_when_tasks_would_be_unknown(
    project: Project, source: str, expected: str
) -> None:
    project.write("p.py", source.replace('Conveyor("empty"', 'Conveyor("p"'))
    out = project.root / "p.log"
    with open(out, "wb") as log:
        worker = subprocess.Popen(
            project.command("-A", "p", "worker", "--pool=solo"),
            cwd=project.root,
            env=project.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: expected.encode() in out.read_bytes(), timeout=15, message=expected)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(15)
