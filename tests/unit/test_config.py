from __future__ import annotations

import types

import pytest

from conveyor import Conveyor
from conveyor.config import Settings
from conveyor.exceptions import ConfigurationError


def test_defaults() -> None:
    conf = Settings(environ={})
    assert conf.broker_url == "sqlite:///conveyor.sqlite3"
    assert conf.task_default_queue == "default"
    assert conf.broker_visibility_timeout == 30
    assert conf.result_expires == 86400


def test_environment_is_read_and_typed() -> None:
    conf = Settings(
        environ={
            "CONVEYOR_BROKER_URL": "memory://x",
            "CONVEYOR_TASK_ACKS_LATE": "true",
            "CONVEYOR_WORKER_CONCURRENCY": "3",
            "CONVEYOR_RESULT_BACKEND": "false",
            "CONVEYOR_TASK_ROUTES": '{"a.*": "q"}',
        }
    )
    assert conf.broker_url == "memory://x"
    assert conf.task_acks_late is True
    assert conf.worker_concurrency == 3
    assert conf.result_backend is False
    assert conf.task_routes == {"a.*": "q"}


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_WORKER_CONCURRENCY"):
        Settings(environ={"CONVEYOR_WORKER_CONCURRENCY": "many"})


def test_code_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "memory://env")
    assert Conveyor("t").conf.broker_url == "memory://env"
    assert Conveyor("t", broker="memory://code").conf.broker_url == "memory://code"


def test_config_from_object_with_django_style_namespace() -> None:
    settings = types.SimpleNamespace(
        CELERY_BROKER_URL="memory://celery",
        CELERY_TASK_ACKS_LATE=True,
        CELERY_SOMETHING_CONVEYOR_IGNORES=1,
        DATABASES={},
    )
    app = Conveyor("t")
    app.config_from_object(settings, namespace="CELERY")
    assert app.conf.broker_url == "memory://celery"
    assert app.conf.task_acks_late is True
    assert app.conf.extra == {"something_conveyor_ignores": 1}


def test_config_from_module_reads_lowercase_names_only() -> None:
    module = types.ModuleType("cfg")
    module.broker_url = "memory://mod"  # type: ignore[attr-defined]
    module.CONSTANT = 1  # type: ignore[attr-defined]
    module.os = types  # type: ignore[attr-defined]
    app = Conveyor("t")
    app.config_from_object(module)
    assert app.conf.broker_url == "memory://mod"
    assert "os" not in app.conf.extra


def test_unknown_attribute_assignment_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting 'brokr_url'"):
        Settings(environ={}).brokr_url = "x"  # type: ignore[attr-defined]


def test_typed_names_match_the_settings_table() -> None:
    from conveyor.config import SETTINGS

    assert set(Settings.__annotations__) == {s.name for s in SETTINGS}
