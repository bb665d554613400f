"""The monitoring unit tests: an app on memory:// or a SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    if request.param == "memory":
        url = f"memory://monitor-{uuid.uuid4().hex}"
    else:
        url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    application = Conveyor("mon", broker=url, set_as_current=False)

    @application.task(name="mon.add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        yield application
    finally:
        application.close()
