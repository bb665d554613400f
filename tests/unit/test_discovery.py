"""``autodiscover_tasks(packages)`` without Django: what is skipped and what is an error."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError

Make = Callable[[dict[str, str]], str]


@pytest.fixture
def make_package(tmp_path: Path) -> Iterator[Make]:
    """Write a package with the given files under a unique name; returns the name."""
    names: list[str] = []

    def make(files: dict[str, str]) -> str:
        name = f"pkg_{uuid.uuid4().hex[:8]}"
        for rel, text in {"__init__.py": "", **files}.items():
            path = tmp_path / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        names.append(name)
        return name

    sys.path.insert(0, str(tmp_path))
    try:
        yield make
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m.split(".")[0] in names]:
            del sys.modules[module]


@pytest.fixture
def app() -> Iterator[Conveyor]:
    made = Conveyor("discovery", broker="memory://discovery", set_as_current=False)
    try:
        yield made
    finally:
        made.close()


def test_an_appconfig_path_is_resolved_to_its_package(app: Conveyor, make_package: Make) -> None:
    tasks = "from conveyor import shared_task\n\n@shared_task\ndef hello():\n    return 1\n"
    pkg = make_package({"tasks.py": tasks})
    # An AppConfig whose name is the package, as Django's startapp writes it (Django not needed).
    config = make_package({"apps.py": f"class Config:\n    name = {pkg!r}\n"})
    assert app.autodiscover_tasks([f"{config}.apps.Config"]) == [f"{pkg}.tasks"]
    assert f"{pkg}.tasks.hello" in app.tasks


def test_a_package_without_tasks_is_skipped(app: Conveyor, make_package: Make) -> None:
    bare = make_package({"models.py": ""})
    plain_module = make_package({"helpers.py": ""}) + ".helpers"
    assert app.autodiscover_tasks([bare, plain_module]) == []


def test_a_failing_tasks_module_is_an_error_naming_it(app: Conveyor, make_package: Make) -> None:
    pkg = make_package({"tasks.py": "from . import not_here\n"})
    with pytest.raises(ConfigurationError, match=rf"cannot import {pkg}\.tasks \(package '{pkg}'\)") as err:
        app.autodiscover_tasks([pkg])
    assert isinstance(err.value.__cause__, ImportError)


@pytest.mark.parametrize(
    "entry", ["no_such_package_here", "no_such_package_here.apps.Config", "json.NoConfig"]
)
def test_an_entry_that_names_nothing_is_an_error(app: Conveyor, entry: str) -> None:
    with pytest.raises(ConfigurationError, match=entry.split(".")[0]):
        app.autodiscover_tasks([entry])
