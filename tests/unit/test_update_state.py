"""Task.update_state outside a worker: the rules, on the memory backend."""

from __future__ import annotations

import pytest

from conveyor import Conveyor


def test_update_state_needs_a_task_id_and_refuses_final_states() -> None:
    app = Conveyor("u", broker="memory://", backend="memory://", set_as_current=False)

    @app.task(name="u.job")
    def job() -> None: ...

    with pytest.raises(RuntimeError, match="needs task_id outside a running task"):
        job.update_state(state="PROGRESS", meta={"current": 1})
    with pytest.raises(ValueError, match="cannot set SUCCESS"):
        job.update_state(task_id="x", state="SUCCESS")
    job.update_state(task_id="x", state="UPLOADING", meta={"bytes": 10})
    result = app.AsyncResult("x")
    assert result.state == "UPLOADING" and result.info == {"bytes": 10} and not result.ready()
    app.close()


def test_a_task_gives_the_result_handle_of_its_runs_as_celery_does() -> None:
    app = Conveyor("u", broker="memory://", backend="memory://", set_as_current=False)

    @app.task(name="u.job")
    def job() -> None: ...

    job.update_state(task_id="run-1", state="PROGRESS", meta={"current": 1, "total": 2})
    handle = job.AsyncResult("run-1")
    assert handle.id == "run-1" and handle.state == "PROGRESS" and handle.task_name == "u.job"
    app.close()
