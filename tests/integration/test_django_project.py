"""The README's Django section, run as written, with PostgreSQL as Django's database.

The project is made the way a user makes it (``django-admin startproject``,
``manage.py startapp``), the files are the README's code blocks, and every command
is the README's; the test only points Django at a private PostgreSQL database (one
per test, dropped after) and adds a few test-only tasks. PostgreSQL runs on
127.0.0.1:5432 (``CONVEYOR_TEST_PG`` overrides); without it these tests skip, and
fail under CI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.testing import wait_for

pytest.importorskip("django", reason="Django is not installed (the dev extra has it)")
psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the dev extra has it)")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PG = os.environ.get("CONVEYOR_TEST_PG", "host=127.0.0.1 port=5432 user=postgres")
BIN = str(Path(sys.executable).parent)


def readme_django() -> tuple[dict[str, tuple[str, bool]], list[list[str]]]:
    """The section's files (path -> (text, appended?)) and its bash blocks' command lines."""
    readme = (ROOT / "README.md").read_text()
    body = readme.split("### Django\n", 1)[1].split("\n### ", 1)[0]
    files: dict[str, tuple[str, bool]] = {}
    for block in re.findall(r"```python\n(.*?)```", body, flags=re.S):
        first, _, rest = block.partition("\n")
        named = re.fullmatch(r"# (\S+\.py)( \(add at the end\))?", first)
        if named:
            files[named.group(1)] = (rest, bool(named.group(2)))
    commands = [
        [ln.split("  #", 1)[0].strip() for ln in b.splitlines() if ln.strip()]
        for b in re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    ]
    return files, commands


# Test-only additions, written after the README's files: Django on PostgreSQL (how
# long connections live comes from the environment, per test), and tasks that show
# which database session they ran on.
TEST_SETTINGS = """
import os

CELERY_BROKER_URL = os.environ.get("TEST_BROKER_URL", CELERY_BROKER_URL)
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.postgresql", "NAME": os.environ["TEST_DATABASE"], "HOST": {host!r},
    "PORT": {port!r}, "USER": {user!r}, "OPTIONS": {{"application_name": "conveyor-test"}},
    "CONN_MAX_AGE": int(os.environ.get("TEST_CONN_MAX_AGE", "0")),
    "CONN_HEALTH_CHECKS": os.environ.get("TEST_CONN_MAX_AGE", "0") != "0",
    "TEST": {{"NAME": os.environ["TEST_DATABASE"]}},  # manage.py test --keepdb: the test's own copy
}}}}
"""
TEST_TASKS = """

@shared_task
def backend_pid(item):
    from django.db import connection

    Order.objects.create(item=item)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]
"""
# A project whose startup touches the database (a check in AppConfig.ready): the
# worker's main process then holds a connection when it forks its children.
TEST_APPS = """

