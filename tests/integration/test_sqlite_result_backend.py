"""An explicit SQLite result backend next to the SQLite broker, as Celery users write it.

``CELERY_RESULT_BACKEND = CELERY_BROKER_URL`` names the broker's own file: it must be
the broker's store (one connection per thread), because the worker writes a result
inside the transaction that acks its message. A second file must work too.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, states
from conveyor.backends.sqlite import SQLiteBackend

from .conftest import _FAILED, Project

pytestmark = pytest.mark.integration

PROJECT = """
import json, os
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = json.loads(os.environ["TEST_SETTINGS"])
if "CELERY_BROKER_URL" in SETTINGS:
    app = Conveyor("proj")
    app.config_from_object(SETTINGS, namespace="CELERY")
else:
    app = Conveyor("proj", broker=SETTINGS["broker"], backend=SETTINGS["backend"])


@app.task(name="proj.add")
def add(x, y):
    with open(os.path.join(HERE, "runs.log"), "a") as fh:
        fh.write("add\\n")
    return x + y
"""

CASES = {
    "same-url": ("sqlite:///broker.sqlite3", "sqlite:///broker.sqlite3"),
    "relative-vs-absolute": ("sqlite:///broker.sqlite3", "sqlite:///{root}/broker.sqlite3"),
    "with-options": ("sqlite:///broker.sqlite3?synchronous=full", "sqlite:///./broker.sqlite3"),
    "two-files": ("sqlite:///broker.sqlite3", "sqlite:///results.sqlite3"),
}


def _settings(case: str, root: Path) -> dict[str, str]:
    if case == "celery-settings":
        url = "sqlite:///broker.sqlite3"
        return {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}
    broker, backend = CASES[case]
    return {"broker": broker, "backend": backend.format(root=root)}


@pytest.fixture
def sqlite_project(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Project, Any]]:
    (tmp_path / "proj.py").write_text(textwrap.dedent(PROJECT))
    # Relative URLs mean the same file to the worker (started in tmp_path) and to us.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEST_SETTINGS", json.dumps(_settings(request.param, tmp_path)))
    sys.modules.pop("proj", None)
    sys.path.insert(0, str(tmp_path))
    import proj  # type: ignore[import-not-found]

    p = Project(tmp_path)
    try:
        yield p, proj
    finally:
        p.stop_all()
        if request.node.stash.get(_FAILED, False):
            print(f"----- worker0.log -----\n{p.log(0)[-20000:]}")
        proj.app.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("proj", None)


@pytest.mark.parametrize("sqlite_project", [*CASES, "celery-settings"], indirect=True)
def test_result_is_stored_and_one_sigterm_stops_the_worker(sqlite_project: tuple[Project, Any]) -> None:
    p, proj = sqlite_project
    worker = p.start_worker()  # prefork, default concurrency and settings
    result = proj.add.delay(2, 3)
    assert result.get(timeout=30) == 5
    assert result.state == states.SUCCESS
    assert p.count("add") == 1
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert "stayed locked" not in p.log(0)


@pytest.mark.parametrize(
    "broker, backend",
    [
        ("sqlite:///broker.sqlite3", "sqlite:///broker.sqlite3"),
        ("sqlite:///broker.sqlite3", "sqlite:///{root}/broker.sqlite3"),
        ("sqlite:///{root}/broker.sqlite3?synchronous=full", "sqlite:///./sub/../broker.sqlite3"),
    ],
)
def test_the_brokers_own_file_is_the_brokers_store(
    broker: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    app = Conveyor("t", broker=broker.format(root=tmp_path), backend=backend.format(root=tmp_path))
    try:
        store = app.backend
        assert isinstance(store, SQLiteBackend)
        assert store._db is app.broker._db  # type: ignore[attr-defined]
    finally:
        app.close()


def test_another_file_is_a_store_of_its_own(tmp_path: Path) -> None:
    app = Conveyor("t", broker=f"sqlite:///{tmp_path}/b.sqlite3", backend=f"sqlite:///{tmp_path}/r.sqlite3")
    try:
        store = app.backend
        assert isinstance(store, SQLiteBackend)
        assert store.path == str(tmp_path / "r.sqlite3")
        assert store._db is not app.broker._db  # type: ignore[attr-defined]
    finally:
        app.close()
