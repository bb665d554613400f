"""``conveyor call`` with -A checks the name and the arguments before sending."""

from __future__ import annotations

from .conftest import Project, assert_usage_error


def test_unknown_task_name_is_a_usage_error_and_sends_nothing(project: Project) -> None:
    result = project.run("-A", "proj", "call", "proj.ad", "--args", "[1, 2]")
    assert_usage_error(result, "'proj.ad' is not registered", "Did you mean 'proj.add'?", "--force")
    assert not [s for s in project.app().broker.queue_stats() if s.ready], "a message was sent"


def test_arguments_that_do_not_fit_are_a_usage_error(project: Project) -> None:
    too_many = project.run("-A", "proj", "call", "proj.add", "--args", "[1, 2, 3]")
    assert_usage_error(too_many, "do not fit proj.add(x, y)", "too many positional arguments")
    wrong_kw = project.run("-A", "proj", "call", "proj.add", "--kwargs", '{"x": 1, "y": 2, "z": 3}')
    assert_usage_error(wrong_kw, "do not fit proj.add(x, y)", "'z'")
    assert not [s for s in project.app().broker.queue_stats() if s.ready], "a message was sent"


def test_force_sends_what_the_app_does_not_know(project: Project) -> None:
    result = project.run("-A", "proj", "call", "billing.tasks.charge", "--args", '["x"]', "--force")
    assert result.code == 0, result
    stats = {s.name: s.ready for s in project.app().broker.queue_stats()}
    assert stats == {"default": 1}


def test_a_fitting_call_is_sent(project: Project) -> None:
    result = project.run("-A", "proj", "call", "proj.add", "--kwargs", '{"x": 1, "y": 2}')
    assert result.code == 0, result
    assert len(result.out.strip()) >= 32  # the task id
