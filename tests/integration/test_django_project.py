"""The README's Django section, run as written, with PostgreSQL as Django's database.

The project is made the way a user makes it (``django-admin startproject``,
``manage.py startapp``), the files are the README's code blocks, and every command
is the README's; the test only points Django at a private PostgreSQL database (one
per test, dropped after) and adds a few test-only tasks. PostgreSQL runs on
127.0.0.1:5432 (``CONVEYOR_TEST_PG`` overrides); without it these tests skip, and
fail under CI.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.postgresql", "NAME": {name!r}, "HOST": {host!r},
    "PORT": {port!r}, "USER": {user!r}, "OPTIONS": {{"application_name": "conveyor-test"}},
    "CONN_MAX_AGE": int(os.environ.get("TEST_CONN_MAX_AGE", "0")),
    "CONN_HEALTH_CHECKS": os.environ.get("TEST_CONN_MAX_AGE", "0") != "0",
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
    """A Django project on disk, its database, and the worker processes started in it."""

    def __init__(self, root: Path, database: str) -> None:
        self.root = root
        self.database = database
        self.workers: list[subprocess.Popen[bytes]] = []
        path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
        self.env = {**os.environ, "PATH": path, "PYTHONPATH": str(root)}
        for name in ("DJANGO_SETTINGS_MODULE", "CONVEYOR_BROKER_URL", "CONVEYOR_APP"):
            self.env.pop(name, None)

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

    def start_worker(self, line: str, **env: str) -> subprocess.Popen[bytes]:
        log_path = self.root / f"worker{len(self.workers)}.log"
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

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own for each test, dropped (its sessions ended) afterwards."""
    try:
        admin = psycopg.connect(f"{PG} dbname=postgres", autocommit=True)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {PG!r}: {exc}")
    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def site(tmp_path: Path, database: str) -> Iterator[Site]:
    """The README's first block run and its files written; migrations are the test's to run."""
    made = Site(tmp_path, database)
    files, commands = readme_django()
    try:
        for line in commands[0]:
            made.ok(line)
        for rel, (text, append) in files.items():
            path = tmp_path / rel
            with open(path, "a" if append else "w") as fh:
                fh.write(("\n" if append else "") + text)
        params = dict(p.split("=", 1) for p in PG.split())
        with open(tmp_path / "core" / "settings.py", "a") as fh:
            fh.write("\nimport os\n" + TEST_SETTINGS.format(name=database, **params))
        with open(tmp_path / "shop" / "tasks.py", "a") as fh:
            fh.write(TEST_TASKS)
        with open(tmp_path / "shop" / "apps.py", "a") as fh:
            fh.write(textwrap.dedent(TEST_APPS))
        yield made
    finally:
        made.stop_all()


def test_readme_django_section_works_as_written(site: Site) -> None:
    _, commands = readme_django()
    makemigrations, migrate, worker, shell = commands[1]
    site.ok(makemigrations)
    site.ok(migrate)
    site.ok("python manage.py check")
    site.start_worker(worker)
    created = site.ok(shell).split()[-1]  # Django 5.2 shell may print a line first
    assert site.sql("SELECT id, item FROM shop_order") == [(int(created), "book")]


def test_run_and_beat_set_django_up(site: Site) -> None:
    _, commands = readme_django()
    makemigrations, migrate, _, shell = commands[1]
    site.ok(makemigrations)
    site.ok(migrate)
    site.start_worker("conveyor -A core run --no-dashboard -P threads -c 1")
    created = site.ok(shell).split()[-1]
    assert site.sql("SELECT id, item FROM shop_order") == [(int(created), "book")]
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
