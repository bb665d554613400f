"""The dashboard in real headless Chromium, against real workers and a real dashboard process.

Debian's chromium (/usr/bin/chromium, installed by .ci/run) driven by Playwright for
Python; Playwright's own browser download is never used. Skipped when either is
missing, except under CI=true, where a missing browser is a failure.

Every page is screenshotted, at the end at 1280 and at 390 px wide, into the directory
named by CONVEYOR_SCREENSHOTS (default: the test's tmp dir) for people to look at.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.dashboard.passwords import hash_password
from conveyor.testing import wait_for
from tests.integration.conftest import PROJECT, Project

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTHS = (1280, 390)
LONG_ID = "invoice-regeneration-2026-12-07-customer-000123456789-attempt-0001"
# Tokens that must sit on one line: ids, runtimes, times, cron expressions, states.
ONE_LINE = (
    "td.mono, td.num, td.nowrap, .when, h1 .mono, .state, #task-state, "
    "dl.facts dd:not(:has(pre)), .stat .value:not(.small), .stat .value .nowrap"
)
WRAPPED_JS = """(sel) => [...document.querySelectorAll(sel)].filter((el) => {
  const range = document.createRange();
  range.selectNodeContents(el);
  const tops = [...range.getClientRects()].filter((r) => r.width > 0).map((r) => r.top);
  // Boxes on one line differ by a few pixels at most; a second line starts a line lower.
  return tops.length > 1 && Math.max(...tops) - Math.min(...tops) > parseFloat(getComputedStyle(el).fontSize);
}).map((el) => el.textContent.trim())"""
ADMIN = ("admin", "s3cret")
VIEWER = ("viewer", "look-only")

EXTRA_TASKS = """

@app.task(name="proj.boom")
def boom(n):
    raise ValueError("boom %s" % n)


@app.task(name="proj.gated", autoretry_for=(ConnectionError,), retry_backoff=0.05, retry_jitter=False,
          retry_kwargs={"max_retries": 1})
def gated(key):
    record("gated", key)
    if not os.path.exists(os.path.join(HERE, "gate.open")):
        raise ConnectionError("gate %s is closed" % key)
    return "passed %s" % key
