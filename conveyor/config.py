"""Every setting in one table: name, default, how to read it from the environment.

Precedence, lowest first: the defaults below; ``CONVEYOR_<NAME>`` environment
variables (read when the app is created); then whatever the code sets
(``Conveyor(broker=...)``, ``config_from_object``, ``conf.update``). Code wins so a
project's settings file behaves the same on every machine; the environment still
configures everything the code leaves alone (the twelve-factor use).

Names are Celery's where Celery has one, so a Django project's ``CELERY_*``
settings read unchanged with ``config_from_object(settings, namespace="CELERY")``.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from conveyor.exceptions import ConfigurationError

log = logging.getLogger("conveyor.config")


def _to_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _to_opt_float(raw: str) -> float | None:
    return None if raw.strip().lower() in ("", "none", "null") else float(raw)


def _to_opt_int(raw: str) -> int | None:
    return None if raw.strip().lower() in ("", "none", "null") else int(raw)


def _to_opt_str(raw: str) -> str | None:
    return None if raw.strip().lower() in ("", "none", "null") else raw


def _to_backend(raw: str) -> str | bool | None:
    lowered = raw.strip().lower()
    if lowered in ("false", "0", "off", "disabled"):
        return False
    return _to_opt_str(raw)


# Celery's backends that keep results for the project to read back, without naming a
# store: Conveyor's answer to each is the broker's own store (which the Django admin,
# the CLI and the dashboard read).
_BROKER_STORE_SPELLINGS = frozenset({"django-db", "rpc", "rpc://"})


def celery_backend_url(url: str) -> str | None:
    """A result backend URL as Celery projects spell it, as Conveyor names the store:
    None for the broker's own store (``django-db``, ``rpc://``); ``db+`` SQLAlchemy
    URLs without their prefix and driver (``db+postgresql+psycopg2://...`` is
    ``postgresql://...``, ``db+sqlite:///x`` is ``sqlite:///x``); others unchanged."""
    if url.strip().lower() in _BROKER_STORE_SPELLINGS:
        return None
    if url[:3].lower() != "db+":
        return url
    scheme, sep, rest = url[3:].partition(":")
    dialect = scheme.split("+", 1)[0].lower()
    if dialect in ("postgresql", "postgres", "sqlite") and sep:
        return f"{'sqlite' if dialect == 'sqlite' else 'postgresql'}:{rest}"
    return url


def _to_json(raw: str) -> Any:
    return orjson.loads(raw)


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    doc: str

    @property
    def env(self) -> str:
        return "CONVEYOR_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("broker_url", "sqlite:///conveyor.sqlite3", str, "where messages live"),
    Setting(
        "result_backend", None, _to_backend, "where results live; None = the broker's store, False = none"
    ),
    Setting(
        "broker_visibility_timeout", 30.0, float, "seconds a fetched, unacknowledged message stays invisible"
    ),
    Setting("task_default_queue", "default", str, "queue for tasks with no queue or route"),
    Setting("task_default_priority", 0, int, "0 (lowest) to 9 (highest)"),
    Setting(
        "task_queues",
        None,
        _to_json,
        "queues a worker consumes when -Q is not given (names, or Celery Queue objects)",
    ),
    Setting(
        "task_annotations", None, _to_json, "per-task option overrides: {'task.name': {...}} or {'*': {...}}"
    ),
    Setting("task_routes", None, _to_json, "task name or glob pattern -> queue name (or {'queue': ...})"),
    Setting("task_acks_late", False, _to_bool, "ack after the task finishes (at-least-once)"),
    Setting(
        "task_acks_on_failure_or_timeout",
        True,
        _to_bool,
        "acks_late: ack a task that failed or timed out (True) or dead-letter its message (False)",
    ),
    Setting(
        "task_reject_on_worker_lost",
        True,
        _to_bool,
        "acks_late: requeue a task whose process died (True) or record FAILURE WorkerLostError (False)",
    ),
    Setting("task_time_limit", None, _to_opt_float, "hard time limit, seconds"),
    Setting("task_soft_time_limit", None, _to_opt_float, "soft time limit, seconds"),
    Setting("task_always_eager", False, _to_bool, "run tasks inline in the caller (tests)"),
    Setting("task_eager_propagates", False, _to_bool, "eager mode re-raises task exceptions"),
    Setting("task_track_started", False, _to_bool, "store STARTED when a task starts"),
    Setting("task_ignore_result", False, _to_bool, "do not store results by default"),
    Setting("task_default_rate_limit", None, _to_opt_str, "rate limit for tasks that set none"),
    Setting("task_default_max_retries", 3, int, "max_retries for tasks that set none"),
    Setting("task_default_retry_delay", 180.0, float, "countdown for retry() when none is given"),
    Setting("task_serializer", "json", str, "how task messages are encoded: json, msgpack or pickle"),
    Setting("result_serializer", "json", str, "how results are stored: json, msgpack or pickle"),
    Setting(
        "accept_content",
        ["json"],
        _to_json,
        "content types a worker deserializes; others are dead-lettered unread",
    ),
    Setting(
        "result_accept_content",
        None,
        _to_json,
        "content types a client reads results in; None = accept_content",
    ),
    Setting("task_message_max_bytes", 8 * 1024 * 1024, int, "largest encoded message accepted at enqueue"),
    Setting(
        "task_max_deliveries",
        10,
        int,
        "deliveries after which a message whose worker keeps dying is dead-lettered",
    ),
    Setting("worker_concurrency", None, _to_opt_int, "child processes or threads; None = CPU count"),
    Setting("worker_pool", "prefork", str, "prefork, threads, solo or asyncio"),
    Setting(
        "worker_async_concurrency",
        100,
        int,
        "async def tasks each process awaits at once on its event loop, beside its sync tasks",
    ),
    Setting("worker_prefetch_multiplier", 4, int, "messages reserved per pool slot"),
    Setting("worker_max_tasks_per_child", None, _to_opt_int, "recycle a child process after this many tasks"),
    Setting(
        "worker_max_memory_per_child",
        None,
        _to_opt_int,
        "KiB: replace a prefork child whose resident memory exceeds this after a task",
    ),
    Setting(
        "worker_autoscale_idle_s", 30.0, float, "--autoscale: idle seconds before the pool shrinks by one"
    ),
    Setting("worker_shutdown_timeout", 60.0, float, "warm shutdown: seconds to let running tasks finish"),
    Setting(
        "worker_early_ack_ahead",
        0,
        int,
        "early-ack messages (up to 32) a draining process acks ahead of running them: faster drains, "
        "but a SIGKILLed process loses those it holds; 0 = none, nothing lost",
    ),
    Setting("worker_send_task_events", True, _to_bool, "workers write task events (monitoring, dashboard)"),
    Setting(
        "worker_heartbeat_interval", 2.0, float, "seconds between worker heartbeats; offline after 3 missed"
    ),
    Setting("events_max_count", 100_000, int, "task events kept in the broker (newest)"),
    Setting(
        "events_max_age", 7 * 86400.0, _to_opt_float, "seconds task events are kept; None = no age limit"
    ),
    Setting("result_expires", 86400.0, _to_opt_float, "seconds results are kept"),
    Setting(
        "result_relations",
        True,
        _to_bool,
        "store tasks' parents and children with the results (AsyncResult.children anywhere); "
        "one more write per chain sent and per task sent from a task",
    ),
    Setting("beat_schedule", None, _to_json, "periodic tasks from config"),
    Setting("timezone", "UTC", str, "time zone for crontab schedules"),
    Setting(
        "beat_lease_seconds",
        10.0,
        float,
        "scheduler leader lease; a follower takes over this long (plus up to 2 s) after the leader dies",
    ),
    Setting(
        "beat_max_loop_interval",
        5.0,
        float,
        "longest the scheduler sleeps; run-time schedule changes are seen within this",
    ),
    Setting(
        "dashboard_auth", None, _to_opt_str, "dashboard admins: user:password, comma-separated for several"
    ),
    Setting(
        "dashboard_viewer_auth",
        None,
        _to_opt_str,
        "dashboard read-only users: user:password, comma-separated",
    ),
    Setting(
        "dashboard_auth_file",
        None,
        _to_opt_str,
        "dashboard users with hashed passwords: a file of user:scrypt-hash[:viewer] lines",
    ),
    Setting(
        "dashboard_login_max_failures",
        5,
        int,
        "failed dashboard logins from one address, or for one user, that lock it out; 0 = no limit",
    ),
    Setting(
        "dashboard_login_window",
        300.0,
        float,
        "seconds a failed dashboard login counts (and a lockout lasts)",
    ),
    Setting(
        "dashboard_max_body_size",
        1048576,
        int,
        "largest request body the dashboard reads, in bytes (413 beyond)",
    ),
    Setting(
        "dashboard_allowed_hosts",
        None,
        _to_opt_str,
        "Host names the dashboard answers to besides its bind address's, comma-separated",
    ),
    Setting("dashboard_secret_key", None, _to_opt_str, "signs dashboard logins; None = random per process"),
    Setting("dashboard_session_max_age", 43200.0, float, "seconds a dashboard login lasts"),
    Setting(
        "dashboard_refresh_interval", 2.0, float, "seconds between a dashboard page's live updates; 0 = off"
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}
# Celery's old upper-case names and aliases that Django projects still carry.
_ALIASES = {"broker": "broker_url", "backend": "result_backend", "celery_result_backend": "result_backend"}


class Settings:
    """An app's configuration: attribute access to every setting in SETTINGS.

    Unknown names given by a config object are kept (``conf.extra``) and logged once,
    because Celery projects carry settings Conveyor does not use and refusing them
    would break the move over; a typo in a known setting's *value* is an error.
    """

    # Typed names for the type checker; values and defaults come from SETTINGS
    # (tests/unit/test_config.py keeps the two lists equal).
    broker_url: str
    result_backend: str | bool | None
    broker_visibility_timeout: float
    task_default_queue: str
    task_default_priority: int
    task_routes: Any
    task_queues: Any
    task_serializer: str
    result_serializer: str
    accept_content: Any
    result_accept_content: Any
    task_annotations: Any
    task_acks_late: bool
    task_acks_on_failure_or_timeout: bool
    task_reject_on_worker_lost: bool
    task_time_limit: float | None
    task_soft_time_limit: float | None
    task_always_eager: bool
    task_eager_propagates: bool
    task_track_started: bool
    task_ignore_result: bool
    task_default_rate_limit: str | float | None
    task_default_max_retries: int | None
    task_default_retry_delay: float
    task_message_max_bytes: int
    task_max_deliveries: int
    worker_concurrency: int | None
    worker_pool: str
    worker_async_concurrency: int
    worker_prefetch_multiplier: int
    worker_max_tasks_per_child: int | None
    worker_max_memory_per_child: int | None
    worker_autoscale_idle_s: float
    worker_shutdown_timeout: float
    worker_early_ack_ahead: int
    worker_send_task_events: bool
    worker_heartbeat_interval: float
    events_max_count: int
    events_max_age: float | None
    result_expires: float | None
    result_relations: bool
    beat_schedule: Any
    timezone: str
    beat_lease_seconds: float
    beat_max_loop_interval: float
    dashboard_auth: str | None
    dashboard_viewer_auth: str | None
    dashboard_auth_file: str | None
    dashboard_login_max_failures: int
    dashboard_login_window: float
    dashboard_max_body_size: int
    dashboard_allowed_hosts: str | list[str] | None
    dashboard_secret_key: str | None
    dashboard_session_max_age: float
    dashboard_refresh_interval: float

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        for setting in SETTINGS:
            object.__setattr__(self, setting.name, setting.default)
        self.extra: dict[str, Any] = {}
        self._read_environment(os.environ if environ is None else environ)

    def _read_environment(self, environ: Mapping[str, str]) -> None:
        for setting in SETTINGS:
            raw = environ.get(setting.env)
            if raw is None:
                continue
            try:
                setattr(self, setting.name, setting.parse(raw))
            except (ValueError, orjson.JSONDecodeError) as exc:
                raise ConfigurationError(
                    f"environment variable {setting.env}={raw!r} is invalid: {exc}"
                ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "extra" and name not in _BY_NAME:
            raise ConfigurationError(f"unknown setting {name!r}: see conveyor.config.SETTINGS for the names")
        if name == "result_backend" and isinstance(value, str) and value:
            # One spelling, however it was set (environment, config object, update()).
            value = celery_backend_url(value)
        object.__setattr__(self, name, value)

    def update(self, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        merged = dict(values or {}, **kwargs)
        for key, value in merged.items():
            name = _ALIASES.get(key.lower(), key.lower())
            if name in _BY_NAME:
                setattr(self, name, value)
                continue
            if name == "broker_transport_options" and isinstance(value, Mapping):
                if value.get("visibility_timeout") is not None:
                    object.__setattr__(self, "broker_visibility_timeout", float(value["visibility_timeout"]))
            if key not in self.extra:
                log.debug("setting %r is not used by Conveyor; kept in conf.extra", key)
            self.extra[key] = value

    def unhonoured(self) -> dict[str, str]:
        """Celery settings given here that Conveyor does not honour -> what it does instead."""
        from conveyor.celery_settings import ignored_note

        found = {}
        for key, value in self.extra.items():
            note = ignored_note(key.lower(), value)
            if note is not None:
                found[key.lower()] = note
        return found

    def as_dict(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def __getitem__(self, name: str) -> Any:
        return getattr(self, _ALIASES.get(name.lower(), name.lower()))


def load_object(path: str) -> Any:
    """Import ``"package.module"`` or ``"package.module:attribute"`` (``.`` also works)."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if attr or "." not in module_name:
            raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from None
        # "pkg.module.attr" form: retry with the last part as the attribute.
        module_name, _, attr = module_name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigurationError(f"cannot import {path!r}: {exc}") from None
    if not attr:
        return module
    try:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None


def settings_from_object(obj: Any, namespace: str | None = None) -> dict[str, Any]:
    """Read settings from a module, class, object or mapping.

    With a namespace ``"CONVEYOR"`` only ``CONVEYOR_*`` names are read, prefix
    removed and lower-cased (``CONVEYOR_BROKER_URL`` -> ``broker_url``), which is how
    Django settings are written.
    """
    if isinstance(obj, str):
        obj = load_object(obj)
    items: Iterable[tuple[str, Any]]
    if isinstance(obj, Mapping):
        items = obj.items()
    else:
        # Django's LazySettings only lists configured names through dir().
        items = ((name, getattr(obj, name)) for name in dir(obj) if not name.startswith("_"))
    found: dict[str, Any] = {}
    prefix = f"{namespace.upper()}_" if namespace else ""
    for key, value in items:
        if prefix:
            if not key.upper().startswith(prefix):
                continue
            key = key[len(prefix) :]
        elif not isinstance(obj, Mapping) and (not key.islower() or callable(value) or _is_module(value)):
            continue  # a module's constants, imports and functions are not settings
        found[key.lower()] = value
    return found


def _is_module(value: Any) -> bool:
    return type(value).__name__ == "module"
