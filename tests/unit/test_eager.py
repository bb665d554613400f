from __future__ import annotations

import pytest

from conveyor import Conveyor, states


class Flaky(Exception):
    pass


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("eager", broker="memory://eager", task_always_eager=True)


def test_eager_returns_result_without_a_broker(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert result.state == states.SUCCESS
    assert result.get() == 5


def test_eager_failure_is_stored_or_propagated(app: Conveyor) -> None:
    @app.task
    def boom() -> None:
        raise ValueError("no")

    result = boom.delay()
    assert result.failed()
    assert isinstance(result.result, ValueError)
    assert "ValueError: no" in (result.traceback or "")
    with pytest.raises(ValueError, match="no"):
        result.get()
    app.conf.task_eager_propagates = True
    with pytest.raises(ValueError, match="no"):
        boom.delay()


def test_eager_runs_retries_inline(app: Conveyor) -> None:
    calls: list[int] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self, n: int) -> int:  # type: ignore[no-untyped-def]
        calls.append(self.request.retries)
        if len(calls) < n:
            raise self.retry(countdown=1)
        return len(calls)

    assert flaky.delay(3).get() == 3
    assert calls == [0, 1, 2]


def test_eager_autoretry_exhausts(app: Conveyor) -> None:
    attempts: list[int] = []

    @app.task(autoretry_for=(Flaky,), retry_kwargs={"max_retries": 2}, retry_backoff=True)
    def always() -> None:
        attempts.append(1)
        raise Flaky("down")

    result = always.delay()
    assert result.failed() and isinstance(result.result, Flaky)
    assert len(attempts) == 3


def test_eager_checks_arguments(app: Conveyor) -> None:
    @app.task
    def f(x: object) -> None:
        return None

    with pytest.raises(TypeError, match="cannot be sent as JSON"):
        f.delay(object())
