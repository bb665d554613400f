"""examples/intel: feeds, observables and notifications in queues of their own, one worker
each from one `conveyor run`, a chord of enrichments, rate-limited alerts, a nightly sync."""

from __future__ import annotations

import pytest

from tests.examples.conftest import run_pytest_example

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EXPECTED = [
    "test_each_queue_has_its_own_worker",
    "test_a_feed_fans_out_to_enrichment_in_a_chord_and_alerts_on_the_malicious",
    "test_notifications_keep_to_the_external_apis_rate_limit",
    "test_the_nightly_framework_sync_upserts_techniques",
    "test_beat_runs_the_framework_sync_every_night_at_two",
]


def test_intel_example_tests_pass() -> None:
    assert sorted(run_pytest_example("intel", timeout=180)) == sorted(EXPECTED)
