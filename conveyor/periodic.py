"""Periodic tasks: the ones in ``beat_schedule`` and the ones added at run time.

Run-time schedules live in the broker's store (kv namespace ``periodic``), so the
CLI, the dashboard and every scheduler process see the same list with no second
database and no restart; what has run is kept apart (kv ``periodic-state``), written
only by the scheduler that holds the leader lease. Config schedules come from the
code and are listed beside them, read-only.

``app.periodic`` is the API the CLI and the dashboard use::

    app.periodic.add("poll-feeds", "feeds.tasks.poll", crontab(minute="*/15"), kwargs={"source": "x"})
    app.periodic.disable("poll-feeds")
    [e.name for e in app.periodic.list()]
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from conveyor.exceptions import ConfigurationError, ConveyorError
from conveyor.schedules import Schedule, get_zone, maybe_schedule, schedule_from_dict

if TYPE_CHECKING:
    from conveyor.app import Conveyor

SCHEDULES_NS = "periodic"
STATE_NS = "periodic-state"
# One record, rewritten on every run-time change: the leading scheduler reads it
# each second and re-reads the schedules when it differs (CHANGE_CHECK_S in beat.py).
CHANGES_NS, CHANGES_KEY = "periodic-changes", "last"
# Each scheduler's beat_schedule, keyed by its owner id, so every process can see
# which config names exist and a scheduler can tell its config from the leader's.
CONFIG_NS = "periodic-config"
CONFIG_TTL_S = 300.0  # rewritten every CONFIG_REFRESH_S in beat.py; gone this long after a crash
LEADER_NS, LEADER_KEY = "periodic-leader", "owner"  # the owner whose config is running
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "catch_up", "enabled"})
OPTION_KEYS = frozenset({"queue", "priority", "expires"})
MAX_NAME_LENGTH = 200


class PeriodicError(ConveyorError):
    """A periodic-task request that cannot be carried out (unknown name, read-only entry)."""


class UnknownTaskWarning(UserWarning):
    """A periodic task names a task this app does not define: workers will dead-letter its runs."""


@dataclass(frozen=True)
class PeriodicEntry:
    """One periodic task as listed: its definition and what has run.

    ``last_run_at`` is when the scheduler sent the last run, ``next_run_at`` when it
    will send the next (epoch seconds; None when disabled).
    """

    name: str
    task: str
    schedule: Schedule
    schedule_text: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    source: str = "runtime"  # "config" | "runtime"
    last_run_at: float | None = None
    next_run_at: float | None = None
    total_run_count: int = 0
    catch_up: bool = False
    since: float | None = None  # missed slots before this never run (created or re-enabled)
    last_due_at: float | None = None  # the due time of the last run sent


@dataclass
class RunState:
    """What the scheduler keeps per schedule in kv ``periodic-state``."""

    last_due_at: float | None = None
    last_run_at: float | None = None
    total_run_count: int = 0
    since: float | None = None
    last_task_id: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def decode(cls, raw: bytes | None) -> RunState:
        if not raw:
            return cls()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return cls()
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"periodic task name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH or any(ch in name for ch in "\n\r\t\0"):
        raise ValueError(
            f"periodic task name {name[:40]!r}...: at most {MAX_NAME_LENGTH} printable characters"
        )
    return name


def check_options(options: Any, where: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}: options must be a dict, got {type(options).__name__}")
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown option(s) {', '.join(sorted(map(str, unknown)))}; "
            f"allowed: {', '.join(sorted(OPTION_KEYS))}"
        )
    queue = options.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"{where}: options.queue must be a queue name, got {queue!r}")
    priority = options.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9
    ):
        raise ValueError(f"{where}: options.priority must be an integer from 0 to 9, got {priority!r}")
    expires = options.get("expires")
    if expires is not None:
        if isinstance(expires, dt.timedelta):
            expires = expires.total_seconds()
        if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0:
            raise ValueError(f"{where}: options.expires must be positive seconds, got {expires!r}")
    return {k: (expires if k == "expires" else v) for k, v in options.items() if v is not None}


def check_call(args: Any, kwargs: Any, where: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args is None:
        args = ()
    if not isinstance(args, (list, tuple)):
        raise ValueError(f"{where}: args must be a list or tuple, got {type(args).__name__}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{where}: kwargs must be a dict, got {type(kwargs).__name__}")
    try:
        orjson.dumps([list(args), dict(kwargs)])
    except TypeError as exc:
        raise TypeError(f"{where}: args and kwargs must be JSON-serialisable: {exc}") from None
    return tuple(args), dict(kwargs)


def config_entries(app: Conveyor) -> list[PeriodicEntry]:
    """``beat_schedule`` checked and parsed; no state filled in.

    Raises:
        ConfigurationError: one line naming the entry and what is wrong with it.
    """
    raw = app.conf.beat_schedule
    if not raw:
        return []
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"beat_schedule must be a dict of name -> entry, got {type(raw).__name__}")
    entries = []
    for name, spec in raw.items():
        where = f"beat_schedule[{name!r}]"
        try:
            check_name(name)
            if not isinstance(spec, Mapping):
                raise ValueError(
                    f"{where} must be a dict with 'task' and 'schedule', got {type(spec).__name__}"
                )
            unknown = set(spec) - ENTRY_KEYS
            if unknown:
                raise ValueError(
                    f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                    f"allowed: {', '.join(sorted(ENTRY_KEYS))}"
                )
            task = spec.get("task")
            if not isinstance(task, str) or not task:
                raise ValueError(f"{where}: 'task' must be a task name, got {task!r}")
            if "schedule" not in spec:
                raise ValueError(
                    f"{where}: 'schedule' is missing (crontab(...), seconds, a timedelta, '30s')"
                )
            try:
                sched = maybe_schedule(spec["schedule"])
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            args, kwargs = check_call(spec.get("args"), spec.get("kwargs"), where)
            options = check_options(spec.get("options"), where)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(str(exc)) from None
        entries.append(
            PeriodicEntry(
                name=name,
                task=task,
                schedule=sched,
                schedule_text=sched.text,
                args=args,
                kwargs=kwargs,
                options=options,
                enabled=bool(spec.get("enabled", True)),
                source="config",
                catch_up=bool(spec.get("catch_up", False)),
            )
        )
    return entries


def decode_record(name: str, raw: bytes) -> PeriodicEntry | None:
    """A run-time schedule from the store; None for a record this version cannot read."""
    try:
        data = orjson.loads(raw)
        sched = schedule_from_dict(data["schedule"])
        return PeriodicEntry(
            name=name,
            task=str(data["task"]),
            schedule=sched,
            schedule_text=sched.text,
            args=tuple(data.get("args") or ()),
            kwargs=dict(data.get("kwargs") or {}),
            options=dict(data.get("options") or {}),
            enabled=bool(data.get("enabled", True)),
            source="runtime",
            catch_up=bool(data.get("catch_up", False)),
            since=data.get("since"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def definition(entry: PeriodicEntry) -> dict[str, Any]:
    """What an entry sends and when, as JSON data (equal definitions compare equal)."""
    data = {
        "task": entry.task,
        "schedule": entry.schedule.to_dict(),
        "args": list(entry.args),
        "kwargs": entry.kwargs,
        "options": entry.options,
        "enabled": entry.enabled,
        "catch_up": entry.catch_up,
    }
    loaded: dict[str, Any] = orjson.loads(orjson.dumps(data))
    return loaded


def encode_record(entry: PeriodicEntry) -> bytes:
    return orjson.dumps({**definition(entry), "since": entry.since})


def config_record(owner: str, entries: Sequence[PeriodicEntry], started_at: float) -> bytes:
    """One scheduler's beat_schedule with its source, as published in kv ``periodic-config``."""
    return orjson.dumps(
        {
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": started_at,
            "entries": {e.name: definition(e) for e in entries},
        }
    )


