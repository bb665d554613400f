"""examples/collector: platforms with their own intervals, a round every 15 minutes that
polls only the due ones, stale polls expired, a platform added in the admin polled next."""

from __future__ import annotations

import pytest

from tests.examples.conftest import run_django_example

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EXPECTED = [
    "test_each_round_polls_only_the_platforms_whose_interval_has_elapsed",
    "test_a_poll_still_queued_at_the_next_round_is_skipped_as_stale",
    "test_beat_starts_a_round_every_15_minutes",
    "test_a_platform_added_in_the_admin_is_polled_on_the_next_round",
]


def test_collector_example_tests_pass() -> None:
    assert sorted(run_django_example("collector")) == sorted(EXPECTED)
