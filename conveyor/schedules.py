"""Schedules: when a periodic task is due. Pure time arithmetic, no I/O.

Two kinds, both with ``next_run(after) -> datetime`` and ``prev_run(before)`` (time-zone
aware):

- ``crontab``: Celery's ``crontab(minute=, hour=, day_of_week=, day_of_month=,
  month_of_year=)``, on the local wall clock of a time zone. The cron arithmetic
  itself is croniter's (on naive wall-clock times); this module only parses the
  fields the way Celery does and maps wall-clock times to instants across DST:

  * a wall-clock time that does not exist (clocks jump forward) runs once at the
    end of the gap: a daily 02:00 job runs at 03:00 on that day, not never;
  * a wall-clock time that happens twice (clocks go back) runs at its first
    occurrence only: a daily 02:00 job runs once that day, not twice.

  Day of month and day of week both have to match when both are restricted
  (Celery's rule; plain cron's is "either").
- ``schedule(run_every=)``: a fixed interval. Due times are multiples of the
  interval counted from the Unix epoch, so every scheduler process computes the
  same due times without talking to the others (the run dedupe key is the due
  time); ``every 1d`` therefore runs at 00:00 UTC: use a crontab for a local time.

``maybe_schedule`` turns what users write (a timedelta, seconds, "30s",
"*/15 * * * *") into one of the two.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = dt.timezone.utc

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int  # inclusive
    names: tuple[str, ...] = ()
    names_start: int = 0

    def number(self, text: str) -> int:
        text = text.strip().lower()
        if text.isdigit():
            return int(text)
        if self.names:
            prefix = text[:3]
            if (
                len(text) >= 3
                and prefix in self.names
                and (text == prefix or any(full.startswith(text) for full in _FULL_NAMES.get(prefix, ())))
            ):
                return self.names.index(prefix) + self.names_start
        raise ValueError(f"crontab {self.name}: {text!r} is not a number{self._names_hint()}")

    def _names_hint(self) -> str:
        return f" or a name ({', '.join(self.names)})" if self.names else ""


_FULL_NAMES = {
    "sun": ("sunday",),
    "mon": ("monday",),
    "tue": ("tuesday",),
    "wed": ("wednesday",),
    "thu": ("thursday",),
    "fri": ("friday",),
    "sat": ("saturday",),
    "jan": ("january",),
    "feb": ("february",),
    "mar": ("march",),
    "apr": ("april",),
    "jun": ("june",),
    "jul": ("july",),
    "aug": ("august",),
    "sep": ("september",),
    "oct": ("october",),
    "nov": ("november",),
    "dec": ("december",),
}

_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # longest each month gets

MINUTE = _Field("minute", 0, 59)
HOUR = _Field("hour", 0, 23)
DAY_OF_WEEK = _Field("day_of_week", 0, 7, _DAY_NAMES, 0)  # 7 is Sunday too
DAY_OF_MONTH = _Field("day_of_month", 1, 31)
MONTH_OF_YEAR = _Field("month_of_year", 1, 12, _MONTH_NAMES, 1)

CronField: TypeAlias = str | int | Iterable[int]


def parse_field(value: CronField, field: _Field) -> frozenset[int]:
    """One crontab field as Celery reads it -> the set of values it matches.

    Accepts an int, an iterable of ints, or a string of comma-separated parts:
    ``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n``, ``a/n`` (a to the end, step n);
    names for days and months (``mon-fri``, ``jan,jul``). A range whose end is
    before its start wraps around (``fri-mon``), as Celery's parser does.

    Raises:
        ValueError: one line naming the field and the bad part.
    """
    if isinstance(value, bool):
        raise ValueError(f"crontab {field.name}: expected a string, int or ints, got {value!r}")
    if isinstance(value, int):
        values = {value}
    elif isinstance(value, str):
        values = set()
        if not value.strip():
            raise ValueError(f"crontab {field.name}: empty")
        for part in value.split(","):
            values.update(_parse_part(part.strip(), field))
    else:
        try:
            values = {int(v) for v in value}
        except (TypeError, ValueError):
            raise ValueError(f"crontab {field.name}: expected a string, int or ints, got {value!r}") from None
        if not values:
            raise ValueError(f"crontab {field.name}: empty")
    for v in values:
        if not field.low <= v <= field.high:
            raise ValueError(f"crontab {field.name}: {v} is out of range {field.low}-{field.high}")
    if field is DAY_OF_WEEK and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def _parse_part(part: str, field: _Field) -> set[int]:
    if not part:
        raise ValueError(f"crontab {field.name}: empty part in list")
    body, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not step_text.strip().isdigit() or int(step_text) == 0:
            raise ValueError(
                f"crontab {field.name}: step {step_text!r} in {part!r} must be a positive number"
            )
        step = int(step_text)
    high = 6 if field is DAY_OF_WEEK else field.high
    if body == "*":
        start, end = field.low, high
    elif "-" in body:
        first, _, last = body.partition("-")
        start, end = field.number(first), field.number(last)
    else:
        start = field.number(body)
        end = high if slash else start
    for v in (start, end):
        if not field.low <= v <= field.high:
            raise ValueError(
                f"crontab {field.name}: {v} is out of range {field.low}-{field.high} in {part!r}"
            )
    if end < start:  # wraps: fri-mon, 22-2
        span = list(range(start, high + 1)) + list(range(field.low, end + 1))
    else:
        span = list(range(start, end + 1))
    return set(span[::step])


def _field_text(values: frozenset[int], field: _Field) -> str:
    full = set(range(field.low, (6 if field is DAY_OF_WEEK else field.high) + 1))
    if set(values) == full:
        return "*"
    return ",".join(str(v) for v in sorted(values))


def _zone(tz: str | dt.tzinfo | None) -> dt.tzinfo | None:
    if tz is None or isinstance(tz, dt.tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {tz!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def get_zone(name: str | dt.tzinfo | None) -> dt.tzinfo:
    """The ``timezone`` setting as a tzinfo (UTC when unset)."""
    return _zone(name) or UTC


def show_time(epoch: float, zone: dt.tzinfo) -> str:
    """A time as people read it, always with its zone: ``2026-12-07 05:53:11 CET``.

    The zone's abbreviation where it has one, else the UTC offset (``+0530``).
    """
    moment = dt.datetime.fromtimestamp(epoch, zone)
    name = moment.tzname() or ""
    suffix = name if name.isalpha() else moment.strftime("%z")
    return f"{moment:%Y-%m-%d %H:%M:%S} {suffix}"


class BaseSchedule:
    """What the scheduler needs from a schedule."""

    kind: ClassVar[str]

    def next_run(self, after: dt.datetime) -> dt.datetime:
        """The first due time strictly after ``after`` (aware; naive means UTC)."""
        raise NotImplementedError

    def prev_run(self, before: dt.datetime) -> dt.datetime:
        """The last due time at or before ``before`` (aware; naive means UTC)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text


