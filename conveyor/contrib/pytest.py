"""pytest fixtures, Celery's ``celery.contrib.pytest`` with ``conveyor`` for ``celery``.

Registered as the ``conveyor`` plugin (``pytest11`` entry point), so installing
Conveyor makes them available; ``-p no:conveyor`` turns them off.

- ``conveyor_app``: a fresh app for the test, current (``@shared_task`` tasks bind to
  it) and forgotten afterwards. Its settings come from ``conveyor_config`` (default:
  a private in-memory broker and result store) and ``conveyor_parameters`` (keyword
  arguments of ``Conveyor()``); ``conveyor_includes`` lists modules to import.
- ``conveyor_worker``: a real worker (threads pool) in a thread of the test process,
  consuming the app's default queue for the duration of the test; keyword arguments
  of ``conveyor.testing.start_worker`` come from ``conveyor_worker_parameters``.

Override any of the ``conveyor_*`` configuration fixtures in a conftest.py or a
test module. A Django project that wants its own app (its ``@app.task`` functions,
its ``CELERY_*`` settings) overrides ``conveyor_app`` to return it. Tasks run in the
worker's threads, with their own database connections: they see only committed
rows, so Django tests that use the worker need a transactional test
(``TransactionTestCase``, pytest-django's ``transactional_db``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported by the fixtures: loading the plugin costs every pytest run nothing
    from conveyor.app import Conveyor
    from conveyor.worker.consumer import Consumer


@pytest.fixture
def conveyor_config() -> Mapping[str, Any]:
    """Settings of ``conveyor_app``: override to change them (e.g. ``task_routes``)."""
    return {"broker_url": f"memory://conveyor-pytest-{uuid.uuid4().hex}"}


@pytest.fixture
def conveyor_parameters() -> Mapping[str, Any]:
    """Keyword arguments of ``Conveyor()`` for ``conveyor_app`` (``task_cls``, ``backend``...)."""
    return {}


@pytest.fixture
def conveyor_includes() -> Sequence[str]:
    """Modules ``conveyor_app`` imports before the worker starts (where tasks are defined)."""
    return ()


@pytest.fixture
def conveyor_worker_parameters() -> Mapping[str, Any]:
    """Keyword arguments of ``conveyor.testing.start_worker`` (``concurrency``, ``queues``...)."""
    return {}


@pytest.fixture
def conveyor_app(
    conveyor_config: Mapping[str, Any],
    conveyor_parameters: Mapping[str, Any],
    conveyor_includes: Sequence[str],
) -> Iterator[Conveyor]:
    """A Conveyor app for this test, current while it runs."""
    from conveyor import app as app_module

    previous = app_module._current
    made = app_module.Conveyor("conveyor.testapp", include=list(conveyor_includes), **conveyor_parameters)
    try:
        made.conf.update(conveyor_config)
        yield made
    finally:
        app_module.release_app(made, restore=previous)


@pytest.fixture
def conveyor_worker(
    conveyor_app: Conveyor, conveyor_worker_parameters: Mapping[str, Any]
) -> Iterator[Consumer]:
    """A worker running ``conveyor_app``'s tasks in threads of this process during the test."""
    from conveyor.testing import start_worker

    with start_worker(conveyor_app, **conveyor_worker_parameters) as worker:
        yield worker
