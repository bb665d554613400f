"""Schedules: Celery's field forms, and next-fire times checked against a brute force.

The reference below shares nothing with conveyor.schedules: each generated spec
carries the set of values it was built from, and the next fire time is found by
walking real minutes (UTC instants) and reading the wall clock with zoneinfo. Its
rules are the documented ones: a matching wall-clock minute fires at its first
occurrence; wall-clock minutes skipped by a forward jump fire at the first instant
after the jump.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest

from conveyor import crontab as exported_crontab
from conveyor.schedules import (
    crontab,
    format_every,
    maybe_schedule,
    parse_every,
    schedule,
    schedule_from_dict,
)

UTC = dt.timezone.utc
MINUTE = dt.timedelta(minutes=1)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]
# Instants just before a DST change in each zone (2026), where the interesting cases are.
TRANSITIONS = {
    "UTC": [dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC), dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)],
    "Europe/Berlin": [
        dt.datetime(2026, 3, 29, 0, 0, tzinfo=UTC),  # 02:00 -> 03:00 local
        dt.datetime(2026, 10, 24, 23, 30, tzinfo=UTC),  # 03:00 -> 02:00 local
    ],
    "America/New_York": [
        dt.datetime(2026, 3, 8, 6, 0, tzinfo=UTC),  # 02:00 -> 03:00 local
        dt.datetime(2026, 11, 1, 4, 30, tzinfo=UTC),  # 02:00 -> 01:00 local
    ],
    "Australia/Lord_Howe": [  # half-hour DST
        dt.datetime(2026, 4, 4, 14, 0, tzinfo=UTC),
        dt.datetime(2026, 10, 3, 14, 0, tzinfo=UTC),
    ],
}


@dataclass(frozen=True)
class Spec:
    text: str  # standard cron order
    minute: frozenset[int]
    hour: frozenset[int]
    dom: frozenset[int]
    month: frozenset[int]
    dow: frozenset[int]  # 0 = Sunday

    def matches(self, wall: dt.datetime) -> bool:
        return (
            wall.minute in self.minute
            and wall.hour in self.hour
            and wall.day in self.dom
            and wall.month in self.month
            and (wall.weekday() + 1) % 7 in self.dow
        )

    def matches_day(self, day: dt.date) -> bool:
        return day.day in self.dom and day.month in self.month and (day.weekday() + 1) % 7 in self.dow


DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def gen_field(
    rng: random.Random, low: int, high: int, names: list[str] | None = None
) -> tuple[str, set[int]]:
    """A random field in one of Celery's forms, with the values it means (computed here)."""

    def show(v: int) -> str:
        if names and rng.random() < 0.4:
            return names[v - low]
        return str(v)

    form = rng.choice(["star", "star", "step", "one", "range", "range_step", "list"])
    if form == "star":
        return "*", set(range(low, high + 1))
    if form == "step":
        n = rng.randint(2, max(2, (high - low) // 2))
        return f"*/{n}", set(range(low, high + 1, n))
    if form == "one":
        v = rng.randint(low, high)
        return show(v), {v}
    if form in ("range", "range_step"):
        a = rng.randint(low, high - 1)
        b = rng.randint(a + 1, high)
        if form == "range":
            return f"{show(a)}-{show(b)}", set(range(a, b + 1))
        n = rng.randint(2, 4)
        return f"{a}-{b}/{n}", set(range(a, b + 1, n))
    values = sorted(rng.sample(range(low, high + 1), rng.randint(2, min(4, high - low + 1))))
    return ",".join(show(v) for v in values), set(values)


def gen_spec(rng: random.Random) -> Spec:
    minute, m_set = gen_field(rng, 0, 59)
    hour, h_set = gen_field(rng, 0, 23)
    # Keep days common enough that the brute force stays short.
    dom, d_set = gen_field(rng, 1, 31) if rng.random() < 0.3 else ("*", set(range(1, 32)))
    month, mo_set = gen_field(rng, 1, 12, MONTH_NAMES) if rng.random() < 0.3 else ("*", set(range(1, 13)))
    dow, w_set = gen_field(rng, 0, 6, DAY_NAMES) if rng.random() < 0.4 else ("*", set(range(7)))
    if dow == "0" and rng.random() < 0.5:
        dow = "7"  # Sunday's other number
    possible = any(d <= {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}.get(mo, 31) for mo in mo_set for d in d_set)
    if not possible:
        return gen_spec(rng)
    return Spec(
        f"{minute} {hour} {dom} {month} {dow}",
        frozenset(m_set),
        frozenset(h_set),
        frozenset(d_set),
        frozenset(mo_set),
        frozenset(w_set),
    )


def brute_next(spec: Spec, after: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """Walk the real minutes of each matching local day; the first that fires wins."""
    day = after.astimezone(zone).date()
    for _ in range(366 * 30):
        if spec.matches_day(day):
            start = dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(UTC)
            end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=zone).astimezone(UTC)
            t = start
            if after >= t:
                t = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
            while t < end:
                local = t.astimezone(zone)
                fires = spec.matches(local) and local.fold == 0
                if not fires:
                    before = (t - MINUTE).astimezone(zone).replace(tzinfo=None)
                    wall = before + MINUTE
                    now_wall = local.replace(tzinfo=None)
                    while wall < now_wall:  # wall minutes the clock jumped over
                        if spec.matches(wall):
                            fires = True
                            break
                        wall += MINUTE
                if fires:
                    return t
                t += MINUTE
        day += dt.timedelta(days=1)
    raise AssertionError(f"no fire time for {spec.text}")


def _cases() -> list[tuple[Spec, str, dt.datetime]]:
    rng = random.Random(20261127)
    cases = []
    for i in range(240):
        spec = gen_spec(rng)
        zone = ZONES[i % len(ZONES)]
        random_start = dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=rng.randint(0, 365 * 86400))
        for start in (random_start, *TRANSITIONS[zone]):
            cases.append((spec, zone, start + dt.timedelta(seconds=rng.choice([0, 0, 17, 59]))))
    return cases


def test_next_run_matches_brute_force_on_generated_specs() -> None:
    cases = _cases()
    assert len({c[0].text for c in cases}) >= 200
    failures = []
    for spec, zone_name, start in cases:
        zone = ZoneInfo(zone_name)
        sched = crontab.from_string(spec.text, tz=zone_name)
        after = start
        for _ in range(3):  # a few consecutive runs: the walk through a transition
            got = sched.next_run(after)
            want = brute_next(spec, after, zone)
            # Timestamps: aware datetimes in a repeated hour never compare equal across zones (PEP 495).
            if got.timestamp() != want.timestamp():
                failures.append(f"{spec.text!r} {zone_name} after {after.isoformat()}: got {got} want {want}")
                break
            assert got.tzinfo is not None
            after = got
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize(
    ("zone_name", "hour", "minute"),
    [
        ("Europe/Berlin", 2, 0),
        ("Europe/Berlin", 2, 30),
        ("America/New_York", 1, 30),
        ("America/New_York", 2, 0),
    ],
)
def test_daily_job_runs_once_per_local_day_across_dst(zone_name: str, hour: int, minute: int) -> None:
    zone = ZoneInfo(zone_name)
    sched = crontab(minute=minute, hour=hour, tz=zone_name)
    after = dt.datetime(2026, 1, 1, tzinfo=zone)
    days = []
    for _ in range(400):
        after = sched.next_run(after)
        days.append(after.astimezone(zone).date())
    assert len(days) == len(set(days)), "a local day got two runs"
    first = days[0]
    assert days == [first + dt.timedelta(days=i) for i in range(400)], "a local day got no run"
    # On the spring-forward day the run moves to the end of the gap, with a reason to log.
    spring = {"Europe/Berlin": dt.date(2026, 3, 29), "America/New_York": dt.date(2026, 3, 8)}[zone_name]
    run = sched.next_run(dt.datetime.combine(spring, dt.time(0), tzinfo=zone))
    note = sched.dst_note(run, zone)
    if hour == 2:
        assert run.astimezone(zone).hour == 3
        assert note is not None and "did not exist" in note
    else:
        assert note is None


def test_celery_field_forms() -> None:
    c = crontab(minute="*/15", hour="9-17", day_of_week="mon-fri", day_of_month="1,15")
    assert c.minute == {0, 15, 30, 45}
    assert c.hour == set(range(9, 18))
    assert c.day_of_week == {1, 2, 3, 4, 5}
    assert c.day_of_month == {1, 15}
    assert crontab(day_of_week=7).day_of_week == {0} == crontab(day_of_week="sun").day_of_week
    assert crontab(day_of_week="sunday,Monday").day_of_week == {0, 1}
    assert crontab(day_of_week="fri-mon").day_of_week == {5, 6, 0, 1}
    assert crontab(month_of_year="jan,jul").month_of_year == {1, 7}
    assert crontab(minute=[0, 30]).minute == {0, 30}
    assert crontab(minute="5/20").minute == {5, 25, 45}
    assert crontab(hour="22-2").hour == {22, 23, 0, 1, 2}
    assert crontab.from_string("*/15 * * * *") == crontab(minute="*/15")
    assert crontab.from_string("0 9 1,15 * mon-fri").text == "0 9 1,15 * mon-fri"
    assert exported_crontab is crontab


def test_day_of_month_and_week_must_both_match() -> None:
    friday_13th = crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri")
    run = friday_13th.next_run(dt.datetime(2026, 1, 1, tzinfo=UTC))
    assert (run.day, run.weekday()) == (13, 4)
    assert run.date() == dt.date(2026, 2, 13)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": "*/0"}, "step"),
        ({"minute": 60}, "out of range 0-59"),
        ({"hour": "25"}, "out of range 0-23"),
        ({"day_of_week": "funday"}, "is not a number or a name"),
        ({"minute": ""}, "empty"),
        ({"minute": "1,,2"}, "empty part"),
        ({"day_of_month": 31, "month_of_year": "feb"}, "never fires"),
        ({"tz": "Mars/Olympus"}, "unknown time zone"),
    ],
)
def test_bad_fields_are_one_line_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        crontab(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_from_string_needs_five_fields() -> None:
    with pytest.raises(ValueError, match="must have 5 fields"):
        crontab.from_string("*/15 * * *")


def test_next_run_uses_the_zone_of_after_when_the_schedule_has_none() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    run = crontab(minute=0, hour=9).next_run(dt.datetime(2026, 6, 1, 10, 0, tzinfo=berlin))
    assert run == dt.datetime(2026, 6, 2, 9, 0, tzinfo=berlin)
    naive = crontab(minute=0, hour=9).next_run(dt.datetime(2026, 6, 1, 10, 0))
    assert naive == dt.datetime(2026, 6, 2, 9, 0, tzinfo=UTC)


def test_interval_due_times_are_aligned_and_strictly_after() -> None:
    every = schedule(run_every=dt.timedelta(seconds=30))
    t0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert every.next_run(t0) == t0 + dt.timedelta(seconds=30)
    assert every.next_run(t0 + dt.timedelta(seconds=1)) == t0 + dt.timedelta(seconds=30)
    assert every.next_run(t0 + dt.timedelta(seconds=29.999)) == t0 + dt.timedelta(seconds=30)
    two = schedule(2)
    after = dt.datetime(2026, 1, 1, 12, 0, 1, 500000, tzinfo=UTC)
    assert two.next_run(after) == dt.datetime(2026, 1, 1, 12, 0, 2, tzinfo=UTC)
    assert every.text == "every 30s"
    with pytest.raises(ValueError, match="positive"):
        schedule(0)


def test_parse_every_and_maybe_schedule() -> None:
    assert parse_every("30s") == 30
    assert parse_every("5m") == 300
    assert parse_every("1h") == 3600
    assert parse_every("1d") == 86400
    assert parse_every("1h30m") == 5400
    assert parse_every("2.5") == 2.5
    for bad in ("", "5x", "m5", "-1s", "0s"):
        with pytest.raises(ValueError):
            parse_every(bad)
    assert format_every(90) == "90s" and format_every(3600) == "1h" and format_every(1.5) == "1.5s"
    assert maybe_schedule(dt.timedelta(minutes=5)) == schedule(300)
    assert maybe_schedule(10) == schedule(10)
    assert maybe_schedule("30s") == schedule(30)
    assert maybe_schedule("*/5 * * * *") == crontab(minute="*/5")
    for value in (crontab(minute="*/5", tz="Europe/Berlin"), schedule(7)):
        assert schedule_from_dict(value.to_dict()) == value
    with pytest.raises(ValueError, match="a schedule must be"):
        maybe_schedule([1, 2])


def test_show_time_carries_the_zone() -> None:
    from conveyor.schedules import get_zone, show_time

    moment = 1_765_000_000.0  # 2025-12-06 05:46:40 UTC
    assert show_time(moment, get_zone("UTC")) == "2025-12-06 05:46:40 UTC"
    assert show_time(moment, get_zone("Europe/Berlin")) == "2025-12-06 06:46:40 CET"
    assert show_time(moment, get_zone("Asia/Kolkata")) == "2025-12-06 11:16:40 IST"
    assert show_time(moment, dt.timezone(dt.timedelta(hours=-3))) == "2025-12-06 02:46:40 -0300"


def test_prev_run_is_the_latest_slot_at_or_before_across_dst() -> None:
    """prev_run agrees with next_run: a slot, at or before ``before``, with no slot between."""
    second = dt.timedelta(seconds=1)
    for spec, zone_name, start in _cases()[::3]:
        zone = ZoneInfo(zone_name)
        sched = crontab.from_string(spec.text, tz=zone)
        for before in (start, start + dt.timedelta(minutes=45), start + dt.timedelta(hours=1, minutes=10)):
            prev = sched.prev_run(before)
            assert prev <= before, (spec.text, zone_name, before, prev)
            assert sched.next_run(prev - second) == prev, (spec.text, zone_name, before, prev)
            assert sched.next_run(prev) > before, (spec.text, zone_name, before, prev)


def test_prev_run_includes_a_slot_at_before_and_intervals_have_one_too() -> None:
    at = dt.datetime(2026, 5, 4, 10, 15, tzinfo=UTC)
    assert crontab(minute="*/15").prev_run(at) == at
    assert crontab(minute="*/15").prev_run(at - dt.timedelta(microseconds=1)) == at - dt.timedelta(minutes=15)
    # Berlin, 29 March 2026: 02:30 does not exist; the daily 02:30 job ran at 03:00.
    berlin = ZoneInfo("Europe/Berlin")
    daily = crontab(minute=30, hour=2, tz=berlin)
    assert daily.prev_run(dt.datetime(2026, 3, 29, 4, 0, tzinfo=berlin)) == dt.datetime(
        2026, 3, 29, 3, 0, tzinfo=berlin
    )
    every = schedule(900)
    assert every.prev_run(at) == at
    assert every.prev_run(at + dt.timedelta(seconds=899)) == at