class crontab(BaseSchedule):  # noqa: N801 - Celery's name
    """A cron schedule on a time zone's wall clock (Celery's ``crontab``).

    Args:
        minute, hour, day_of_week, day_of_month, month_of_year: Celery's field forms
            (``"*/15"``, ``"9-17"``, ``"mon-fri"``, ``"1,15"``, ints, or iterables of
            ints); day_of_week 0 or 7 is Sunday, 1 Monday.
        tz: the zone whose wall clock the fields mean; None: the scheduler's
            ``timezone`` setting (or the zone of ``after`` in ``next_run``).

    Example::

        crontab(minute=0, hour="9-17", day_of_week="mon-fri")   # hourly in office hours
        crontab.from_string("*/15 * * * *")
    """

    kind = "crontab"

    def __init__(
        self,
        minute: CronField = "*",
        hour: CronField = "*",
        day_of_week: CronField = "*",
        day_of_month: CronField = "*",
        month_of_year: CronField = "*",
        *,
        tz: str | dt.tzinfo | None = None,
    ) -> None:
        self._raw = (minute, hour, day_of_month, month_of_year, day_of_week)
        self.minute = parse_field(minute, MINUTE)
        self.hour = parse_field(hour, HOUR)
        self.day_of_week = parse_field(day_of_week, DAY_OF_WEEK)
        self.day_of_month = parse_field(day_of_month, DAY_OF_MONTH)
        self.month_of_year = parse_field(month_of_year, MONTH_OF_YEAR)
        self.tz = _zone(tz)
        self.expression = " ".join(
            [
                _field_text(self.minute, MINUTE),
                _field_text(self.hour, HOUR),
                _field_text(self.day_of_month, DAY_OF_MONTH),
                _field_text(self.month_of_year, MONTH_OF_YEAR),
                _field_text(self.day_of_week, DAY_OF_WEEK),
            ]
        )
        self._check_possible()

    @classmethod
    def from_string(cls, text: str, *, tz: str | dt.tzinfo | None = None) -> crontab:
        """``"m h dom mon dow"`` (standard cron order) -> crontab."""
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(
                f"cron expression {text!r} must have 5 fields (minute hour day-of-month month day-of-week)"
            )
        minute, hour, dom, month, dow = parts
        return cls(minute, hour, dow, dom, month, tz=tz)

    def _check_possible(self) -> None:
        # Feb 30, or Apr 31 only: refuse now rather than never fire.
        if not any(d <= _MONTH_DAYS[m - 1] for m in self.month_of_year for d in self.day_of_month):
            raise ValueError(f"crontab {self.text!r} never fires: no month has that day")

    @property
    def text(self) -> str:
        """The fields as written (standard cron order), for listings."""
        return " ".join(_raw_text(v) for v in self._raw)

    def __repr__(self) -> str:
        zone = f" {self.tz}" if self.tz else ""
        return f"<crontab: {self.text}{zone}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and (self.expression, self.tz) == (other.expression, other.tz)

    def __hash__(self) -> int:
        return hash((self.expression, str(self.tz)))

    def matches(self, wall: dt.datetime) -> bool:
        """Whether a wall-clock minute matches every field (Celery: day of month AND week)."""
        return (
            wall.minute in self.minute
            and wall.hour in self.hour
            and wall.day in self.day_of_month
            and wall.month in self.month_of_year
            and (wall.isoweekday() % 7) in self.day_of_week
        )

    def next_run(self, after: dt.datetime, *, tz: str | dt.tzinfo | None = None) -> dt.datetime:
        """The first due instant strictly after ``after``, in the schedule's zone.

        The zone is ``tz``, else the schedule's own, else ``after``'s (naive: UTC).
        """
        # Imported here so `import conveyor` stays light: croniter loads with the first schedule.
        from croniter import croniter  # type: ignore[import-untyped]

        zone = _zone(tz) or self.tz or after.tzinfo or UTC
        if after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        local = after.astimezone(zone)
        # Wall-clock arithmetic by croniter on naive times; instants by zoneinfo below.
        start = local.replace(tzinfo=None, fold=0)
        it = croniter(self.expression, start, day_or=False)
        for _ in range(10_000):
            wall = it.get_next(dt.datetime)
            instant = wall_to_instant(wall, zone)
            if instant > after:
                return instant.astimezone(zone)
        raise RuntimeError(f"crontab {self.text!r}: no due time found after {after.isoformat()}")

    def prev_run(self, before: dt.datetime, *, tz: str | dt.tzinfo | None = None) -> dt.datetime:
        """The last due instant at or before ``before``: the latest slot already due.

        Found in one step back however far ``before`` is from the last run, so a
        scheduler skipping months of missed per-minute slots does not walk them.
        """
        from croniter import croniter

        zone = _zone(tz) or self.tz or before.tzinfo or UTC
        if before.tzinfo is None:
            before = before.replace(tzinfo=UTC)
        local = before.astimezone(zone).replace(tzinfo=None, fold=0, second=0, microsecond=0)
        # croniter's get_prev is strictly before its start: start a minute on, so a
        # slot at ``before``'s own minute counts.
        it = croniter(self.expression, local + dt.timedelta(minutes=1), day_or=False)
        for _ in range(10_000):
            instant = wall_to_instant(it.get_prev(dt.datetime), zone)
            if instant <= before:
                break
        else:
            raise RuntimeError(f"crontab {self.text!r}: no due time found before {before.isoformat()}")
        # In the repeated hour after clocks go back, a wall time maps to its first
        # occurrence, so the slots of that hour's first pass may be later than the
        # one found: step forward over them as next_run would have.
        while (later := self.next_run(instant, tz=zone)) <= before:
            instant = later
        return instant.astimezone(zone)

    def dst_note(self, due: dt.datetime, zone: dt.tzinfo) -> str | None:
        """Why ``due`` is not at a wall-clock time the fields name (a DST gap), or None."""
        local = due.astimezone(zone)
        if self.matches(local):
            return None
        return (
            f"the scheduled local time did not exist on {local.date()} in {zone} "
            f"(clocks moved forward); running at {local.strftime('%H:%M')} instead"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": "crontab", "cron": self.text, "tz": str(self.tz) if self.tz else None}


def _raw_text(value: CronField) -> str:
    if isinstance(value, (str, int)):
        return str(value).strip()
    return ",".join(str(v) for v in sorted(value))


def wall_to_instant(wall: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """A naive wall-clock time in ``zone`` -> the instant it first happens.

    Ambiguous (clocks went back): the first occurrence. Non-existent (clocks jumped
    forward): the end of the gap, the first instant after it.
    """
    first = wall.replace(tzinfo=zone, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) == wall:
        return utc
    # In a gap: fold=1 reads it with the offset after the jump (an instant before the
    # transition), fold=0 with the one before it (an instant after). Bisect between.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = utc
    if low > high:
        low, high = high, low
    lo_s, hi_s = math.floor(low.timestamp()), math.ceil(high.timestamp())
    lo_off = dt.datetime.fromtimestamp(lo_s, zone).utcoffset()
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if dt.datetime.fromtimestamp(mid, zone).utcoffset() == lo_off:
            lo_s = mid
        else:
            hi_s = mid
    return dt.datetime.fromtimestamp(hi_s, UTC)


class schedule(BaseSchedule):  # noqa: N801 - Celery's name
    """Every ``run_every`` (a timedelta or seconds), due at multiples of it since the epoch."""

    kind = "interval"

    def __init__(self, run_every: dt.timedelta | float) -> None:
        seconds = run_every.total_seconds() if isinstance(run_every, dt.timedelta) else run_every
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise ValueError(f"schedule interval must be a timedelta or seconds, got {run_every!r}")
        if seconds <= 0:
            raise ValueError(f"schedule interval must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.run_every = dt.timedelta(seconds=self.seconds)

    def next_run(self, after: dt.datetime) -> dt.datetime:
        if after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        ts = after.timestamp()
        slot = math.floor(ts / self.seconds + 1e-9) + 1
        due = slot * self.seconds
        if due <= ts:
            due += self.seconds
        return dt.datetime.fromtimestamp(due, UTC)

    def prev_run(self, before: dt.datetime) -> dt.datetime:
        """The last due time at or before ``before``."""
        if before.tzinfo is None:
            before = before.replace(tzinfo=UTC)
        due = math.floor(before.timestamp() / self.seconds + 1e-9) * self.seconds
        return dt.datetime.fromtimestamp(due, UTC)

    @property
    def text(self) -> str:
        return f"every {format_every(self.seconds)}"

    def __repr__(self) -> str:
        return f"<schedule: {self.text}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, schedule) and self.seconds == other.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "interval", "seconds": self.seconds}


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EVERY_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|min|m|sec|s)")


def parse_every(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"1h30m"`` or plain seconds -> seconds.

    Raises:
        ValueError: one line with the accepted forms.
    """
    raw = text.strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        pos, seconds = 0, 0.0
        compact = raw.replace(" ", "")
        for match in _EVERY_PART.finditer(compact):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(compact) or not compact:
            raise ValueError(
                f"interval {text!r}: use a number and a unit, e.g. 30s, 5m, 1h, 1d or 1h30m"
            ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"interval {text!r} must be positive")
    return seconds


def format_every(seconds: float) -> str:
    """Seconds -> the shortest ``parse_every`` form (90 -> "90s", 3600 -> "1h")."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Schedule: TypeAlias = crontab | schedule


def maybe_schedule(value: Any) -> Schedule:
    """Whatever a user may write as a schedule -> a schedule object.

    A crontab or schedule as is; a timedelta or seconds -> an interval; a string with
    five fields -> ``crontab.from_string``, else ``parse_every``; a dict from
    ``to_dict`` back to its schedule.

    Raises:
        ValueError: the value is none of those (one line).
    """
    if isinstance(value, (crontab, schedule)):
        return value
    if isinstance(value, dt.timedelta) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return schedule(value)
    if isinstance(value, str):
        if len(value.split()) == 5:
            return crontab.from_string(value)
        return schedule(parse_every(value))
    if isinstance(value, Mapping):
        return schedule_from_dict(value)
    raise ValueError(
        f"a schedule must be crontab(...), schedule(...), a timedelta, seconds, '30s' or a cron string; got {value!r}"
    )


def schedule_from_dict(data: Mapping[str, Any]) -> Schedule:
    kind = data.get("type")
    if kind == "crontab":
        return crontab.from_string(str(data["cron"]), tz=data.get("tz"))
    if kind == "interval":
        return schedule(float(data["seconds"]))
    raise ValueError(f"unknown schedule record {dict(data)!r}")
