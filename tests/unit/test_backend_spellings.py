"""Celery's result backend spellings, as Celery and Django projects write them.

``django-db`` (django-celery-results) and ``rpc://`` ask for results the project can
read back; Conveyor keeps them in the broker's store, which the Django admin, the CLI
and the dashboard show. ``db+<SQLAlchemy URL>`` names a database: Conveyor's own tables
go there (SQLite or PostgreSQL, whatever the driver suffix). Anything else Conveyor
cannot store in is one clear line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.backends.base import ResultRecord
from conveyor.exceptions import ConfigurationError


@pytest.mark.parametrize("spelling", ["django-db", "rpc://", "rpc", "DJANGO-DB"])
def test_results_celery_keeps_for_the_project_go_to_the_broker_store(tmp_path: Path, spelling: str) -> None:
    broker = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    app = Conveyor("spell", broker=broker, backend=spelling)
    reference = Conveyor("ref", broker=broker)
    try:
        app.backend.store([ResultRecord(task_id="t1", state="SUCCESS", result=42)])
        assert type(app.backend) is type(reference.backend)
        record = reference.backend.get("t1")  # the broker's own store holds it
        assert record is not None and record.result == 42
    finally:
        app.close()
        reference.close()


def test_db_plus_sqlite_is_an_sqlite_result_store(tmp_path: Path) -> None:
    results = tmp_path / "results.sqlite3"
    app = Conveyor("spell", broker="memory://", backend=f"db+sqlite:///{results}")
    try:
        app.backend.store([ResultRecord(task_id="t2", state="SUCCESS", result="ok")])
    finally:
        app.close()
    reader = Conveyor("ref", broker="memory://", backend=f"sqlite:///{results}")
    try:
        record = reader.backend.get("t2")
        assert record is not None and record.result == "ok"
    finally:
        reader.close()


@pytest.mark.parametrize(
    "spelling",
    [
        "db+postgresql://app:secret@db.example:5433/shop",
        "db+postgresql+psycopg2://app:secret@db.example:5433/shop",
        "db+postgresql+psycopg://app:secret@db.example:5433/shop",
        "db+postgres://app:secret@db.example:5433/shop",
    ],
)
def test_db_plus_postgresql_with_any_driver_is_a_postgresql_result_store(spelling: str) -> None:
    pytest.importorskip("psycopg")
    from conveyor.backends.postgres import PostgresBackend

    app = Conveyor("spell", broker="memory://", backend=spelling)
    backend = app.backend  # made, not connected: nothing listens at db.example
    assert isinstance(backend, PostgresBackend)
    assert backend._db.conninfo == "postgresql://app:secret@db.example:5433/shop"


@pytest.mark.parametrize(
    ("spelling", "named"),
    [
        ("db+mysql://app@db.example/shop", "mysql"),
        ("cache+memcached://127.0.0.1:11211/", "cache+memcached"),
        ("django-cache", "django-cache"),
    ],
)
def test_a_backend_conveyor_cannot_store_in_is_one_clear_line(spelling: str, named: str) -> None:
    app = Conveyor("spell", broker="memory://", backend=spelling)
    with pytest.raises(ConfigurationError) as caught:
        _ = app.backend
    text = str(caught.value)
    assert "\n" not in text and named in text and "postgresql://" in text, text


def test_every_reader_sees_one_spelling_from_settings_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Django settings (``CELERY_RESULT_BACKEND``), the environment and the CLI's
    readers (``conveyor report``, ``migrate``, the async client) see the store's URL."""

    class DjangoSettings:
        CELERY_BROKER_URL = "memory://"
        CELERY_RESULT_BACKEND = "db+postgresql+psycopg2://app@db.example/shop"

    app = Conveyor("spell")
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert app.conf.result_backend == "postgresql://app@db.example/shop"
    app.config_from_object(type("S", (), {"CELERY_RESULT_BACKEND": "django-db"}), namespace="CELERY")
    assert app.conf.result_backend is None

    monkeypatch.setenv("CONVEYOR_RESULT_BACKEND", "rpc://")
    assert Conveyor("env", broker="memory://").conf.result_backend is None
