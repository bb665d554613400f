"""examples/accounts: activation, password reset and a 1,000-user newsletter over a real
SMTP server, retries while it is down, acks_late, the nightly clean-up, a DLQ replay."""

from __future__ import annotations

import pytest

from tests.examples.conftest import run_django_example

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EXPECTED = [
    "test_sign_up_mails_an_activation_link_that_activates_the_account",
    "test_activation_retries_with_backoff_while_smtp_is_down_then_delivers_once",
    "test_an_email_task_is_acknowledged_only_after_the_mail_went_out",
    "test_an_email_whose_worker_was_killed_mid_send_is_delivered_once_by_another",
    "test_password_reset_dead_lettered_then_replayed_from_the_cli",
    "test_a_newsletter_reaches_each_of_1000_users_exactly_once_within_the_rate_limit",
    "test_nightly_clean_up_deletes_only_sign_ups_never_activated_in_time",
    "test_beat_runs_the_clean_up_every_night_at_half_past_three_berlin_time",
]


def test_accounts_example_tests_pass() -> None:
    assert sorted(run_django_example("accounts")) == sorted(EXPECTED)