def _query_at_ready(self):
    import os
    from django.db import connection

    if os.environ.get("TEST_QUERY_AT_READY"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            with open(os.environ["TEST_QUERY_AT_READY"], "w") as fh:
                fh.write(str(cursor.fetchone()[0]))


ShopConfig.ready = _query_at_ready
"""


class Site:
    """A Django project on disk, its database and broker, and the processes started in it.

    ``work`` holds what one test writes (its broker file, logs), so tests can share
    one project directory.
    """

    def __init__(self, root: Path, database: str, work: Path | None = None) -> None:
        self.root = root
        self.work = work or root
        self.database = database
        self.workers: list[subprocess.Popen[bytes]] = []
        path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
        self.env = {**os.environ, "PATH": path, "PYTHONPATH": str(root), "TEST_DATABASE": database}
        for name in ("DJANGO_SETTINGS_MODULE", "CONVEYOR_BROKER_URL", "CONVEYOR_APP"):
            self.env.pop(name, None)
        if work is not None:
            self.env["TEST_BROKER_URL"] = f"sqlite:///{work / 'conveyor.sqlite3'}"

    def run(self, line: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shlex.split(line),
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ok(self, line: str, **env: str) -> str:
        done = self.run(line, **env)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def build(self) -> None:
        """The README's first block run, its files written, then this test's additions."""
        files, commands = readme_django()
        for line in commands[0]:
            self.ok(line)
        for rel, (text, append) in files.items():
            with open(self.root / rel, "a" if append else "w") as fh:
                fh.write(("\n" if append else "") + text)
        params = dict(p.split("=", 1) for p in PG.split())
        with open(self.root / "core" / "settings.py", "a") as fh:
            fh.write(TEST_SETTINGS.format(**params))
        with open(self.root / "shop" / "tasks.py", "a") as fh:
            fh.write(TEST_TASKS)
        with open(self.root / "shop" / "apps.py", "a") as fh:
            fh.write(textwrap.dedent(TEST_APPS))

    def migrate(self) -> None:
        _, commands = readme_django()
        for line in commands[1][:2]:  # makemigrations, migrate
            self.ok(line)

    def start_worker(self, line: str, **env: str) -> subprocess.Popen[bytes]:
        log_path = self.work / f"worker{len(self.workers)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                shlex.split(line),
                cwd=self.root,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(proc)
        wait_for(
            lambda: b"ready." in log_path.read_bytes() or proc.poll() is not None,
            timeout=60,
            message="worker did not start",
        )
        assert proc.poll() is None, log_path.read_text()
        return proc

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(f"{PG} dbname={self.database}", autocommit=True) as conn:
            return list(conn.execute(query, params).fetchall())

    def client(self) -> Conveyor:
        """An app on the project's broker, as another process of the project would send."""
        return Conveyor(
            "client", broker=self.env.get("TEST_BROKER_URL") or self._broker(), set_as_current=False
        )

    def _broker(self) -> str:
        return f"sqlite:///{self.root / 'conveyor.sqlite3'}"

    def sessions(self) -> list[int]:
        """The backend pids of the project's open database sessions (not this test's)."""
        rows = self.sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'conveyor-test'",
            self.database,
        )
        return [pid for (pid,) in rows]

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


class Databases:
    """Creates and drops this module's databases on the PostgreSQL server."""

    def __init__(self) -> None:
        try:
            self.admin = psycopg.connect(f"{PG} dbname=postgres", autocommit=True)
        except psycopg.OperationalError as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"PostgreSQL is not reachable at {PG!r}: {exc}")

    def create(self, template: str | None = None) -> str:
        name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
        copy = f' TEMPLATE "{template}"' if template else ""
        self.admin.execute(f'CREATE DATABASE "{name}"{copy}')
        return name

    def drop(self, name: str) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def databases() -> Iterator[Databases]:
    made = Databases()
    try:
        yield made
    finally:
        made.admin.close()


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[Site]:
    """One project, built and migrated once as the README says: each test gets a copy of its database."""
    template = databases.create()
    made = Site(tmp_path_factory.mktemp("site"), template)
    try:
        made.build()
        made.migrate()
        yield made
    finally:
        databases.drop(template)


@pytest.fixture
def site(migrated: Site, databases: Databases, tmp_path: Path) -> Iterator[Site]:
    """The migrated project on a database of this test's own (dropped after) and its own broker."""
    database = databases.create(template=migrated.database)
    made = Site(migrated.root, database, work=tmp_path)
    try:
        yield made
    finally:
        made.stop_all()
        databases.drop(database)


def test_readme_django_section_works_as_written(site: Site) -> None:
    """The ``migrated`` fixture ran the section's first commands (startproject,
    startapp, makemigrations, migrate); the rest run here."""
    _, commands = readme_django()
    worker, shell = commands[1][2:]
    site.ok("python manage.py check")
    site.start_worker(worker)
    created = site.ok(shell).split()[-1]  # Django 5.2 shell may print a line first
    assert site.sql("SELECT id, item FROM shop_order") == [(int(created), "book")]