def decode_config(raw: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("entries"), dict) else None


def config_drift(mine: Mapping[str, Any], leaders: Mapping[str, Any]) -> str:
    """How one config differs from the leader's, by entry name; "" when they agree."""
    parts = []
    for label, names in (
        ("missing here", sorted(set(leaders) - set(mine))),
        ("extra here", sorted(set(mine) - set(leaders))),
        ("different", sorted(n for n in set(mine) & set(leaders) if mine[n] != leaders[n])),
    ):
        if names:
            parts.append(f"{label}: {', '.join(map(repr, names))}")
    return "; ".join(parts)


def unknown_task(app: Conveyor, task: str) -> str | None:
    """Why runs of ``task`` will fail, when this app defines tasks but not that one."""
    if not app.tasks or task in app.tasks:
        return None
    return (
        f"task {task!r} is not defined in this app: workers without it will dead-letter "
        "every run (check the name, or that the module defining it is imported)"
    )


def broker_time(broker: Any) -> float:
    """Now by the broker's clock: Redis's ``TIME``; SQLite's and memory's are the local clock."""
    read = getattr(broker, "server_time", None)
    return float(read()) if read is not None else time.time()


def cursor_of(entry: PeriodicEntry, state: RunState, now: float) -> float:
    """Where the next slot is counted from: the later of the last run's due time and
    ``since`` (creation or re-enabling, or the scheduler's first sighting of a config
    entry); ``now`` when there is neither."""
    known = [x for x in (state.last_due_at, entry.since, state.since) if x is not None]
    return max(known) if known else now


