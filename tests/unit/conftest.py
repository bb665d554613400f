"""Fixtures for every unit test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import app as app_module


@pytest.fixture(autouse=True)
def shared_tasks_stay_in_their_test() -> Iterator[None]:
    """A ``@shared_task`` binds to every app made after it, as in Celery: one defined
    by a test would otherwise appear in the apps of whichever tests run later in the
    same process (the order differs from run to run with pytest-xdist)."""
    saved = list(app_module._shared)
    yield
    app_module._shared[:] = saved
