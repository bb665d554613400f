"""The accounts app against a real SMTP server (aiosmtpd), PostgreSQL and a real worker.

Run with `python manage.py test --settings core.settings_test`. Django creates the
test database and drops it at the end. The worker runs in a thread of the test
process (conveyor.testing.start_worker), so it uses that test database; its tasks
see only committed rows, hence TransactionTestCase.
"""

import asyncio
import datetime as dt
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from email import message_from_bytes
from pathlib import Path
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller
from core.celery import app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import TransactionTestCase, override_settings
from django.utils import timezone

from accounts.models import Delivery, Newsletter
from accounts.tasks import (
    delete_expired_accounts,
    send_activation_email,
    send_newsletter,
    send_password_reset_email,
)
from conveyor import crontab
from conveyor.testing import start_worker, wait_for

User = get_user_model()
PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_letters() -> list[object]:
    return app.broker.dead_letters(limit=10, offset=0)


class Inbox:
    """An aiosmtpd handler keeping every message it accepted, with its arrival time.

    While ``holding`` (``holding_rcpt``) is set, it keeps a client waiting for the answer
    to its DATA (RCPT TO) command, and sets ``held``.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[float, str, object]] = []
        self.lock = threading.Lock()
        self.holding = threading.Event()
        self.holding_rcpt = threading.Event()
        self.held = threading.Event()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        while self.holding_rcpt.is_set():  # the client waits for "250" to its RCPT TO
            self.held.set()
            await asyncio.sleep(0.01)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        while self.holding.is_set():
            self.held.set()
            await asyncio.sleep(0.01)
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.messages.append((time.time(), rcpt, message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[object]:
        with self.lock:
            return [m for _, rcpt, m in self.messages if rcpt == address]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


class SMTPServer:
    """A real SMTP server on 127.0.0.1:port, started and stopped by the test."""

    def __init__(self, port: int) -> None:
        self.inbox = Inbox()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=port)
        self.running = False

    def start(self) -> None:
        self.controller.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.running = False


class WorkerLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class AccountsTestCase(TransactionTestCase):
    """A worker on the `email` and `default` queues and an SMTP server (not started) per test."""

    def setUp(self) -> None:
        self.smtp = SMTPServer(free_port())
        self.addCleanup(self.smtp.stop)
        mail = override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=self.smtp.controller.port,
            EMAIL_TIMEOUT=5,
        )
        mail.enable()
        self.addCleanup(mail.disable)
        self.log = WorkerLog()
        worker_log = logging.getLogger("conveyor.worker")
        worker_log.addHandler(self.log)
        self.addCleanup(worker_log.removeHandler, self.log)
        self.addCleanup(worker_log.setLevel, worker_log.level)
        worker_log.setLevel(logging.INFO)
        worker = start_worker(app, queues=["email", "default"], concurrency=4)
        worker.__enter__()
        self.addCleanup(worker.__exit__, None, None, None)

    def queued(self, queue: str = "email"):
        (stats,) = app.broker.queue_stats([queue])
        return stats


class SignUpTests(AccountsTestCase):
    def test_sign_up_mails_an_activation_link_that_activates_the_account(self):
        self.smtp.start()
        response = self.client.post("/signup/", {"email": "Ada@Example.com", "password": "pw-123456"})
        self.assertEqual(response.status_code, 201)
        (mail,) = wait_for(lambda: self.smtp.inbox.to("ada@example.com"), timeout=20)
        self.assertEqual(mail["Subject"], "Activate your account")
        link = re.search(r"http://\S+/activate/(\S+)/", mail.get_payload()).group(0)
        self.assertFalse(User.objects.get(email="ada@example.com").is_active)
        self.assertEqual(self.client.get(link.removeprefix(settings.SITE_URL)).status_code, 200)
        self.assertTrue(User.objects.get(email="ada@example.com").is_active)

    def test_activation_retries_with_backoff_while_smtp_is_down_then_delivers_once(self):
        user = User.objects.create_user("bob", "bob@example.com", is_active=False)
        result = send_activation_email.delay(user.pk)
        # Nothing listens on the port yet: connection refused, retried 0.1 s, 0.2 s, 0.4 s later.
        wait_for(lambda: result.retries >= 3, timeout=20, message="the task did not retry")
        self.assertEqual(self.smtp.inbox.count(), 0)
        self.smtp.start()
        self.assertEqual(result.get(timeout=30), "bob@example.com")
        self.assertGreaterEqual(result.retries, 3)
        self.assertEqual(len(self.smtp.inbox.to("bob@example.com")), 1)
        waits = [
            float(w)
            for w in re.findall(r"send_activation_email\[.*\] retry in ([\d.]+)s", "\n".join(self.log.lines))
        ]
        self.assertEqual(waits[:3], [0.1, 0.2, 0.4])  # CELERY_TASK_ANNOTATIONS: factor 0.1 s, no jitter

    def test_an_email_task_is_acknowledged_only_after_the_mail_went_out(self):
        # acks_late: while the server holds the message, the task's message is still
        # leased (in flight), so a worker dying now would leave it to be redelivered.
        self.smtp.start()
        self.smtp.inbox.holding.set()
        user = User.objects.create_user("cy", "cy@example.com")
        result = send_password_reset_email.delay(user.pk)
        wait_for(self.smtp.inbox.held.is_set, timeout=20, message="the mail never reached DATA")
        self.assertEqual(self.queued().in_flight, 1)
        self.smtp.inbox.holding.clear()
        self.assertEqual(result.get(timeout=20), "cy@example.com")
        wait_for(lambda: self.queued().in_flight == 0, timeout=10, message="never acknowledged")
        self.assertEqual(len(self.smtp.inbox.to("cy@example.com")), 1)

    def test_password_reset_dead_lettered_then_replayed_from_the_cli(self):
        user = User.objects.create_user("dee", "dee@example.com")
        response = self.client.post("/password-reset/", {"email": "dee@example.com"})
        self.assertEqual(response.status_code, 200)
        # SMTP down: 3 retries, then the dead-letter queue.
        (entry,) = wait_for(dead_letters, timeout=30, message="nothing was dead-lettered")
        task_id = entry.task_id
        self.assertEqual(app.AsyncResult(task_id).state, "FAILURE")
        self.smtp.start()
        replay = subprocess.run(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "core", "dlq", "replay", task_id,
             "--reset-retries", "-b", app.conf.broker_url],
            cwd=PROJECT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "core.settings_test"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(replay.returncode, 0, replay.stderr)
        wait_for(
            lambda: self.smtp.inbox.to("dee@example.com"), timeout=30, message="not delivered after replay"
        )
        wait_for(lambda: app.AsyncResult(task_id).state == "SUCCESS", timeout=10)
        self.assertEqual(len(self.smtp.inbox.to("dee@example.com")), 1)
        self.assertEqual(dead_letters(), [])
        self.assertEqual(User.objects.get(pk=user.pk).email, "dee@example.com")


class WorkerCrashTests(TransactionTestCase):
    def test_an_email_whose_worker_was_killed_mid_send_is_delivered_once_by_another(self):
        smtp = SMTPServer(free_port())
        smtp.start()
        self.addCleanup(smtp.stop)
        smtp.inbox.holding_rcpt.set()
        user = User.objects.create_user("eve", "eve@example.com")
        log_path = Path(tempfile.mkdtemp()) / "worker.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "core.settings_test",
            "POSTGRES_DB": connection.settings_dict["NAME"],  # this run's test database
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(smtp.controller.port),
            "CONVEYOR_BROKER_VISIBILITY_TIMEOUT": "1",  # a dead worker's tasks come back after 1 s
        }
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "conveyor.cli.main", "-A", "core", "worker", "-Q", "email", "-P", "threads"],
                cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.addCleanup(lambda: worker.poll() is None and os.killpg(worker.pid, signal.SIGKILL))
        result = send_activation_email.delay(user.pk)
        wait_for(smtp.inbox.held.is_set, timeout=60, message=log_path.read_text)
        os.killpg(worker.pid, signal.SIGKILL)  # mid-session: the mail was not sent
        worker.wait(10)
        smtp.inbox.holding_rcpt.clear()
        with (
            override_settings(
                EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                EMAIL_HOST="127.0.0.1",
                EMAIL_PORT=smtp.controller.port,
            ),
            start_worker(app, queues=["email"]),
        ):
            # acks_late: the message was never acknowledged, so it is delivered again.
            self.assertEqual(result.get(timeout=30), "eve@example.com")
        self.assertEqual(len(smtp.inbox.to("eve@example.com")), 1)


class NewsletterTests(AccountsTestCase):
    def test_a_newsletter_reaches_each_of_1000_users_exactly_once_within_the_rate_limit(self):
        User.objects.bulk_create(
            User(username=f"user{i:04d}", email=f"user{i:04d}@example.com", password="!") for i in range(1000)
        )
        User.objects.create(username="gone", email="gone@example.com", is_active=False)
        newsletter = Newsletter.objects.create(subject="December news", body="Hello!")
        self.smtp.start()
        self.assertEqual(send_newsletter.delay(newsletter.pk).get(timeout=30), 10)
        wait_for(lambda: self.smtp.inbox.count() >= 1000, timeout=60, message="not all delivered")
        wait_for(lambda: self.queued().ready + self.queued().in_flight == 0, timeout=30)
        received = Counter(rcpt for _, rcpt, _ in self.smtp.inbox.messages)
        self.assertEqual(len(received), 1000)
        self.assertEqual(set(received.values()), {1})
        self.assertNotIn("gone@example.com", received)
        self.assertEqual(Delivery.objects.filter(newsletter=newsletter).count(), 1000)
        # rate_limit="5/s": batch starts at least 0.2 s apart across workers. A batch's
        # first mail is a moment after its start, so count per 1 s window, not per gap.
        firsts = sorted(
            min(t for t, _, m in self.smtp.inbox.messages if m["To"] in batch) for batch in self.batches()
        )
        busiest = max(sum(1 for t in firsts if start <= t < start + 1.0) for start in firsts)
        self.assertLessEqual(busiest, 5 + 2, firsts)
        self.assertGreaterEqual(firsts[-1] - firsts[0], 9 * 0.2 - 0.5, firsts)

    def batches(self) -> list[set[str]]:
        emails = list(User.objects.filter(is_active=True).order_by("pk").values_list("email", flat=True))
        return [set(emails[i : i + 100]) for i in range(0, len(emails), 100)]


class CleanUpTests(AccountsTestCase):
    def test_nightly_clean_up_deletes_only_sign_ups_never_activated_in_time(self):
        old = timezone.now() - dt.timedelta(days=settings.ACCOUNT_ACTIVATION_DAYS + 1)
        expired = User.objects.create_user("expired", "x@example.com", is_active=False)
        recent = User.objects.create_user("recent", "r@example.com", is_active=False)
        active = User.objects.create_user("active", "a@example.com")
        User.objects.filter(pk__in=[expired.pk, active.pk]).update(date_joined=old)
        self.assertEqual(delete_expired_accounts.delay().get(timeout=20), 1)
        self.assertEqual(
            set(User.objects.values_list("username", flat=True)), {recent.username, active.username}
        )

    def test_beat_runs_the_clean_up_every_night_at_half_past_three_berlin_time(self):
        entry = app.conf.beat_schedule["delete-expired-accounts"]
        self.assertEqual(entry["task"], delete_expired_accounts.name)
        self.assertEqual(entry["schedule"], crontab(minute=30, hour=3))
        berlin = ZoneInfo("Europe/Berlin")
        after = dt.datetime(2026, 3, 28, 12, 0, tzinfo=berlin)  # the night clocks go forward
        due = entry["schedule"].next_run(after, tz=app.conf.timezone)
        self.assertEqual(due, dt.datetime(2026, 3, 29, 3, 30, tzinfo=berlin))
        self.assertEqual(due.utcoffset(), dt.timedelta(hours=2))
