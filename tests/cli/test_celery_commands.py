"""Our users' own Celery command lines, `celery` replaced by `conveyor`: exit 0 and the effect checked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest

from conveyor.testing import wait_for
from tests.cli.conftest import Project, assert_usage_error


class Running:
    def __init__(self, project: Project, *args: str, name: str) -> None:
        self.log = project.root / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                project.command(*args),
                cwd=project.root,
                env=project.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def running(project: Project) -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.stop()


def _worker(project: Project, running: list[Running]) -> Running:
    w = Running(
        project, "-A", "proj", "worker", "--loglevel=info", "--pool=solo", "-n", "w1@test", name="worker"
    )
    running.append(w)
    wait_for(lambda: "ready." in w.text(), timeout=15, message="worker did not start")
    return w


def test_control_rate_limit_revoke_and_shutdown(project: Project, running: list[Running]) -> None:
    worker = _worker(project, running)
    limited = project.run("-A", "proj", "control", "rate_limit", "proj.add", "1/s")
    assert limited.code == 0 and limited.out.startswith("w1@test: ok"), limited

    # Revoked before it is sent, so no race with the worker: it must drop the task when it comes.
    task_id = "0b7c4c3e-revoked-by-control"
    revoked = project.run("-A", "proj", "control", "revoke", task_id)
    assert revoked.code == 0 and "w1@test: ok" in revoked.out, revoked
    project.app().send_task("proj.add", args=[1, 2], task_id=task_id)
    outcome = project.run("-A", "proj", "result", task_id, "--wait", "15")
    assert "REVOKED" in outcome.out, outcome

    stopped = project.run("-A", "proj", "control", "shutdown")
    assert stopped.code == 0 and "w1@test: ok" in stopped.out, stopped
    assert worker.proc.wait(15) == 0, worker.text()


def test_control_without_a_worker_is_one_line(project: Project) -> None:
    result = project.run("-A", "proj", "control", "shutdown", "--timeout", "0.3")
    assert result.code == 1 and "no worker replied to shutdown" in result.err, result


def test_report_prints_versions_settings_and_the_broker_masked(project: Project) -> None:
    project.write(
        "secret.py",
        """
        import os
        from conveyor import Conveyor

        app = Conveyor("secret", broker="sqlite:///" + os.path.join(os.path.dirname(__file__), "b.sqlite3"))
        app.conf.dashboard_auth = "admin:hunter2"
        app.conf.result_backend = "redis://:hunter2@127.0.0.1:1/0"
        """,
    )
    result = project.run("-A", "secret", "report")
    assert result.code == 0, result
    assert "conveyor:" in result.out and "python:" in result.out and "orjson" in result.out
    assert "reachable" in result.out and "result_backend = redis://:***@127.0.0.1:1/0" in result.out
    assert "hunter2" not in result.out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_flower_serves_the_dashboard_with_flowers_flags(project: Project, running: list[Running]) -> None:
    port = _free_port()
    flower = Running(
        project,
        "-A",
        "proj",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        "--basic_auth=admin:pw",
        name="fl",
    )
    running.append(flower)

    def answers() -> int | None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")
        request.add_header("Authorization", "Basic YWRtaW46cHc=")  # admin:pw
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return int(response.status)
        except OSError:
            return None

    assert wait_for(answers, timeout=20, interval=0.1, message=flower.text()) == 200


def test_beat_with_django_celery_beats_scheduler(project: Project, running: list[Running]) -> None:
    scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    beat = Running(project, "-A", "proj", "beat", "--loglevel=info", "--scheduler", scheduler, name="beat")
    running.append(beat)
    wait_for(lambda: "maps to Conveyor's scheduler" in beat.text(), timeout=15, message=beat.text())
    assert wait_for(lambda: "leader now" in beat.text(), timeout=15, message=beat.text())
    beat.proc.send_signal(signal.SIGTERM)
    assert beat.proc.wait(15) == 0
    bad = project.run("-A", "proj", "beat", "-S", "myproject.MyScheduler")
    assert_usage_error(bad, "'myproject.MyScheduler' is not a scheduler Conveyor knows")


def test_worker_autoscale_flag_errors_are_one_line(project: Project) -> None:
    reversed_bounds = project.run("-A", "proj", "worker", "--autoscale=1,3")
    assert_usage_error(reversed_bounds, "--autoscale", "1 <= MIN <= MAX")
    threads = project.run("-A", "proj", "worker", "--pool=threads", "--autoscale=3,1")
    assert_usage_error(threads, "--autoscale", "--pool=prefork")


def test_control_pool_grow_on_a_solo_worker_says_why_not(project: Project, running: list[Running]) -> None:
    _worker(project, running)
    grown = project.run("-A", "proj", "control", "pool_grow", "2")
    assert grown.code == 1 and "w1@test: error: the solo pool cannot be resized" in grown.out, grown
    added = project.run("-A", "proj", "control", "add_consumer", "feeds")
    assert added.code == 0 and "w1@test: ok (queues ['default', 'feeds'])" in added.out, added
    only = project.run("-A", "proj", "control", "cancel_consumer", "default")
    assert only.code == 0, only
    last = project.run("-A", "proj", "control", "cancel_consumer", "feeds")
    assert last.code == 1 and "only queue" in last.out, last
