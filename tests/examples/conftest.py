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


def run_django_example(name: str, timeout: float = 180) -> list[str]:
    """Run the example's Django test suite on a test database of its own; returns the
    names of the tests that ran (all passed, or this fails with the run's output)."""
    postgres_url_or_skip()
    import psycopg

    example = EXAMPLES / name
    database = f"test_{name}_{uuid.uuid4().hex[:10]}"
    env = example_env(example, POSTGRES_TEST_DB=database)
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
        # Django drops it at the end of a run; this covers a run that was killed.
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    ran = re.findall(r"^(test_\w+) \(", output, flags=re.M)
    assert f"Ran {len(ran)} test" in output and re.search(r"^OK$", output, flags=re.M), output
    return ran
