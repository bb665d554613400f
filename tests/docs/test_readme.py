"""The README's first commands, run as a newcomer types them on a fresh checkout.

The "Install and run" block is executed line by line (its ``pip install`` lines are
already done by the test environment), in a copy of the repository's example folder so
the test writes nothing into the checkout; the "second terminal" command that follows it
must print the task's result.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def code_blocks(section: str) -> list[list[str]]:
    """The bash blocks under a ``## section`` heading, each as its command lines."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    return [
        [ln.split("#", 1)[0].strip() for ln in b.splitlines() if ln.split("#", 1)[0].strip()] for b in blocks
    ]


def test_readme_test_command_is_what_ci_runs() -> None:
    (test_block,) = code_blocks("Run the tests")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_block[0] in ci.splitlines(), f"{test_block[0]!r} is not a line of .ci/run"


@pytest.mark.integration
def test_install_and_run_block_works_as_written(tmp_path: Path) -> None:
    install, second_terminal = code_blocks("Install and run")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    cwd = tmp_path
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run_line = ""
    for line in install:
        if line.startswith("pip install"):
            continue  # the test environment is that install
        if line.startswith("cd "):
            cwd = cwd / shlex.split(line)[1]
            continue
        run_line = line
    assert run_line.startswith("conveyor "), install
    worker = subprocess.Popen(
        shlex.split(run_line),
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        (command,) = second_terminal
        sent = subprocess.run(
            command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() == "5"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out
    assert "Traceback" not in out, out
    assert "tasks.add" in out
