"""The scheduler when the local wall clock is stepped (NTP, a VM restored, an operator).

Beat runs in a thread of this process against a private Redis, whose clock is not
stepped; only beat's view of ``time.time`` jumps. Intervals (lease renewal, syncs)
must follow the monotonic clock and due times the broker's clock, so neither step
sends runs early, stops renewing the lease or hides a new schedule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import conveyor.beat
from conveyor import Conveyor
from conveyor.beat import LEADER_LEASE, Beat
from conveyor.message import Message, decode
from conveyor.testing import wait_for
from tests.redis_server import fresh_url, redis_server_or_skip

LEASE_S = 2.0


class SteppedClock:
    """Stands in for the ``time`` module inside conveyor.beat: the wall clock can jump."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return _real_time() + self.offset

    @staticmethod
    def monotonic() -> float:
        return _real_monotonic()


_real_time, _real_monotonic = time.time, time.monotonic


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    stepped = SteppedClock()
    monkeypatch.setattr(conveyor.beat, "time", stepped)
    return stepped


@pytest.fixture
def app() -> Iterator[Conveyor]:
    made = Conveyor("clock", broker=fresh_url(redis_server_or_skip()), set_as_current=False)
    yield made
    made.close()


def _run(beat: Beat) -> threading.Thread:
    thread = threading.Thread(target=beat.run, daemon=True)
    thread.start()
    wait_for(lambda: beat.is_leader, timeout=10, message="beat never led")
    return thread


def _drain(app: Conveyor, into: list[Message]) -> list[Message]:
    got = app.broker.fetch(["beat"], limit=1000, lease_s=600, timeout_s=0)
    into.extend(decode(d.body) for d in got)
    return into


def test_a_clock_stepped_forward_sends_no_run_early(app: Conveyor, clock: SteppedClock) -> None:
    app.conf.beat_schedule = {
        "tick": {"task": "proj.tick", "schedule": 1.0, "options": {"queue": "beat"}, "catch_up": True}
    }
    beat = Beat(app, lease_s=LEASE_S)
    thread = _run(beat)
    seen: list[Message] = []
    try:
        wait_for(lambda: _drain(app, seen), timeout=10, message="no run before the step")
        clock.offset = 3600.0
        stepped_at = _real_time()
        wait_for(
            lambda: sum(float(m.headers["periodic_due_at"]) > stepped_at for m in _drain(app, seen)) >= 2,
            timeout=10,
            message="no run after the step",
        )
    finally:
        beat.stop()
        thread.join(10)
    checked_at = _real_time()
    dues = [float(m.headers["periodic_due_at"]) for m in _drain(app, seen)]
    early = [d for d in dues if d > checked_at]
    assert not early, (
        f"{len(early)} run(s) sent before they were due, up to {max(early) - checked_at:.0f}s early"
    )
    assert len(dues) == len(set(dues))


def test_a_clock_stepped_back_keeps_the_lease_and_sees_new_schedules(
    app: Conveyor, clock: SteppedClock
) -> None:
    beat = Beat(app, lease_s=LEASE_S)
    thread = _run(beat)
    seen: list[Message] = []
    try:
        clock.offset = -3600.0
        # Past several lease lengths: a leader that stopped renewing has lost the lease by now.
        time.sleep(LEASE_S * 2)
        assert not app.broker.acquire_lease(LEADER_LEASE, "intruder", LEASE_S), "the lease ran out"
        assert beat.is_leader
        app.periodic.add("late", "proj.tick", 1.0, options={"queue": "beat"})
        added_at = _real_monotonic()
        wait_for(
            lambda: any(m.headers.get("periodic") == "late" for m in _drain(app, seen)),
            timeout=10,
            message="a schedule added after the step was not seen",
        )
        seen_after = _real_monotonic() - added_at
    finally:
        beat.stop()
        thread.join(10)
    assert seen_after < 5.0, f"the new schedule's first run came {seen_after:.1f}s after it was added"
