"""examples/fastapi: routes that enqueue with adelay() and await with aget(), its own
tests run from its folder against a real worker."""

from __future__ import annotations

import pytest

from tests.examples.conftest import run_pytest_example

pytest.importorskip("fastapi")
pytestmark = pytest.mark.integration

EXPECTED = [
    "test_a_route_enqueues_and_another_awaits_the_result",
    "test_a_route_enqueues_and_awaits_within_the_request",
]


def test_fastapi_example_tests_pass() -> None:
    assert sorted(run_pytest_example("fastapi", timeout=120)) == sorted(EXPECTED)
