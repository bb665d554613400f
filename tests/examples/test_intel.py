"""examples/intel: feeds, observables and notifications in queues of their own, one worker
each from one `conveyor run`, a chord of enrichments, rate-limited alerts, a nightly sync."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.examples.conftest import EXAMPLES, example_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EXPECTED = [
    "test_each_queue_has_its_own_worker",
    "test_a_feed_fans_out_to_enrichment_in_a_chord_and_alerts_on_the_malicious",
    "test_notifications_keep_to_the_external_apis_rate_limit",
    "test_the_nightly_framework_sync_upserts_techniques",
    "test_beat_runs_the_framework_sync_every_night_at_two",
]


def test_intel_example_tests_pass() -> None:
    example = EXAMPLES / "intel"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        cwd=example,
        env=example_env(example),
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    passed = re.findall(r"::(test_\w+) PASSED", output)
    assert sorted(passed) == sorted(EXPECTED), output