def next_due(entry: PeriodicEntry, state: RunState, zone: dt.tzinfo, now: float) -> float:
    """When the entry is next due (epoch seconds), from what has run."""
    cursor = cursor_of(entry, state, now)
    return entry.schedule.next_run(dt.datetime.fromtimestamp(cursor, zone)).timestamp()


class Periodic:
    """``app.periodic``: list and change periodic tasks (run-time ones are stored in the broker)."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    @property
    def zone(self) -> dt.tzinfo:
        try:
            return get_zone(self.app.conf.timezone)
        except ValueError as exc:
            raise ConfigurationError(f"timezone setting: {exc}") from None

    def _config(self) -> dict[str, PeriodicEntry]:
        return {e.name: e for e in config_entries(self.app)}

    def unknown_task(self, task: str) -> str | None:
        """Why runs of ``task`` would be dead-lettered, when this app knows its tasks."""
        return unknown_task(self.app, task)

    def published_configs(self) -> list[dict[str, Any]]:
        """Each running scheduler's beat_schedule with its source (owner, host, pid, started_at)."""
        found = [decode_config(raw) for raw in self.app.broker.kv_items(CONFIG_NS).values()]
        return sorted((c for c in found if c is not None), key=lambda c: str(c.get("owner")))

    def _config_source(self, name: str) -> str | None:
        """Which scheduler's beat_schedule holds ``name`` (this app's counts too), if any."""
        if name in self._config():
            return "this app's"
        for published in self.published_configs():
            if name in published["entries"]:
                return f"{published.get('owner')}'s (host {published.get('host')})"
        return None

    def _runtime(self) -> dict[str, PeriodicEntry]:
        found = {}
        for name, raw in self.app.broker.kv_items(SCHEDULES_NS).items():
            entry = decode_record(name, raw)
            if entry is not None:
                found[name] = entry
        return found

    def _with_state(self, entry: PeriodicEntry, state: RunState, now: float) -> PeriodicEntry:
        next_at: float | None = None
        if entry.enabled:
            next_at = next_due(entry, state, self.zone, now)
            if next_at < now and not entry.catch_up:
                # Overdue while no scheduler ran: one run is sent as soon as one starts.
                next_at = now
        since = entry.since if entry.since is not None else state.since
        return replace(
            entry,
            last_run_at=state.last_run_at,
            next_run_at=next_at,
            total_run_count=state.total_run_count,
            since=since,
            last_due_at=state.last_due_at,
        )

    def list(self) -> list[PeriodicEntry]:
        """Config schedules first, then run-time ones, each sorted by name."""
        states = {k: RunState.decode(v) for k, v in self.app.broker.kv_items(STATE_NS).items()}
        now = time.time()
        config = self._config()
        runtime = {k: v for k, v in self._runtime().items() if k not in config}
        ordered = [config[k] for k in sorted(config)] + [runtime[k] for k in sorted(runtime)]
        return [self._with_state(e, states.get(e.name, RunState()), now) for e in ordered]

    def get(self, name: str) -> PeriodicEntry | None:
        entry = self._config().get(name)
        if entry is None:
            raw = self.app.broker.kv_get(SCHEDULES_NS, name)
            entry = decode_record(name, raw) if raw is not None else None
        if entry is None:
            return None
        state = RunState.decode(self.app.broker.kv_get(STATE_NS, name))
        return self._with_state(entry, state, time.time())

    def add(
        self,
        name: str,
        task: str,
        schedule: Any,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
        catch_up: bool = False,
    ) -> PeriodicEntry:
        """Store a run-time schedule, replacing one of the same name; the running
        scheduler picks it up within about a second.

        Raises:
            PeriodicError: ``name`` is a config schedule (read-only), here or in any
                running scheduler's published beat_schedule.

        Warns:
            UnknownTaskWarning: the app defines tasks but not ``task``; stored anyway
                (the workers' app may define it), but check the name.
            ValueError, TypeError: a bad schedule, task name, arguments or option.
        """
        check_name(name)
        # Checked against every scheduler's published config, not only this process's:
        # a CLI or dashboard app often has no beat_schedule of its own.
        source = self._config_source(name)
        if source is not None:
            raise PeriodicError(
                f"periodic task {name!r} comes from {source} beat_schedule (config) and is read-only"
            )
        if not isinstance(task, str) or not task:
            raise ValueError(f"periodic task {name!r}: task must be a task name, got {task!r}")
        problem = self.unknown_task(task)
        if problem is not None:
            warnings.warn(UnknownTaskWarning(f"periodic task {name!r}: {problem}"), stacklevel=2)
        where = f"periodic task {name!r}"
        sched = maybe_schedule(schedule)
        call_args, call_kwargs = check_call(args, kwargs, where)
        entry = PeriodicEntry(
            name=name,
            task=task,
            schedule=sched,
            schedule_text=sched.text,
            args=call_args,
            kwargs=call_kwargs,
            options=check_options(options, where),
            enabled=enabled,
            source="runtime",
            catch_up=catch_up,
            since=broker_time(self.app.broker),  # due times count by the broker's clock, as beat's do
        )
        broker = self.app.broker
        broker.kv_delete(STATE_NS, name)  # a replaced schedule starts afresh
        broker.kv_set(SCHEDULES_NS, name, encode_record(entry))
        self._mark_changed()
        return self._with_state(entry, RunState(), time.time())

    def _mark_changed(self) -> None:
        self.app.broker.kv_set(CHANGES_NS, CHANGES_KEY, os.urandom(8).hex().encode())

    def _change(self, name: str, action: str) -> PeriodicEntry:
        if name in self._config():
            raise PeriodicError(
                f"periodic task {name!r} comes from beat_schedule (config) and is read-only: "
                f"{action} it in the code"
            )
        raw = self.app.broker.kv_get(SCHEDULES_NS, name)
        entry = decode_record(name, raw) if raw is not None else None
        if entry is None:
            raise PeriodicError(f"no periodic task named {name!r}: see `conveyor periodic list`")
        return entry

    def enable(self, name: str) -> PeriodicEntry:
        """Enable a run-time schedule; slots missed while it was disabled never run."""
        entry = self._change(name, "enable")
        if not entry.enabled:
            entry = replace(entry, enabled=True, since=broker_time(self.app.broker))
            self.app.broker.kv_set(SCHEDULES_NS, name, encode_record(entry))
            self._mark_changed()
        return self.get(name) or entry

    def disable(self, name: str) -> PeriodicEntry:
        entry = self._change(name, "disable")
        if entry.enabled:
            entry = replace(entry, enabled=False)
            self.app.broker.kv_set(SCHEDULES_NS, name, encode_record(entry))
            self._mark_changed()
        return self.get(name) or entry

    def remove(self, name: str) -> None:
        self._change(name, "remove")
        self.app.broker.kv_delete(SCHEDULES_NS, name)
        self.app.broker.kv_delete(STATE_NS, name)
        self._mark_changed()
