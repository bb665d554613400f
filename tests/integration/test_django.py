"""``autodiscover_tasks()`` in a Django project, laid out as ``django-admin startproject`` does.

INSTALLED_APPS lists apps both ways Django allows: a package (``"feeds"``) and an
AppConfig path (``"accounts.apps.AccountsConfig"``). The project module follows
Celery's documented ``proj/celery.py``, with ``conveyor`` for ``celery``. Every
Django step runs in a subprocess (a worker, or ``python -c``), because Django's
settings are configured once per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from tests.integration.conftest import Project

pytest.importorskip("django", reason="Django is not installed (the dev extra has it)")

pytestmark = pytest.mark.integration

FILES = {
    "proj/__init__.py": "from .celery import app\n",
    "proj/celery.py": """
        import os
        from conveyor import Conveyor

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
        app = Conveyor("proj")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()
    """,
    "proj/settings.py": """
        import os

        BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        SECRET_KEY = "not-a-secret"
        INSTALLED_APPS = [
            "django.contrib.contenttypes",
            "accounts.apps.AccountsConfig",
            "feeds",
            "quiet",
        ] + [app for app in os.environ.get("TEST_EXTRA_APPS", "").split(",") if app]
        CELERY_BROKER_URL = "sqlite:///" + os.path.join(BASE_DIR, "broker.sqlite3")
    """,
    "accounts/__init__.py": "",
    "accounts/apps.py": """
        from django.apps import AppConfig


        class AccountsConfig(AppConfig):
            name = "accounts"
    """,
    "accounts/tasks.py": """
        import os
        from conveyor import shared_task


        @shared_task
        def send_activation_email(user_id):
            with open(os.path.join(os.environ["TEST_RUNS_DIR"], "runs.log"), "a") as fh:
                fh.write("activation %s\\n" % user_id)
            return "sent to %s" % user_id
    """,
    "feeds/__init__.py": "",
    "feeds/tasks.py": """
        from conveyor import shared_task


        @shared_task
        def poll(source):
            return "polled %s" % source
    """,
    "quiet/__init__.py": "",  # an app without a tasks module: nothing to import, no error
    "broken/__init__.py": "",
    "broken/apps.py": """
        from django.apps import AppConfig


        class BrokenConfig(AppConfig):
            name = "broken"
    """,
}
BROKEN_TASKS = {
    "import": "import a_dependency_that_is_not_installed\n",
    "syntax": "def oops(:\n    pass\n",
}


@pytest.fixture
def django_project(tmp_path: Path) -> Iterator[Project]:
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    project = Project(tmp_path)
    project.env.pop("DJANGO_SETTINGS_MODULE", None)
    project.env["TEST_RUNS_DIR"] = str(tmp_path)
    try:
        yield project
    finally:
        project.stop_all()


def _python(project: Project, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=project.root,
        env={**project.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_both_installed_apps_forms_are_discovered(django_project: Project) -> None:
    # Importing proj (Celery's proj/celery.py, before django.setup()) imports no tasks
    # module: discovery waits for Django; the worker's start runs it (import_includes).
    early = _python(
        django_project,
        """
        import json, proj
        listed = lambda: sorted(n for n in proj.app.tasks if not n.startswith("conveyor."))
        print(json.dumps(listed()))
        proj.app.import_includes()
        print(json.dumps(listed()))
        """,
    )
    assert early.returncode == 0, early.stderr
    expected = ["accounts.tasks.send_activation_email", "feeds.tasks.poll"]
    assert [json.loads(line) for line in early.stdout.splitlines()] == [[], expected]
    # After django.setup(): the app registry has resolved every entry already.
    ready = _python(
        django_project,
        """
        import json, os
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
        import django
        django.setup()
        from django.conf import settings
        from conveyor import Conveyor
        app = Conveyor("late")
        # Celery's older spelling passes the entries themselves, lazily.
        print(json.dumps([app.autodiscover_tasks(), app.autodiscover_tasks(lambda: settings.INSTALLED_APPS)]))
        """,
    )
    assert ready.returncode == 0, ready.stderr
    assert json.loads(ready.stdout) == [["accounts.tasks", "feeds.tasks"]] * 2


def test_a_worker_runs_tasks_of_an_app_listed_by_its_appconfig(django_project: Project) -> None:
    django_project.start_worker("-P", "threads", "-c", "2")
    client = Conveyor(
        "client", broker=f"sqlite:///{django_project.root / 'broker.sqlite3'}", set_as_current=False
    )
    try:
        sent = client.send_task("accounts.tasks.send_activation_email", args=[42])
        polled = client.send_task("feeds.tasks.poll", args=["rss"])
        assert polled.get(timeout=60) == "polled rss"
        assert sent.get(timeout=60) == "sent to 42", client.broker.dead_letters()
        assert client.broker.dead_letters() == []
        assert django_project.count("activation") == 1
    finally:
        client.close()


@pytest.mark.parametrize(("entry", "fault"), [("broken.apps.BrokenConfig", "import"), ("broken", "syntax")])
def test_a_tasks_module_that_fails_to_import_stops_the_worker(
    django_project: Project, entry: str, fault: str
) -> None:
    (django_project.root / "broken" / "tasks.py").write_text(BROKEN_TASKS[fault])
    env = {**django_project.env, "TEST_EXTRA_APPS": entry}
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", "worker", "-P", "solo"],
        cwd=django_project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot import broken.tasks" in lines[0], lines
    assert f"INSTALLED_APPS entry {entry!r}" in lines[0], lines
    cause = "a_dependency_that_is_not_installed" if fault == "import" else "SyntaxError"
    assert cause in lines[0], lines
