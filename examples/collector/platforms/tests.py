"""The collector against real platforms (a local HTTP server), PostgreSQL and a real worker.

Run with `python manage.py test --settings core.settings_test`. Rounds are replayed
at chosen times (`collect_due_platforms(now=...)`) instead of waiting 15 minutes.
"""

import datetime as dt
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

from core.celery import app
from django.contrib.auth.models import Permission, User
from django.test import TransactionTestCase
from django.utils import timezone

from conveyor import crontab
from conveyor.testing import start_worker, wait_for
from platforms.models import Collection, Platform
from platforms.tasks import collect_due_platforms


class Platforms:
    """An HTTP server standing in for the external platforms: GET /NAME answers
    NAME's items as JSON, and every request is counted."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
                name = self.path.strip("/")
                hits[name] += 1
                body = json.dumps([{"platform": name, "n": i} for i in range(len(name))]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # keep the test output to the tests

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{name}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CollectorTestCase(TransactionTestCase):
    def setUp(self) -> None:
        self.platforms = Platforms()
        self.addCleanup(self.platforms.stop)
        worker = start_worker(app, queues=["collect", "default"], concurrency=2)
        worker.__enter__()
        self.addCleanup(worker.__exit__, None, None, None)
        # On the quarter hour, as beat's rounds are: the next one, so the polls a round
        # sends expire (at the round after) well after the test is over.
        now = timezone.now().replace(second=0, microsecond=0)
        self.t0 = now + dt.timedelta(minutes=15 - now.minute % 15)

    def add(self, name: str, interval_minutes: int, enabled: bool = True) -> Platform:
        return Platform.objects.create(
            name=name, url=self.platforms.url(name), interval_minutes=interval_minutes, enabled=enabled
        )

    def round(self, minutes: int) -> dict[str, str]:
        """Run the round beat would send at t0 + minutes, and wait for its polls."""
        at = self.t0 + dt.timedelta(minutes=minutes)
        sent = collect_due_platforms.delay(now=at.isoformat()).get(timeout=20)
        for task_id in sent.values():
            app.AsyncResult(task_id).get(timeout=20)
        return sent


class RoundTests(CollectorTestCase):
    def test_each_round_polls_only_the_platforms_whose_interval_has_elapsed(self):
        self.add("often", 15)
        self.add("hourly", 60)
        self.add("paused", 15, enabled=False)
        polled = {minutes: sorted(self.round(minutes)) for minutes in (0, 15, 30, 45, 60, 75)}
        self.assertEqual(
            polled,
            {
                0: ["hourly", "often"],
                15: ["often"],
                30: ["often"],
                45: ["often"],
                60: ["hourly", "often"],
                75: ["often"],
            },
        )
        self.assertEqual(self.platforms.hits, Counter({"often": 6, "hourly": 2}))
        hourly = Platform.objects.get(name="hourly")
        self.assertEqual(hourly.last_polled_at, self.t0 + dt.timedelta(minutes=60))
        rounds = Collection.objects.filter(platform=hourly).order_by("round_at")
        self.assertEqual(
            [(c.round_at - self.t0, c.items) for c in rounds],
            [(dt.timedelta(0), 6), (dt.timedelta(hours=1), 6)],
        )

    def test_a_poll_still_queued_at_the_next_round_is_skipped_as_stale(self):
        self.add("slow", 15)
        # A round from 20 minutes ago whose polls never left the queue (workers down):
        # its polls expired when the next round began.
        stale = timezone.now() - dt.timedelta(minutes=20)
        sent = collect_due_platforms.delay(now=stale.isoformat()).get(timeout=20)
        poll = app.AsyncResult(sent["slow"])
        wait_for(lambda: poll.state == "REVOKED", timeout=20, message=f"the stale poll ended {poll.state}")
        self.assertEqual(self.platforms.hits["slow"], 0)
        self.assertIsNone(Platform.objects.get(name="slow").last_polled_at)
        self.assertEqual(sorted(self.round(0)), ["slow"])  # the current round polls it
        self.assertEqual(self.platforms.hits["slow"], 1)

    def test_beat_starts_a_round_every_15_minutes(self):
        entry = app.conf.beat_schedule["collect-due-platforms"]
        self.assertEqual(entry["task"], collect_due_platforms.name)
        self.assertEqual(entry["schedule"], crontab(minute="*/15"))
        berlin = ZoneInfo("Europe/Berlin")
        after = dt.datetime(2026, 12, 7, 10, 7, tzinfo=berlin)
        self.assertEqual(entry["schedule"].next_run(after, tz=app.conf.timezone), after.replace(minute=15))


class AdminTests(CollectorTestCase):
    def test_a_platform_added_in_the_admin_is_polled_on_the_next_round(self):
        self.add("existing", 60)
        self.assertEqual(sorted(self.round(0)), ["existing"])
        staff = User.objects.create_user("ops", "ops@example.com", "pw", is_staff=True)
        staff.user_permissions.add(*Permission.objects.filter(codename__in=["add_platform", "view_platform"]))
        self.client.force_login(staff)
        form = {
            "name": "new-feed",
            "url": self.platforms.url("new-feed"),
            "interval_minutes": "30",
            "enabled": "on",
        }
        response = self.client.post("/admin/platforms/platform/add/", form)
        self.assertEqual(response.status_code, 302, response.content.decode()[:2000])
        self.assertEqual(sorted(self.round(15)), ["new-feed"])
        self.assertEqual(self.platforms.hits, Counter({"existing": 1, "new-feed": 1}))
        self.assertEqual(Collection.objects.get(platform__name="new-feed").items, len("new-feed"))
