"""The scheduler against real brokers: one leader among many, each run sent once.

Beat processes are started with the real CLI. Runs are counted by reading the
queue the schedule sends to (no worker needed): every message carries its
schedule name and due time in its headers, so a duplicate or a gap is visible.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.beat import Beat
from conveyor.message import Message, decode
from conveyor.periodic import STATE_NS, PeriodicError, RunState, UnknownTaskWarning
from conveyor.testing import wait_for
from tests.postgres_server import drop_schema, fresh_schema, postgres_url_or_skip, with_schema
from tests.redis_server import fresh_url, redis_server_or_skip

REPO_ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 3.0

PROJECT = """
import json, os
from conveyor import Conveyor

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("proj", broker=os.environ["TEST_BROKER_URL"])
app.conf.update(beat_schedule=json.loads(os.environ.get("TEST_BEAT_SCHEDULE", "{}")))


@app.task(name="proj.tick")
def tick(n=0):
    with open(os.path.join(HERE, "runs.log"), "a") as fh:
        fh.write("tick %s\\n" % n)
    return n
"""


class BeatProject:
    """A project directory, beat processes on one broker, and the queue they fill."""

    def __init__(self, root: Path, broker_url: str) -> None:
        self.root = root
        self.broker_url = broker_url
        (root / "proj.py").write_text(textwrap.dedent(PROJECT))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), str(REPO_ROOT)) if p)
        env["TEST_BROKER_URL"] = broker_url
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.app = Conveyor("observer", broker=broker_url, set_as_current=False)
        self.seen: list[Message] = []

    def start(self, *args: str, schedule: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
        index = len(self.procs)
        log = open(self.root / f"proc{index}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**self.env, "TEST_BEAT_SCHEDULE": json.dumps(schedule or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", *args],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "proj", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def log(self, index: int) -> str:
        return (self.root / f"proc{index}.log").read_text(errors="replace")

    def leader(self) -> int | None:
        """The index of a live process that became leader (only one can have)."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is None and "leader now" in self.log(i):
                return i
        return None

    def drain(self, queue: str = "beat") -> list[Message]:
        """Take every message sent so far off the queue (leased long: never redelivered)."""
        while True:
            got = self.app.broker.fetch([queue], limit=500, lease_s=600, timeout_s=0)
            if not got:
                return self.seen
            self.seen.extend(decode(d.body) for d in got)

    def dues(self, name: str) -> list[float]:
        return [
            float(m.headers["periodic_due_at"]) for m in self.drain() if m.headers.get("periodic") == name
        ]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.app.close()


def _redis_url() -> str:
    return fresh_url(redis_server_or_skip())


@pytest.fixture(params=["postgres", "redis", "sqlite"])
def beat_project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BeatProject]:
    dropped: list[tuple[str, str]] = []
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    elif request.param == "redis":
        url = _redis_url()
    else:
        base, schema = postgres_url_or_skip(), fresh_schema()  # a schema of its own, dropped after
        url = with_schema(base, schema)
        dropped.append((base, schema))
    project = BeatProject(tmp_path, url)
    try:
        yield project
    finally:
        project.stop_all()
        for base, schema in dropped:
            drop_schema(base, schema)


TICK = {"tick": {"task": "proj.tick", "schedule": 1.0, "options": {"queue": "beat"}, "catch_up": True}}


def test_three_schedulers_send_each_run_once_and_survive_the_leader_dying(beat_project: BeatProject) -> None:
    p = beat_project
    for _ in range(3):
        p.start("beat", "--lease", str(LEASE_S), schedule=TICK)
    wait_for(lambda: len(p.dues("tick")) >= 3, timeout=20, message="no runs sent")
    leader = p.leader()
    assert leader is not None
    os.killpg(p.procs[leader].pid, signal.SIGKILL)
    killed_at = time.time()
    p.procs[leader].wait(5)
    wait_for(lambda: p.leader() not in (None, leader), timeout=LEASE_S + 10, message="no follower took over")
    takeover_s = time.time() - killed_at
    before = len(p.dues("tick"))
    wait_for(lambda: len(p.dues("tick")) >= before + 2, timeout=20, message="the new leader sends nothing")
    p.stop_all()
    dues = sorted(p.dues("tick"))
    assert len(dues) == len(set(dues)), f"a run was sent twice: {dues}"
    # catch_up=True: the slots missed while nobody led are sent too, so no gap either.
    steps = {round(b - a, 3) for a, b in zip(dues, dues[1:], strict=False)}
    assert steps == {1.0}, f"gaps or duplicates: {dues}"
    assert takeover_s <= LEASE_S + 2 + 3, f"takeover took {takeover_s:.1f}s"
    assert sum("leader now" in p.log(i) for i in range(3)) == 2