def test_run_and_beat_set_django_up(site: Site) -> None:
    site.start_worker("conveyor -A core run --no-dashboard -P threads -c 1")
    client = site.client()
    try:
        created = client.send_task("shop.tasks.create_order", args=["book"]).get(timeout=60)
    finally:
        client.close()
    assert site.sql("SELECT id, item FROM shop_order") == [(created, "book")]
    beat = subprocess.Popen(
        shlex.split("conveyor -A core beat"),
        cwd=site.root,
        env=site.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    site.workers.append(beat)
    assert beat.stderr is not None
    first = beat.stderr.readline().decode()
    assert first.startswith("beat "), first + beat.stderr.read().decode()


@pytest.mark.parametrize("conn_max_age", ["0", "60"])
def test_a_connection_dropped_while_the_worker_idles_is_replaced(site: Site, conn_max_age: str) -> None:
    """The server ends the worker's session while it waits (a restart, a failover, an
    idle timeout): the next task still runs, as the next request of a web process
    would. With CONN_MAX_AGE=60 (and CONN_HEALTH_CHECKS) the session outlives a task,
    so one is really there to be ended."""
    site.start_worker("conveyor -A core worker -l info -c 1", TEST_CONN_MAX_AGE=conn_max_age)
    client = site.client()
    try:
        first = client.send_task("shop.tasks.backend_pid", args=["first"]).get(timeout=60)
        ended = site.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'conveyor-test'",
            site.database,
        )
        if conn_max_age != "0":
            assert ended == [(True,)], "the worker kept no session to end"
        wait_for(lambda: first not in site.sessions(), timeout=30, message="the session was not ended")
        second = client.send_task("shop.tasks.backend_pid", args=["second"]).get(timeout=60)
        assert second != first
        assert site.sql("SELECT item FROM shop_order ORDER BY id") == [("first",), ("second",)]
    finally:
        client.close()


def test_a_prefork_child_never_uses_its_parents_connection(site: Site) -> None:
    """The worker's main process holds a session (the project queried in AppConfig.ready)
    when it forks: each child opens its own, and the parent's stays alive (a child that
    closed the inherited one politely would end the parent's session on the server)."""
    marker = site.work / "parent_backend"
    site.start_worker("conveyor -A core worker -l info -c 2", TEST_QUERY_AT_READY=str(marker))
    parent = int(marker.read_text())
    client = site.client()
    try:
        sent = [client.send_task("shop.tasks.backend_pid", args=[f"o{i}"]) for i in range(6)]
        used = {r.get(timeout=60) for r in sent}
        assert parent not in used
        assert site.sql("SELECT count(*) FROM shop_order") == [(6,)]
        assert parent in site.sessions(), "a child ended the parent's session"
    finally:
        client.close()


ON_COMMIT = """
import json, os
import django
from django.conf import settings

settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": os.environ["TEST_DATABASE"],
    "HOST": os.environ["PGHOST"], "PORT": os.environ["PGPORT"], "USER": os.environ["PGUSER"],
}})
django.setup()
from django.db import transaction
from conveyor import Conveyor

app = Conveyor("on-commit", broker="memory://on-commit")


@app.task
def notify(n):
    return n


def sent():
    return sum(s.ready + s.delayed for s in app.broker.queue_stats(["default"]))


seen = {}
with transaction.atomic():
    notify.delay_on_commit(1)
    notify.apply_async_on_commit((2,), countdown=0)
    seen["inside"] = sent()
seen["committed"] = sent()
try:
    with transaction.atomic():
        notify.delay_on_commit(3)
        raise RuntimeError("roll back")
except RuntimeError:
    pass
seen["rolled_back"] = sent()
with transaction.atomic():
    notify.delay_on_commit(4)
    try:
        with transaction.atomic():  # a savepoint rolled back: its sends go with it
            notify.delay_on_commit(5)
            raise RuntimeError("roll back the savepoint")
    except RuntimeError:
        pass
seen["savepoint"] = sent()
notify.delay_on_commit(6)  # autocommit, no transaction open: sent now
seen["autocommit"] = sent()
print(json.dumps(seen))
"""


