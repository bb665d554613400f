"""Conveyor's pages in Django's admin, in headless Chromium, on the collector example.

The example as its README runs it: migrated on a PostgreSQL database of this test's
own (dropped after), `manage.py runserver`, a `conveyor worker`, a round of polls
(one platform answers garbage, so one poll fails with a traceback) and a schedule
added with `conveyor periodic add`. The browser logs in as a superuser and checks
the periodic-task list and add form (then adds one through it), the task results
with a state filter, and a failed task's page. Each page is saved as a PNG in
CONVEYOR_SCREENSHOTS (default: the test's tmp dir); the README's copies in
docs/images/ come from `CONVEYOR_SCREENSHOTS=docs/images python -m pytest tests/examples/test_admin_screenshots.py`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright  # noqa: I001 - test_browser skips without it

from conveyor import Conveyor
from conveyor.testing import wait_for
from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS, free_port
from tests.examples.conftest import EXAMPLES, drop_database, example_env, postgres_env
from tests.postgres_server import postgres_url_or_skip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

COLLECTOR = EXAMPLES / "collector"
PASSWORD = "admin-pw-for-tests"


class Platforms(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
        body = b"<html>maintenance</html>" if self.path == "/broken" else json.dumps([1, 2, 3]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Site:
    """The collector example running: its database, runserver, a worker, and a client app."""

    def __init__(self, work: Path, database: str) -> None:
        self.work = work
        self.broker_url = f"sqlite:///{work / 'conveyor.sqlite3'}"
        self.env = example_env(
            COLLECTOR,
            POSTGRES_DB=database,
            CELERY_BROKER_URL=self.broker_url,
            DJANGO_SUPERUSER_PASSWORD=PASSWORD,
            **postgres_env(),
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def ok(self, *args: str) -> str:
        done = subprocess.run(args, cwd=COLLECTOR, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str) -> Path:
        log_path = self.work / f"{name}.log"
        with open(log_path, "wb") as log:
            self.procs.append(
                subprocess.Popen(
                    args,
                    cwd=COLLECTOR,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return log_path

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/admin/login/", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Site, str]]:
    import psycopg

    database = f"collector_admin_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url_or_skip(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    platforms = ThreadingHTTPServer(("127.0.0.1", 0), Platforms)
    threading.Thread(target=platforms.serve_forever, daemon=True).start()
    made = Site(tmp_path, database)
    try:
        made.ok(sys.executable, "manage.py", "migrate", "-v", "0")
        made.ok(
            sys.executable,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            "admin",
            "--email",
            "admin@example.com",
        )
        base = f"http://127.0.0.1:{platforms.server_port}"
        made.ok(
            sys.executable, "manage.py", "shell", "-c",
            "from platforms.models import Platform as P; "
            f"P.objects.create(name='status-feed', url='{base}/status', interval_minutes=15); "
            f"P.objects.create(name='vendor-api', url='{base}/broken', interval_minutes=60)",
        )  # fmt: skip
        worker_log = made.start(
            "worker", "conveyor", "-A", "core", "worker", "-Q", "collect,default", "-P", "threads"
        )
        made.start(
            "runserver", sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{made.port}"
        )
        wait_for(lambda: b"ready." in worker_log.read_bytes(), timeout=60, message="the worker did not start")
        wait_for(made.up, timeout=60, interval=0.2, message="runserver did not start")
        made.ok(
            "conveyor", "-A", "core", "periodic", "add", "collect-during-incident",
            "platforms.tasks.collect_due_platforms", "--every", "1m",
        )  # fmt: skip
        yield made, base
    finally:
        made.stop()
        platforms.shutdown()
        platforms.server_close()
        drop_database(database)


def shoot(page: Page, name: str, directory: Path) -> None:
    page.screenshot(path=str(directory / f"admin-{name}.png"), full_page=True)


def test_admin_pages_for_schedules_and_results_in_a_browser(site: tuple[Site, str], tmp_path: Path) -> None:
    made, _ = site
    shots = Path(os.environ.get("CONVEYOR_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    client = Conveyor("client", broker=made.broker_url, set_as_current=False)
    try:
        sent = client.send_task("platforms.tasks.collect_due_platforms").get(timeout=30)
        polls = {name: client.AsyncResult(task_id) for name, task_id in sent.items()}
        assert polls["status-feed"].get(timeout=30) == 3
        wait_for(
            lambda: polls["vendor-api"].state == "FAILURE", timeout=30, message="the broken poll did not fail"
        )
    finally:
        client.close()
    failed_id = polls["vendor-api"].id

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.goto(made.url + "/admin/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            expect(page.locator("#site-name")).to_be_visible()
            expect(page.locator("body")).to_contain_text("Periodic tasks")
            shoot(page, "index", shots)

            # Schedules: the one from CELERY_BEAT_SCHEDULE (read-only) and the CLI's.
            page.goto(made.url + "/admin/conveyor/periodictask/")
            rows = page.locator("tr.periodic-entry")
            expect(rows).to_have_count(2)
            config = page.locator('tr[data-name="collect-due-platforms"]')
            expect(config).to_contain_text("platforms.tasks.collect_due_platforms")
            expect(config).to_contain_text("*/15")
            expect(config).to_contain_text("config")
            expect(page.locator('tr[data-name="collect-during-incident"]')).to_contain_text("runtime")
            shoot(page, "periodic-list", shots)

            # The add form: the task dropdown lists the project's registered tasks.
            page.click("ul.object-tools a.addlink")
            expect(page.locator("select[name=task]")).to_be_visible()
            options = page.locator("select[name=task] option").all_text_contents()
            assert (
                "platforms.tasks.poll_platform" in options
                and "platforms.tasks.collect_due_platforms" in options
            )
            page.fill("input[name=name]", "nightly-full-collection")
            page.select_option("select[name=task]", "platforms.tasks.collect_due_platforms")
            page.select_option("select[name=kind]", "cron")
            page.fill("input[name=cron]", "0 1 * * *")
            page.fill("input[name=queue]", "collect")
            shoot(page, "periodic-add", shots)
            page.click("input[type=submit]")
            expect(page.locator(".messagelist")).to_contain_text("nightly-full-collection")
            added = page.locator('tr[data-name="nightly-full-collection"]')
            expect(added).to_contain_text("0 1 * * *")
            expect(added).to_contain_text("collect")
            assert json.loads(made.ok("conveyor", "-A", "core", "periodic", "list", "--json"))

            # Results: the round, its polls; one failed. Task events arrive a moment
            # after the results, so reload until the list has them all.
            def listed() -> bool:
                page.goto(made.url + "/admin/conveyor/taskresult/")
                return page.locator("tr.task-result").count() >= 3

            wait_for(listed, timeout=30, interval=0.5, message="the results were not listed")
            expect(page.locator("#result_list")).to_contain_text("SUCCESS")
            expect(page.locator("#result_list")).to_contain_text("FAILURE")
            # Runtimes in milliseconds' precision, not a float's 17 digits.
            runtimes = page.locator("tr.task-result td:nth-child(7)").all_text_contents()
            assert all(re.fullmatch(r"\d+\.\d{3}", r.strip()) for r in runtimes), runtimes
            # A wide table scrolls in its own box: the page itself never scrolls sideways.
            assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1
            shoot(page, "results-list", shots)
            page.select_option("select[name=state]", "FAILURE")
            page.click("#changelist-search input[type=submit]")
            expect(page).to_have_url(re.compile(r"[?&]state=FAILURE"))
            expect(page.locator("tr.task-result")).to_have_count(1)
            expect(page.locator("tr.task-result")).to_contain_text("platforms.tasks.poll_platform")
            shoot(page, "results-failed", shots)

            page.click(f"a:text('{failed_id}')")
            body = page.locator("#content")
            expect(body).to_contain_text("FAILURE")
            expect(body).to_contain_text("JSONDecodeError")
            expect(body).to_contain_text("Traceback")
            # The timeline in the app's time zone, as the periodic list shows times, not epoch seconds.
            events = page.locator("#timeline li").all_text_contents()
            assert [e.split(" at ")[0] for e in events] == ["task-received", "task-started", "task-failed"], (
                events
            )
            assert all(re.search(r" at 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d CET on ", e) for e in events), events
            shoot(page, "result-detail", shots)
        finally:
            browser.close()
    assert sorted(p.name for p in shots.iterdir()) == [
        f"admin-{n}.png"
        for n in sorted(
            ["index", "periodic-list", "periodic-add", "results-list", "results-failed", "result-detail"]
        )
    ]
