"""The task page links a task's parent and children, read from the result backend:
shown with task events off, where the event index knows nothing of them."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (the dev extra)")

from conveyor import Conveyor  # noqa: E402
from conveyor.testing import run_until_empty  # noqa: E402
from tests.dashboard.conftest import client  # noqa: E402


def test_the_task_page_links_parent_and_children_from_the_result_backend(app: Conveyor) -> None:
    @app.task(name="dash.add")
    def add(x: int, y: int) -> int:
        return x + y

    last = (add.s(1, 1) | add.s(10) | add.s(100))()
    middle, first = last.parent, last.parent.parent
    run_until_empty(app)
    c = client(app)
    detail = c.get(f"/api/tasks/{middle.id}").json()
    assert (detail["parent_id"], detail["children"]) == (first.id, [last.id])
    html = c.get(f"/tasks/{middle.id}").text
    assert f'href="/tasks/{first.id}"' in html and f'href="/tasks/{last.id}"' in html
    assert c.get(f"/api/tasks/{first.id}").json()["children"] == [middle.id]
