"""examples/fastapi: routes that enqueue with adelay() and await with aget(), its own
tests run from its folder against a real worker."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.examples.conftest import EXAMPLES, example_env

pytest.importorskip("fastapi")
pytestmark = pytest.mark.integration

EXPECTED = [
    "test_a_route_enqueues_and_another_awaits_the_result",
    "test_a_route_enqueues_and_awaits_within_the_request",
]


def test_fastapi_example_tests_pass() -> None:
    example = EXAMPLES / "fastapi"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        cwd=example,
        env=example_env(example),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert sorted(re.findall(r"::(test_\w+) PASSED", output)) == sorted(EXPECTED), output