def test_a_schedule_added_from_the_cli_fires_on_time_and_disabling_stops_it(tmp_path: Path) -> None:
    p = BeatProject(tmp_path, f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    try:
        p.start("beat")
        wait_for(lambda: "leader now" in p.log(0), timeout=15, message=p.log(0))
        added = p.cli("periodic", "add", "late", "proj.tick", "--every", "2s", "-Q", "beat", "--args", "[7]")
        added_by = time.time()
        assert added.returncode == 0, added.stderr
        wait_for(lambda: p.dues("late"), timeout=15, message="the added schedule never fired")
        first = next(m for m in p.drain() if m.headers.get("periodic") == "late")
        assert first.args == [7]
        assert first.created_at - float(first.headers["periodic_due_at"]) <= 5.0
        # Seen at once (the change marker), so its very first slot is the first one sent.
        assert float(first.headers["periodic_due_at"]) <= added_by + 2.0, p.log(0)
        listed = p.cli("periodic", "list", "--json")
        entry = json.loads(listed.stdout)[0]
        assert entry["name"] == "late" and entry["total_run_count"] >= 1 and entry["last_run_at"]
        disabled = p.cli("periodic", "disable", "late")
        assert disabled.returncode == 0, disabled.stderr
        time.sleep(1.5)  # the leader checks the change marker every second
        count = len(p.dues("late"))
        time.sleep(4)
        assert len(p.dues("late")) == count, "a disabled schedule kept firing"
    finally:
        p.stop_all()


def test_worker_beat_runs_periodic_tasks(tmp_path: Path) -> None:
    p = BeatProject(tmp_path, f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    schedule = {"tick": {"task": "proj.tick", "schedule": 1.0, "args": [3]}}
    runs = tmp_path / "runs.log"
    try:
        p.start("worker", "--beat", "-P", "threads", "-c", "2", schedule=schedule)
        wait_for(
            lambda: runs.exists() and runs.read_text().count("tick 3") >= 2, timeout=20, message=p.log(0)
        )
    finally:
        p.stop_all()
    assert "leader lease released" in p.log(0)


def test_conveyor_run_without_dashboard_runs_worker_and_beat(tmp_path: Path) -> None:
    p = BeatProject(tmp_path, f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    schedule = {"tick": {"task": "proj.tick", "schedule": 1.0, "args": [5]}}
    runs = tmp_path / "runs.log"
    try:
        p.start("run", "--no-dashboard", "-P", "threads", "-c", "1", schedule=schedule)
        wait_for(
            lambda: runs.exists() and runs.read_text().count("tick 5") >= 2, timeout=20, message=p.log(0)
        )
    finally:
        p.stop_all()


def test_conveyor_run_consumes_the_queues_the_app_sends_to(tmp_path: Path) -> None:
    """The tour routes work to `feeds`; `conveyor run` with no -Q must not leave it waiting."""
    p = BeatProject(tmp_path, f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    schedule = {"tick": {"task": "proj.tick", "schedule": 1.0, "args": [7], "options": {"queue": "feeds"}}}
    runs = tmp_path / "runs.log"
    try:
        p.start("run", "--no-dashboard", "-P", "threads", "-c", "1", schedule=schedule)
        wait_for(lambda: runs.exists() and "tick 7" in runs.read_text(), timeout=20, message=p.log(0))
    finally:
        p.stop_all()
    assert "queues:      default, feeds" in p.log(0)


# -- in process: missed runs --------------------------------------------------------


def _app(tmp_path: Path, **entry: Any) -> Conveyor:
    spec = {"task": "proj.tick", "options": {"queue": "beat"}, **entry}
    return Conveyor(
        "t", broker=f"sqlite:///{tmp_path / 'b.sqlite3'}", beat_schedule={"job": spec}, set_as_current=False
    )


def _sent(app: Conveyor) -> list[Message]:
    got = app.broker.fetch(["beat"], limit=1000, lease_s=600, timeout_s=0)
    return [decode(d.body) for d in got]


@pytest.mark.parametrize("catch_up", [False, True])
def test_after_downtime_one_run_or_every_missed_run(
    tmp_path: Path, catch_up: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(tmp_path, schedule=60.0, catch_up=catch_up)
    now = time.time()
    last = (now // 60) * 60 - 600  # ten slots ago
    app.broker.kv_set(STATE_NS, "job", RunState(last_due_at=last, total_run_count=4).encode())
    beat = Beat(app, lease_s=5)
    with caplog.at_level(logging.INFO, logger="conveyor.beat"):
        beat.step(now)
    sent = _sent(app)
    dues = sorted(float(m.headers["periodic_due_at"]) for m in sent)
    if catch_up:
        assert dues == [last + 60 * i for i in range(1, 11)]
    else:
        assert dues == [last + 600]
        assert "had 10 runs due" in caplog.text and "sending the latest once" in caplog.text
    state = app.periodic.get("job")
    assert state is not None and state.total_run_count == 4 + len(dues)
    # Run again at once: nothing more is due, nothing is sent twice.
    beat.step(now)
    assert _sent(app) == []
    beat.stop()
    app.close()


def test_a_run_claimed_by_another_leader_is_not_sent_again(tmp_path: Path) -> None:
    app = _app(tmp_path, schedule=60.0)
    now = time.time()
    due = (now // 60) * 60
    app.broker.kv_set(STATE_NS, "job", RunState(last_due_at=due - 60).encode())
    assert app.broker.acquire_lease(f"beat-run:job:{round(due * 1000)}", "someone-else", 600)
    beat = Beat(app, lease_s=5)
    beat.step(now)  # the same instant `due` came from: a new minute starting meanwhile must not count
    assert _sent(app) == []
    assert beat._tracked["job"].state.last_due_at == due  # moved on: the next slot is due next
    beat.stop()
    app.close()


def test_bad_beat_schedule_is_one_line_at_start(tmp_path: Path) -> None:
    p = BeatProject(tmp_path, f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    try:
        proc = p.start("beat", schedule={"x": {"task": "proj.tick", "schedule": "every now"}})
        assert proc.wait(30) == 1
        lines = [line for line in p.log(0).splitlines() if line.strip()]
        assert lines[-1].startswith("Error: beat_schedule['x']:"), p.log(0)
        assert "Traceback" not in p.log(0)
    finally:
        p.stop_all()


# -- two configs: a rolling deploy ----------------------------------------------------


def _config_app(tmp_path: Path, schedule: dict[str, Any]) -> Conveyor:
    return Conveyor(
        "t", broker=f"sqlite:///{tmp_path / 'b.sqlite3'}", beat_schedule=schedule, set_as_current=False
    )


def test_a_beat_whose_config_differs_from_the_leaders_names_the_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = {
        "same": {"task": "proj.tick", "schedule": 60.0},
        "changed": {"task": "proj.tick", "schedule": 60.0},
        "dropped": {"task": "proj.tick", "schedule": 60.0},
    }
    new = {
        "same": {"task": "proj.tick", "schedule": 60.0},
        "changed": {"task": "proj.tick", "schedule": 120.0},
        "added": {"task": "proj.tick", "schedule": 60.0},
    }
    old_app, new_app = _config_app(tmp_path, old), _config_app(tmp_path, new)
    leader, follower = (
        Beat(old_app, lease_s=30, owner="old-beat"),
        Beat(new_app, lease_s=30, owner="new-beat"),
    )
    leader.step(time.time())
    assert leader.is_leader
    with caplog.at_level(logging.INFO, logger="conveyor.beat"):
        follower.step(time.time())
    assert not follower.is_leader
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    text = warnings[0]
    assert "old-beat" in text and "missing here: 'dropped'" in text
    assert "extra here: 'added'" in text and "different: 'changed'" in text and "'same'" not in text
    # Once per difference, not at every lease retry.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="conveyor.beat"):
        follower.step(time.time())
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    # Published with their source, so an operator (or a test) can see both configs.
    published = old_app.periodic.published_configs()
    assert {p["owner"] for p in published} == {"old-beat", "new-beat"}
    assert all(p["host"] and p["started_at"] for p in published)
    for app in (old_app, new_app):
        app.close()


def test_a_runtime_schedule_cannot_take_a_config_name_published_by_another_beat(tmp_path: Path) -> None:
    beat_app = _config_app(tmp_path, {"nightly": {"task": "proj.tick", "schedule": 60.0}})
    Beat(beat_app, lease_s=30).step(time.time())
    cli_app = _config_app(tmp_path, {})  # another process, with no beat_schedule of its own
    with pytest.raises(PeriodicError, match="nightly.*beat_schedule"):
        cli_app.periodic.add("nightly", "proj.tick", 60.0)
    cli_app.periodic.add("other", "proj.tick", 60.0)
    for app in (beat_app, cli_app):
        app.close()


# -- downtime: long, stale runs -------------------------------------------------------


def test_seventy_days_of_a_per_minute_crontab_is_one_cheap_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(tmp_path, schedule="* * * * *")
    now = time.time()
    app.broker.kv_set(STATE_NS, "job", RunState(last_due_at=(now // 60) * 60 - 70 * 86400).encode())
    beat = Beat(app, lease_s=10)
    with caplog.at_level(logging.INFO, logger="conveyor.beat"):
        started = time.perf_counter()
        beat.step(now)
        took = time.perf_counter() - started
    dues = [float(m.headers["periodic_due_at"]) for m in _sent(app)]
    assert dues == [(now // 60) * 60]
    assert took < 1.0, f"one step took {took:.2f}s"
    assert "had over " in caplog.text and "sending the latest once" in caplog.text
    beat.stop()
    app.close()


@pytest.mark.parametrize("where", ["entry options", "task default"])
def test_stale_catch_up_runs_expire_counted_from_their_due_time(tmp_path: Path, where: str) -> None:
    options: dict[str, Any] = {"queue": "beat"}
    if where == "entry options":
        options["expires"] = 30
    app = _app(tmp_path, schedule=60.0, catch_up=True, options=options)
    if where == "task default":
        app.task(name="proj.tick", expires=dt.timedelta(seconds=30))(lambda: None)
    now = time.time()
    last = (now // 60) * 60 - 3 * 3600
    app.broker.kv_set(STATE_NS, "job", RunState(last_due_at=last).encode())
    beat = Beat(app, lease_s=30)
    beat.step(now)
    sent = _sent(app)
    assert len(sent) == 180
    for message in sent:
        due = float(message.headers["periodic_due_at"])
        assert message.expires == pytest.approx(due + 30, abs=0.01), (due, message.expires)
    beat.stop()
    app.close()


# -- removal and unknown tasks --------------------------------------------------------


def test_a_schedule_removed_just_before_its_run_is_not_sent(tmp_path: Path) -> None:
    app = _config_app(tmp_path, {})
    entry = app.periodic.add("job", "proj.tick", 3600.0, options={"queue": "beat"})
    assert entry.next_run_at is not None
    due = entry.next_run_at
    beat = Beat(app, lease_s=30)
    beat.step(due - 0.5)  # the leader now tracks "job"
    app.periodic.remove("job")
    # Straight to the send, before the leader's next look at the change marker.
    beat.tick(due + 0.1)
    assert _sent(app) == []
    assert app.broker.kv_get(STATE_NS, "job") is None, "a removed schedule's state record came back"
    beat.stop()
    app.close()


def test_beat_warns_at_each_send_of_a_task_no_worker_knows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(tmp_path, schedule=60.0)
    app.task(name="proj.real")(lambda: None)
    now = time.time()
    app.broker.kv_set(STATE_NS, "job", RunState(last_due_at=(now // 60) * 60 - 60).encode())
    beat = Beat(app, lease_s=30)
    with caplog.at_level(logging.INFO, logger="conveyor.beat"):
        beat.step(now)
    assert len(_sent(app)) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("proj.tick" in w and "dead-letter" in w for w in warned), caplog.text
    beat.stop()
    app.close()


def test_adding_a_schedule_for_an_unknown_task_warns(tmp_path: Path) -> None:
    app = _config_app(tmp_path, {})
    app.task(name="proj.real")(lambda: None)
    with pytest.warns(UnknownTaskWarning, match="proj.nope.*dead-letter"):
        app.periodic.add("ghost", "proj.nope", 60.0)
    assert app.periodic.get("ghost") is not None  # accepted all the same
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.periodic.add("real", "proj.real", 60.0)
        bare = _config_app(tmp_path, {})  # an app that imported no task cannot tell
        bare.periodic.add("other", "proj.nope", 60.0)
    for a in (app, bare):
        a.close()
