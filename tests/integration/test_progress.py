"""update_state: a client polling AsyncResult sees each custom state and its meta while the task runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.testing import wait_for
from tests.redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    return str(request.param)


def test_progress_is_seen_while_the_task_runs_then_the_result(
    broker: str, project: Any, tmp_path: Path
) -> None:
    p, proj = project
    p.start_worker("-c", "1")
    go = tmp_path / "go"
    result = proj.progress.delay(3, str(go))
    for step in (1, 2, 3):
        wait_for(lambda step=step: result.state == "PROGRESS" and result.info["current"] == step, timeout=20)
        assert result.info == {"current": step, "total": 3}
        assert not result.ready()
        with open(go, "a") as fh:  # let the task go on to its next step
            fh.write("ok\n")
    assert result.get(timeout=20) == {"done": 3}
    assert result.state == "SUCCESS" and result.info == {"done": 3}
