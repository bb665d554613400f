"""``conveyor dlq`` by task id, the id people hold (logs, AsyncResult, the dashboard).

A real worker dead-letters a task that exhausted its retries; the CLI lists it with
its task id, shows it and replays it by that id, and ``--reset-retries`` gives it a
fresh retry budget: the worker then runs it with ``request.retries == 0``. On a
SQLite file and on a private Redis.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import states
from conveyor.testing import wait_for

from ..redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration

GATE_TASK = """

@app.task(name="proj.gate", bind=True, max_retries=1)
def gate(self, key):
    record("gate", key, self.request.retries)
    if not os.path.exists(os.path.join(HERE, "gate.open")):
        raise self.retry(exc=ConnectionError("gate %s is closed" % key), countdown=0.05)
    return "passed %s" % key
"""


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "redis":
        # Read by the project module (tests/integration/conftest.py) and by its workers.
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    yield request.param


def _cli(p: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", "dlq", *args],
        cwd=p.root,
        env=p.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _dead_task_ids(app: Any) -> list[str | None]:
    return [e.task_id for e in app.broker.dead_letters()]


def test_dlq_list_show_and_replay_by_task_id_with_a_fresh_retry_budget(broker: str, project: Any) -> None:
    p, proj = project
    with open(p.root / "proj.py", "a") as source:
        source.write(GATE_TASK)
    p.start_worker("-P", "threads", "-c", "2")
    sent = proj.app.send_task("proj.gate", args=["k"])
    wait_for(lambda: _dead_task_ids(proj.app) == [sent.id], timeout=60, message="not dead-lettered")
    assert [r for r in p.runs if r[0] == "gate"] == [["gate", "k", "0"], ["gate", "k", "1"]]

    listed = _cli(p, "list")
    assert listed.returncode == 0, listed
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "TASK", "ID", "TASK"], header
    assert sent.id in row and "proj.gate" in row, row
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (UTC|[A-Z]{3,5}|[+-]\d{4})\b", row), (
        row
    )  # when, with its zone
    assert "gate k is closed" in row, row

    shown = _cli(p, "show", sent.id)
    assert shown.returncode == 0, shown
    assert f"task id:    {sent.id}" in shown.stdout and "task:       proj.gate" in shown.stdout

    (p.root / "gate.open").touch()
    replayed = _cli(p, "replay", sent.id, "--reset-retries")
    assert replayed.returncode == 0, replayed
    assert replayed.stdout.strip() == "Replayed 1 dead letter(s).", replayed
    wait_for(
        lambda: proj.app.backend.get(sent.id).state == states.SUCCESS,  # type: ignore[union-attr]
        timeout=60,
        message="the replayed task did not succeed",
    )
    assert [r for r in p.runs if r[0] == "gate"][2:] == [["gate", "k", "0"]]  # a fresh retry budget
    assert proj.app.broker.dead_letters() == []
    assert sent.get(timeout=5) == "passed k"

    gone = _cli(p, "show", sent.id)
    assert gone.returncode == 1 and f"no dead letter with id or task id '{sent.id}'" in gone.stderr, gone