"""


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; the dev extra has it)"
    try:
        import starlette  # noqa: F401
    except ImportError:
        return "the dashboard extra is not installed"
    return None


_reason = _missing()
if _reason is not None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run under CI: {_reason}", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dashboard:
    def __init__(self, project: Project) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = project.root / "dashboard.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        # Hashed passwords in a file, as docs/dashboard.md tells people to run it.
        users = project.root / "dashboard-users"
        users.write_text(
            f"{ADMIN[0]}:{hash_password(ADMIN[1])}\n{VIEWER[0]}:{hash_password(VIEWER[1])}:viewer\n"
        )
        cmd = [
            sys.executable, "-m", "conveyor.cli.main", "-A", "proj", "dashboard",
            "--port", str(self.port), "--auth-file", str(users), "-l", "warning",
        ]  # fmt: skip
        env = {**project.env, "CONVEYOR_DASHBOARD_REFRESH_INTERVAL": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=project.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._up, timeout=30, interval=0.1, message=f"dashboard did not start:\n{self.log()}")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log()
        try:
            with urllib.request.urlopen(self.url + "/login", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Project, Any, Dashboard, Browser]]:
    (tmp_path / "proj.py").write_text(textwrap.dedent(PROJECT) + EXTRA_TASKS)
    sys.modules.pop("proj", None)
    sys.path.insert(0, str(tmp_path))
    import proj  # type: ignore[import-not-found]

    proj.app.set_current()
    project = Project(tmp_path)
    dashboard: Dashboard | None = None
    try:
        project.start_worker("-P", "prefork", "-c", "3", name="browser-w1@test")
        dashboard = Dashboard(project)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield project, proj, dashboard, browser
            finally:
                browser.close()
    finally:
        if dashboard is not None:
            dashboard.stop()
        project.stop_all()
        proj.app.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("proj", None)


class Shots:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = Path(os.environ.get("CONVEYOR_SCREENSHOTS") or tmp_path / "screenshots")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, page: Page, name: str) -> None:
        path = self.dir / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)


def check_layout(page: Page, width: int) -> None:
    """At this width nothing wraps inside a token and the page itself never scrolls
    sideways (a wide table scrolls inside its own box)."""
    wrapped = page.evaluate(WRAPPED_JS, ONE_LINE)
    assert not wrapped, f"{page.url} at {width} px: wrapped inside {wrapped}"
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"{page.url} at {width} px: the page is {overflow} px wider than the window"


BROWSER_ERRORS: list[str] = []


def watch(page: Page) -> Page:
    """Record script errors and console errors (a CSP violation is one) for the final check."""
    page.on("pageerror", lambda exc: BROWSER_ERRORS.append(f"{page.url}: {exc}"))
    page.on(
        "console",
        lambda msg: BROWSER_ERRORS.append(f"{page.url}: {msg.text}") if msg.type == "error" else None,
    )
    return page


def login(browser: Browser, base: str, user: tuple[str, str]) -> Page:
    page = watch(browser.new_context(viewport={"width": 1400, "height": 900}).new_page())
    page.goto(base + "/queues")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fqueues$"))
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/queues")
    return page


def test_dashboard_in_a_real_browser(setup: tuple[Project, Any, Dashboard, Browser], tmp_path: Path) -> None:
    project, proj, dash, browser = setup
    BROWSER_ERRORS.clear()
    app = proj.app
    shots = Shots(tmp_path)
    base = dash.url

    ok = [proj.add.delay(i, i) for i in range(6)]
    failed = [proj.boom.delay(i) for i in range(2)]
    gated = proj.gated.delay("g1")
    parked = [proj.add.apply_async((i, 0), queue="parked") for i in range(3)]  # no worker reads "parked"
    later = [proj.add.apply_async((i, 0), queue="later", countdown=3600) for i in range(2)]  # delayed only
    long_named = proj.add.apply_async((7, 8), task_id=LONG_ID)
    assert long_named.get(timeout=30) == 15 and len(later) == 2
    for r in ok:
        assert r.get(timeout=30) is not None
    wait_for(lambda: all(r.state == "FAILURE" for r in failed), timeout=30, message="boom tasks did not fail")
    wait_for(lambda: app.broker.dead_letters(), timeout=30, message="gated task was not dead-lettered")

    # Login is required; a wrong password is refused.
    anon = watch(browser.new_context().new_page())
    anon.goto(base + "/")
    expect(anon).to_have_url(re.compile(r"/login"))
    expect(anon.locator("form.login")).to_be_visible()
    anon.fill("input[name=username]", "admin")
    anon.fill("input[name=password]", "wrong")
    anon.click("button[type=submit]")
    expect(anon.locator(".flash.error")).to_contain_text("Wrong user name or password")
    shots.take(anon, "login")
    assert anon.request.get(base + "/api/tasks").status == 401
    anon.context.close()

    page = login(browser, base, ADMIN)

    # Overview: workers online, finished counts, charts drawn by our own JS.
    page.goto(base + "/")
    expect(page.locator("#stat-workers")).to_have_text("1", timeout=20_000)
    expect(page.locator("#stat-failed")).not_to_have_text("0", timeout=20_000)
    expect(page.locator("#chart-throughput svg rect.ok").first).to_be_attached(timeout=20_000)
    expect(page.locator("#chart-failures svg polyline")).to_be_attached()
    expect(page.locator("#backlog")).to_contain_text("parked")
    shots.take(page, "overview")

    # Tasks: every task is listed; filtering and search narrow it; live refresh adds new ones.
    page.goto(base + "/tasks")
    rows = page.locator("#tasks-table tbody tr")
    expect(page.locator("#tasks-table")).to_contain_text("proj.boom", timeout=20_000)
    for r in ok + failed + [gated]:
        expect(page.locator(f'tr[data-task-id="{r.id}"]')).to_be_visible(timeout=20_000)
    # Arguments as JSON (not Python's repr, ['g1']), as on the detail page and in the API.
    expect(page.locator(f'tr[data-task-id="{gated.id}"]')).to_contain_text('["g1"]')
    shots.take(page, "tasks")
    page.select_option("select[name=state]", "FAILURE")
    page.click("#task-filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"state=FAILURE"))
    expect(rows).to_have_count(3, timeout=20_000)  # two boom tasks and the gated one
    page.fill("input[name=search]", "boom 1")
    page.goto(base + "/tasks?search=" + failed[1].id[:13])
    expect(rows).to_have_count(1)
    page.goto(base + "/tasks")
    page.evaluate("window.__stillHere = 'yes'")
    late = proj.add.delay(1000, 1)
    expect(page.locator(f'tr[data-task-id="{late.id}"]')).to_be_visible(timeout=20_000)
    assert page.evaluate("window.__stillHere") == "yes", "the page reloaded instead of refreshing in place"

    # Task detail: exception and traceback, timeline; retry sends it again.
    page.goto(base + f"/tasks/{failed[0].id}")
    expect(page.locator("#task-state")).to_contain_text("FAILURE")
    expect(page.locator("#task-exception")).to_contain_text("boom 0")
    expect(page.locator("#task-traceback")).to_contain_text("ValueError")
    expect(page.locator("#task-timeline")).to_contain_text("task-failed")
    expect(page.locator("#task-args")).to_contain_text("0")
    shots.take(page, "task-detail")
    page.once("dialog", lambda d: d.accept())
    page.click("text=Retry with the same arguments")
    expect(page.locator(".flash.ok")).to_contain_text("Sent again as task")
    new_id = re.search(r"task ([0-9a-f-]{36})", page.locator(".flash.ok").inner_text())
    assert new_id is not None
    wait_for(lambda: app.AsyncResult(new_id.group(1)).state == "FAILURE", timeout=30)

    # Revoke with terminate: a running task's process is stopped and its state becomes REVOKED.
    slow = proj.slow.delay("long", 60)
    wait_for(lambda: project.count("start") >= 1, timeout=20, message="the slow task did not start")
    page.goto(base + f"/tasks/{slow.id}")
    expect(page.locator("#task-state")).to_contain_text("STARTED", timeout=20_000)
    page.once("dialog", lambda d: d.accept())
    page.locator("button", has_text="Terminate").click()
    expect(page.locator(".flash.ok")).to_contain_text(f"Terminating task {slow.id}")
    wait_for(lambda: slow.state == "REVOKED", timeout=20, message="terminate did not revoke the task")
    expect(page.locator("#task-state")).to_contain_text("REVOKED", timeout=20_000)

    # Workers.
    page.goto(base + "/workers")
    expect(page.locator('tr[data-worker="browser-w1@test"]')).to_contain_text("online")
    shots.take(page, "workers")

    # Queues: backlog per queue, then purge the parked one.
    page.goto(base + "/queues")
    expect(page.locator('tr[data-queue="parked"] td').nth(1)).to_have_text("3")
    shots.take(page, "queues")
    page.once("dialog", lambda d: d.accept())
    page.locator('tr[data-queue="parked"] button', has_text="Purge").click()
    expect(page.locator(".flash.ok")).to_contain_text("Purged 3 message(s) from parked")
    assert all(r.state == "PENDING" for r in parked)

    # Dead letters: the gated task with its reason; replay runs it again, to SUCCESS.
    page.goto(base + "/dlq")
    entry = page.locator("#dlq-table tbody tr", has_text="proj.gated")
    expect(entry).to_contain_text("max retries exceeded")
    shots.take(page, "dlq")
    (project.root / "gate.open").write_text("open")
    entry.locator("button", has_text="Replay").click()
    expect(page.locator(".flash.ok")).to_contain_text("Replayed 1 dead letter(s)")
    wait_for(lambda: gated.state == "SUCCESS", timeout=30, message="the replayed task did not succeed")
    assert gated.get(timeout=5) == "passed g1"
    expect(page.locator("#dlq-count")).to_have_text("0 dead letter(s)", timeout=20_000)

    # Periodic tasks: add one from the form.
    page.goto(base + "/periodic")
    page.click("#add-periodic summary")
    page.fill("#add-periodic input[name=name]", "browser-every-hour")
    page.fill("#add-periodic input[name=task]", "proj.add")
    page.fill("#add-periodic input[name=every]", "1h")
    page.fill("#add-periodic input[name=args]", "[2, 3]")
    page.click("#add-periodic button[type=submit]")
    expect(page.locator(".flash.ok")).to_contain_text("Added periodic task browser-every-hour")
    expect(page.locator('tr[data-periodic="browser-every-hour"]')).to_contain_text("every")
    shots.take(page, "periodic")

    # A viewer sees the pages, with every action disabled, and is refused when forcing one.
    viewer = login(browser, base, VIEWER)
    expect(viewer.locator(".role")).to_have_text("viewer")
    purge = viewer.locator("#queues-table button", has_text="Purge")
    if purge.count():
        expect(purge.first).to_be_disabled()
    viewer.goto(base + "/periodic")
    expect(viewer.locator('tr[data-periodic="browser-every-hour"] button').first).to_be_disabled()
    assert viewer.locator("#add-periodic").count() == 0
    shots.take(viewer, "viewer-periodic")
    csrf = viewer.locator("body").get_attribute("data-csrf")
    forced = viewer.request.post(
        base + "/api/periodic/browser-every-hour/disable", headers={"X-CSRF-Token": csrf or ""}
    )
    assert forced.status == 403
    assert app.periodic.get("browser-every-hour").enabled

    # The gated task failed, was dead-lettered, replayed and succeeded: its earlier
    # failures are past attempts in the timeline, not the task's error.
    page.goto(base + f"/tasks/{gated.id}")
    expect(page.locator("#task-state")).to_contain_text("SUCCESS", timeout=20_000)
    expect(page.locator("#task-timeline li.past").first).to_contain_text("gate g1 is closed")
    assert page.locator("#task-exception").count() == 0
    layout_tour(page, base, shots, failed[0].id, gated.id)

    assert dash.proc.poll() is None, dash.log()
    # The only console errors allowed are the refused requests this test made on purpose.
    unexpected = [e for e in BROWSER_ERRORS if "401" not in e and "403" not in e]
    assert not unexpected, unexpected
    assert len(shots.taken) == 9 + len(WIDTHS) * 9


def layout_tour(page: Page, base: str, shots: Shots, failed_id: str, retried_id: str) -> None:
    """Every page at a desktop and a phone width: screenshots and the one-line checks."""
    from conveyor import schedules

    app = __import__("proj").app
    app.periodic.add("weekday-quarter-hours", "proj.add", schedules.crontab.from_string("*/15 9-17 * * 1-5"))
    pages = [
        ("overview", "/", "#stat-backlog"),
        ("tasks", "/tasks", "#tasks-table"),
        ("task-failed", f"/tasks/{failed_id}", "#task-exception"),
        ("task-retried-then-succeeded", f"/tasks/{retried_id}", "#task-timeline"),
        ("task-long-id", f"/tasks/{LONG_ID}", "#task-timeline"),
        ("workers", "/workers", "#workers-table"),
        ("queues", "/queues", "#queues-table"),
        ("dlq", "/dlq", "#dlq-count"),
        ("periodic", "/periodic", 'tr[data-periodic="weekday-quarter-hours"]'),
    ]
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900 if width > 600 else 844})
        for name, path, ready in pages:
            page.goto(base + path)
            expect(page.locator(ready).first).to_be_visible(timeout=20_000)
            if name == "overview":
                bar = page.locator('#backlog tr:has(td:text-is("later")) rect')
                assert float(bar.get_attribute("width") or 0) > 0, (
                    "the backlog bar of a delayed-only queue is empty"
                )
            check_layout(page, width)
            shots.take(page, f"{name}-{width}")
