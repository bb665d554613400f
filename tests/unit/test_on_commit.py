"""``delay_on_commit``/``apply_async_on_commit`` where Django is not in use: sent at once.

(With Django: tests/integration/test_django_project.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import Conveyor


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Conveyor]:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    made = Conveyor("on-commit", broker="memory://on-commit", set_as_current=False)
    try:
        yield made
    finally:
        made.broker.purge(None)
        made.close()


def test_without_django_both_send_at_once(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay_on_commit(1, 2) is None  # Celery's: nothing to wait on until it is sent
    add.apply_async_on_commit((3, 4), queue="math", priority=7)
    ready = {s.name: s.ready for s in app.broker.queue_stats(["default", "math"])}
    assert ready == {"default": 1, "math": 1}


def test_arguments_that_cannot_travel_are_refused_at_the_call(app: Conveyor) -> None:
    @app.task
    def echo(value: object) -> object:
        return value

    with pytest.raises(TypeError, match="positional argument 0"):
        echo.delay_on_commit(object())