def test_delay_on_commit_sends_after_commit_and_never_on_rollback(databases: Databases) -> None:
    database = databases.create()
    try:
        params = dict(p.split("=", 1) for p in PG.split())
        env = {**os.environ, "TEST_DATABASE": database, "PGHOST": params["host"]}
        env.update(PGPORT=params["port"], PGUSER=params["user"])
        env.pop("DJANGO_SETTINGS_MODULE", None)
        done = subprocess.run(
            [sys.executable, "-c", ON_COMMIT], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen == {"inside": 0, "committed": 2, "rolled_back": 2, "savepoint": 3, "autocommit": 4}
    finally:
        databases.drop(database)


# A project's test settings and tests, as a Django user writes them: eager tasks from
# CELERY_TASK_ALWAYS_EAGER, and a real worker thread for the test that needs one.
SETTINGS_TEST = """
from .settings import *  # noqa: F403

CELERY_TASK_ALWAYS_EAGER = True
"""
SHOP_TESTS = """
from django.test import TestCase, TransactionTestCase

from conveyor.testing import start_worker
from core.celery import app
from shop.models import Order
from shop.tasks import create_order


class EagerTests(TestCase):
    def test_delay_runs_inline(self):
        self.assertTrue(app.conf.task_always_eager)
        pk = create_order.delay("eager").get()
        self.assertEqual(Order.objects.get(pk=pk).item, "eager")


class WorkerTests(TransactionTestCase):
    def test_a_worker_thread_runs_orm_tasks(self):
        app.conf.task_always_eager = False
        try:
            with start_worker(app, concurrency=2):
                sent = [create_order.delay("t%d" % i) for i in range(3)]
                pks = [result.get(timeout=30) for result in sent]
        finally:
            app.conf.task_always_eager = True
        items = Order.objects.filter(pk__in=pks).values_list("item", flat=True)
        self.assertEqual(sorted(items), ["t0", "t1", "t2"])
        self.assertEqual(Order.objects.count(), 3)
"""


def test_django_tests_run_tasks_eagerly_or_on_a_worker_thread(site: Site, tmp_path: Path) -> None:
    project = tmp_path / "project"  # a copy: the shared project stays as the README made it
    shutil.copytree(site.root, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    (project / "core" / "settings_test.py").write_text(SETTINGS_TEST)
    (project / "shop" / "tests.py").write_text(SHOP_TESTS)
    done = subprocess.run(
        shlex.split("python manage.py test shop --settings core.settings_test --keepdb --noinput -v 2"),
        cwd=project,
        env={**site.env, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Ran 2 tests" in done.stderr, done.stderr


SETTINGS_ADMIN = """
from .settings import *  # noqa: F403

INSTALLED_APPS += ["conveyor.contrib.django"]  # noqa: F405
"""
ADMIN_SCRIPT = """
import json, os
os.environ["DJANGO_SETTINGS_MODULE"] = "core.settings_admin"
import django
django.setup()
from django.contrib.auth.models import User
from django.test import Client
from django.test.utils import setup_test_environment

from conveyor.testing import start_worker, wait_for
from core.celery import app
from shop.tasks import create_order

setup_test_environment()
base = "/admin/conveyor/periodictask/"
out = {}
admin = Client()
admin.force_login(User.objects.create_superuser("admin", "admin@example.org", "pw"))
staff = Client()
staff.force_login(User.objects.create_user("staff", "staff@example.org", "pw", is_staff=True))

app.periodic.add("from-cli", "shop.tasks.create_order", "30s", args=["cli"])
page = admin.get(base).content.decode()
out["listed"] = "from-cli" in page and "shop.tasks.create_order" in page
out["dropdown"] = 'value="shop.tasks.create_order"' in admin.get(base + "add/").content.decode()
form = {"name": "nightly", "task": "shop.tasks.create_order", "kind": "cron", "cron": "0 2 * * *",
        "every": "", "args": '["n"]', "kwargs": "{}", "queue": "orders", "enabled": "on"}
out["add"] = admin.post(base + "add/", form).status_code
nightly = app.periodic.get("nightly")
out["added"] = [nightly.schedule_text, list(nightly.args), nightly.options, nightly.enabled]
bad = admin.post(base + "add/", {**form, "name": "bad", "args": "[1,"})
out["bad_json"] = [bad.status_code, "Not valid JSON" in bad.content.decode(), app.periodic.get("bad") is None]
bad = admin.post(base + "add/", {**form, "name": "bad", "args": '{"a": 1}'})
out["args_not_a_list"] = [bad.status_code, app.periodic.get("bad") is None]
bad = admin.post(base + "add/", {**form, "name": "bad", "cron": "99 * * * *"})
out["bad_cron"] = [bad.status_code, app.periodic.get("bad") is None]
edit = {**form, "kind": "every", "every": "5m", "cron": "", "kwargs": '{"x": 1}'}
del edit["enabled"]
out["edit"] = admin.post(base + "nightly/change/", edit).status_code
nightly = app.periodic.get("nightly")
out["edited"] = [nightly.schedule_text, nightly.kwargs, nightly.enabled]
out["toggle"] = admin.post(base + "nightly/toggle/").status_code
out["enabled"] = app.periodic.get("nightly").enabled
out["delete"] = admin.post(base + "from-cli/delete/").status_code
out["deleted"] = app.periodic.get("from-cli") is None
out["staff"] = [staff.get(base).status_code, staff.post(base + "nightly/delete/").status_code]
out["anonymous"] = Client().get(base).status_code

with start_worker(app):
    first = create_order.delay("r")
    first.get(timeout=60)
    results = "/admin/conveyor/taskresult/"
    # Task events reach the index a moment after the result is stored: poll, bounded.
    listed = lambda: first.id in admin.get(results + "?state=SUCCESS").content.decode()
    out["results_listed"] = bool(wait_for(listed, timeout=30, message="not listed"))
    out["results_filtered"] = first.id in admin.get(results + "?state=FAILURE").content.decode()
    out["detail"] = "SUCCESS" in admin.get(results + first.id + "/").content.decode()
    retried = admin.post(results + first.id + "/retry/")
    new_id = retried["Location"].rstrip("/").rsplit("/", 1)[-1]
    out["retry"] = [retried.status_code, new_id != first.id, app.AsyncResult(new_id).get(timeout=60) > 0]
    out["staff_retry"] = staff.post(results + first.id + "/retry/").status_code
print(json.dumps(out))
"""


def test_admin_pages_read_and_write_the_schedules_conveyor_uses(site: Site, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(site.root, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    (project / "core" / "settings_admin.py").write_text(SETTINGS_ADMIN)
    env = {**site.env, "PYTHONPATH": str(project)}
    done = subprocess.run(
        [sys.executable, "-c", ADMIN_SCRIPT],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out == {
        "listed": True,
        "dropdown": True,
        "add": 302,
        "added": ["0 2 * * *", ["n"], {"queue": "orders"}, True],
        "bad_json": [200, True, True],
        "args_not_a_list": [200, True],
        "bad_cron": [200, True],
        "edit": 302,
        "edited": ["every 5m", {"x": 1}, False],
        "toggle": 302,
        "enabled": True,
        "delete": 302,
        "deleted": True,
        "staff": [403, 403],
        "anonymous": 302,
        "results_listed": True,
        "results_filtered": False,
        "detail": True,
        "retry": [302, True, True],
        "staff_retry": 403,
    }
    # The CLI reads the same store: what the admin wrote is what `conveyor periodic` lists.
    listed = site.ok("conveyor -A core periodic list --json")
    assert [e["name"] for e in json.loads(listed)] == ["nightly"]
