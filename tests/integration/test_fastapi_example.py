"""examples/fastapi: routes that enqueue with ``adelay`` and await with ``aget``,
driven through httpx's ASGI transport, with a real worker on SQLite."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.testing import wait_for

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi"


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    monkeypatch.setenv("CONVEYOR_BROKER_URL", f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    monkeypatch.syspath_prepend(str(folder))
    for name in ("app", "tasks"):
        sys.modules.pop(name, None)
    import app as example_app  # type: ignore[import-not-found]

    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "tasks", "worker", "-c", "1", "-l", "info"],
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(folder)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: b"ready." in log.read_bytes() or worker.poll() is not None, timeout=15)
        assert worker.poll() is None, log.read_text()
        yield example_app
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(5)
        for name in ("app", "tasks"):
            sys.modules.pop(name, None)


def test_routes_enqueue_and_await_results_from_a_real_worker(example: Any) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=example.api)
        async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
            queued = await client.post("/count", json={"text": "one two three"})
            assert queued.status_code == 202
            task_id = queued.json()["task_id"]
            done = await client.get(f"/tasks/{task_id}", params={"wait": 20})
            assert done.json() == {"state": "SUCCESS", "result": 3}
            assert (await client.get(f"/tasks/{task_id}")).json() == {"state": "SUCCESS"}
            shouted = await client.post("/shout", json={"text": "hi"}, params={"wait": 20})
            assert shouted.json() == {"shouted": "HI!"}
            refused = await client.post("/shout", json={"text": ""}, params={"wait": 20})
            assert (refused.status_code, refused.json()["detail"]) == (422, "nothing to shout")

    asyncio.run(main())
