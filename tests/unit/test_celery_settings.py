"""A Django project's CELERY_* settings: honoured, mapped, or named in one warning at start."""

from __future__ import annotations

from types import SimpleNamespace

from conveyor import Conveyor
from conveyor.worker.main import Worker

DJANGO_SETTINGS = {
    "CELERY_BROKER_URL": "memory://",
    "CELERY_ACCEPT_CONTENT": ["json"],  # what Conveyor does anyway: no warning
    "CELERY_TASK_SERIALIZER": "json",
    "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
    "CELERY_BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 3600, "fanout_prefix": True},
    "CELERY_WORKER_MAX_MEMORY_PER_CHILD": 200_000,
    "CELERY_TASK_DEFAULT_EXCHANGE": "tasks",
    "CELERY_RESULT_EXTENDED": True,
    "CELERY_TASK_ANNOTATIONS": {"*": {"rate_limit": "10/s"}, "proj.add": {"acks_late": True}},
    "CELERY_TASK_QUEUES": [SimpleNamespace(name="email"), {"name": "feeds"}, "default"],
    "CELERY_OUR_OWN_THING": 1,  # not Celery's: silent
}


def _app() -> Conveyor:
    app = Conveyor("proj", set_as_current=False)
    app.config_from_object(DJANGO_SETTINGS, namespace="CELERY")
    return app


def test_mapped_and_honoured_settings() -> None:
    app = _app()

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="proj.other", rate_limit="1/m")
    def other() -> None: ...

    assert app.conf.broker_visibility_timeout == 3600.0
    assert add.acks_late is True and add.rate_limit == "10/s"
    assert other.rate_limit == "10/s"  # '*' applies to every task, as in Celery
    worker = Worker(app, pool="solo")
    assert worker.queues == ["email", "feeds", "default"]
    assert app.known_queues() == ["default", "email", "feeds"]
    app.close()


def test_each_unhonoured_celery_setting_is_one_warning_and_others_are_silent() -> None:
    app = _app()

    @app.task(name="proj.add")
    def add() -> None: ...

    warnings = Worker(app, pool="solo").startup_warnings()
    named = sorted(w.split()[1] for w in warnings)
    assert named == ["task_default_exchange"], warnings  # worker_max_memory_per_child is honoured
    assert any("no exchanges" in w for w in warnings)
    app.close()
