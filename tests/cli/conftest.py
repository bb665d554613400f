"""Run the real ``conveyor`` command in a subprocess, in a throwaway project directory.

Each test gets ``tmp_path`` with a ``proj.py`` (an app on its own SQLite file and two
tasks) and runs ``python -m conveyor.cli.main`` there, the way a user runs it from
the project's directory, then asserts on the exit code and the printed lines
(procrastinate's tests/acceptance style). The test process reaches the same broker
file through the Python API to set up states the CLI cannot create on its own, such
as a dead letter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.app import Conveyor

# The checkout this suite tests, put on the subprocess's path so an installed copy
# (or none) makes no difference.
REPO_ROOT = Path(conveyor.__file__).resolve().parents[1]

PROJECT = """
import os
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("proj", broker="sqlite:///" + os.path.join(HERE, "broker.sqlite3"))


@app.task(name="proj.add")
def add(x, y):
    return x + y


@app.task(name="proj.fail")
def fail():
    raise ValueError("boom")
"""


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def __str__(self) -> str:  # shown by pytest when an assertion on a Result fails
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Project:
    """A project directory and a way to run ``conveyor`` in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.broker_url = f"sqlite:///{root / 'broker.sqlite3'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONWARNINGS"] = "ignore"  # a warning line would be mistaken for a second error line
        self.env = env
        self._apps: list[Conveyor] = []

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "conveyor.cli.main", *args]

    def run(
        self,
        *args: str,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> Result:
        """Run ``conveyor ARGS``; stdin is closed unless ``input`` is given."""
        proc = subprocess.run(
            self.command(*args),
            cwd=self.root,
            env={**self.env, **(env or {})},
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def app(self) -> Conveyor:
        """An app on the project's broker file, in the test process (not the current app)."""
        made = Conveyor("test", broker=self.broker_url, set_as_current=False)
        self._apps.append(made)
        return made

    def write(self, name: str, source: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    def close(self) -> None:
        for made in self._apps:
            made.close()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    made = Project(tmp_path)
    made.write("proj.py", PROJECT)
    try:
        yield made
    finally:
        made.close()


def assert_one_line_error(result: Result, *fragments: str, code: int = 1) -> str:
    """The CLI's error contract: the exit code, exactly one line on stderr, no traceback."""
    assert result.code == code, result
    assert "Traceback" not in result.err + result.out, result
    lines = result.error_lines
    assert len(lines) == 1, result
    line = lines[0]
    assert line.startswith("Error: "), result
    for fragment in fragments:
        assert fragment in line, result
    return line


def assert_usage_error(result: Result, *fragments: str) -> str:
    """Exit 2 with click's usage hint, then one ``Error:`` line saying what to fix."""
    assert result.code == 2, result
    assert "Traceback" not in result.err + result.out, result
    line = result.error_lines[-1]
    assert line.startswith("Error: "), result
    for fragment in fragments:
        assert fragment in line, result
    return line


def dead_letter_one(
    app: Conveyor, *, task: str = "proj.add", args: Any = (1, 2), queue: str = "default"
) -> str:
    """Send a task and dead-letter it through the broker API; returns the message's task id."""
    sent = app.send_task(task, args=list(args), queue=queue)
    deliveries = app.broker.fetch([queue], limit=1, lease_s=30, timeout_s=1)
    assert len(deliveries) == 1
    app.broker.dead_letter(deliveries[0], reason="exhausted retries: ConnectionError: smtp down")
    return sent.id
