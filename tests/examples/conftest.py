"""Each example project runs its own test suite in a subprocess, from its own folder.

Two Django projects cannot share one process's settings, and a user copying an
example runs its tests the way its README says, so that is what these tests do:
``python manage.py test --settings core.settings_test`` for the Django examples
(Django creates their test database on the machine's PostgreSQL and drops it),
``python -m pytest`` for the plain-Python one, and the run must pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from tests.postgres_server import postgres_url_or_skip

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def example_env(example: Path, **extra: str) -> dict[str, str]:
    """The environment a user's shell has in the example's folder: this venv's commands
    first, the example and this checkout importable, no Conveyor or Django settings leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONVEYOR_", "CELERY_")) and k != "DJANGO_SETTINGS_MODULE"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(example), str(ROOT)])
    env.update(extra)
    return env


def postgres_env() -> dict[str, str]:
    """The server of CONVEYOR_TEST_POSTGRES_URL as the Django examples' settings read it
    (skips, or fails under CI, when it does not answer)."""
    parts = urlsplit(postgres_url_or_skip())
    return {
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
    }


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url_or_skip(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_django_example(name: str, timeout: float = 180) -> list[str]:
    """Run the example's Django test suite on a test database of its own; returns the
    names of the tests that ran (all passed, or this fails with the run's output)."""
    example = EXAMPLES / name
    database = f"test_{name}_{uuid.uuid4().hex[:10]}"
    env = example_env(example, POSTGRES_TEST_DB=database, **postgres_env())
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", "test", "--settings", "core.settings_test", "--noinput", "-v", "2"],
            cwd=example,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        drop_database(database)  # Django drops it at the end of a run; this covers a killed run
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    ran = re.findall(r"^(test_\w+) \(", output, flags=re.M)
    assert f"Ran {len(ran)} test" in output and re.search(r"^OK$", output, flags=re.M), output
    return ran


def run_pytest_example(name: str, timeout: float = 180) -> list[str]:
    """Run the example's own pytest suite from its folder; returns the names of the
    tests that passed (the run passed, or this fails with its output)."""
    example = EXAMPLES / name
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        cwd=example,
        env=example_env(example),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return re.findall(r"::(test_\w+) PASSED", output)
