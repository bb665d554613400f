"""The application object: settings, the task registry, and sending.

A process usually has one app (``app = Conveyor("core")``); it becomes the current
app that ``@shared_task`` tasks bind to, the way a Django project's Celery app does.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from conveyor import serializers, signals
from conveyor.config import Settings, settings_from_object
from conveyor.exceptions import ConfigurationError, NotRegistered, SerializationError
from conveyor.message import MAX_PRIORITY, MIN_PRIORITY, Message, new_id
from conveyor.serialization import check_arguments
from conveyor.task import Task, current_request, expires_at, to_timestamp
from conveyor.unique import send_unique, unique_lease

if TYPE_CHECKING:
    import datetime as dt

    from conveyor.backends.base import ResultBackend
    from conveyor.brokers.base import AdminBroker
    from conveyor.monitor.control import Control
    from conveyor.periodic import Periodic
    from conveyor.result import AsyncResult

log = logging.getLogger("conveyor")
R = TypeVar("R")
P = ParamSpec("P")

_apps: list[Conveyor] = []
_current: Conveyor | None = None
_shared: list[Callable[[Conveyor], None]] = []
_state_lock = threading.RLock()
_pid = os.getpid()  # kept current by a fork hook: getpid() is a system call, and every delay() asks


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_current_app() -> Conveyor:
    """The app tasks and results bind to when none is named: the last one created or set.

    Raises:
        ConfigurationError: no app exists yet (Conveyor never makes one on its own,
            because a silent default broker would swallow tasks).
    """
    if _current is None:
        raise ConfigurationError(
            "no Conveyor app exists: create one with Conveyor('name') before using shared tasks or results"
        )
    return _current


def release_app(app: Conveyor, *, restore: Conveyor | None) -> None:
    """Forget ``app`` (shared tasks no longer bind to it) and make ``restore`` current again.

    For test fixtures that make an app per test: without it every test's app stays
    registered, and each new ``@shared_task`` is bound to all of them.
    """
    global _current
    with _state_lock:
        if app in _apps:
            _apps.remove(app)
        _current = restore
    app.close()


class _CurrentApp:
    """``conveyor.current_app``: Celery's proxy to whichever app is current.

    The one attribute-forwarding object in the package, kept for Celery code that
    does ``from celery import current_app; current_app.send_task(...)``.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(get_current_app(), name)

    def __repr__(self) -> str:
        return f"<current_app: {_current!r}>"


current_app: Any = _CurrentApp()


class Conveyor:
    """A Conveyor application.

    Args:
        main: the app's name, used for tasks defined in ``__main__``.
        broker: broker URL; default ``sqlite:///conveyor.sqlite3`` or ``CONVEYOR_BROKER_URL``.
        backend: result backend URL; None keeps results in the broker's store, False keeps none.
        include: modules to import when a worker starts (where the tasks are).
        set_as_current: make this the app ``shared_task`` binds to.

    Example::

        app = Conveyor("core", broker="sqlite:///conveyor.sqlite3")

        @app.task(queue="email", max_retries=5)
        def send_email(user_id: int) -> None: ...
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | bool | None = None,
        include: Sequence[str] | None = None,
        set_as_current: bool = True,
        task_cls: type[Task[Any, Any]] | str | None = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self._task_cls: type[Task[Any, Any]] | str = task_cls or Task
        self.conf = Settings()
        if settings:
            self.conf.update(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        self.include = list(include or ())
        self.tasks: dict[str, Task[Any, Any]] = {}
        # autodiscover_tasks() calls waiting for Django's app registry (conveyor/discovery.py).
        self._pending_discovery: list[tuple[Any, str]] = []
        self._discovery_lock = threading.Lock()
        # Set by config_from_object("django.conf:settings"): processes that run tasks set Django up.
        self.uses_django = False
        self._broker: AdminBroker | None = None
        self._backend: ResultBackend | None = None
        self._pid = _pid
        self._lock = threading.RLock()  # backend -> broker re-enters it
        global _current
        with _state_lock:
            _apps.append(self)
            if set_as_current:
                _current = self
            for register in _shared:
                register(self)

    def __repr__(self) -> str:
        return f"<Conveyor {self.main or '__main__'}>"

    def set_current(self) -> None:
        global _current
        _current = self

    # -- configuration -------------------------------------------------------------
    def config_from_object(self, obj: Any, *, namespace: str | None = None, silent: bool = False) -> None:
        """Load settings from a module path, module, class, object or dict.

        ``namespace="CONVEYOR"`` reads only ``CONVEYOR_*`` names (Django settings);
        ``namespace="CELERY"`` reads a project's existing Celery settings unchanged.
        """
        if _is_django_settings(obj):
            self.uses_django = True
        try:
            self.conf.update(settings_from_object(obj, namespace))
        except ConfigurationError:
            if not silent:
                raise
        self._reset_connections()

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> list[str]:
        """Import ``<package>.<related_name>`` for each package; returns the modules imported.

        With no packages and Django configured, INSTALLED_APPS is used, AppConfig paths
        (``"accounts.apps.AccountsConfig"``) included. A package without a tasks module
        is skipped.

        In a Django project whose app registry is not ready yet (``core/celery.py`` runs
        while Django imports the settings), the request is kept and nothing is imported
        (returns ``[]``): the worker, beat and ``run`` set Django up and then import the
        modules (``import_includes``). ``force=True`` imports now, as in Celery.

        Raises:
            ConfigurationError: an entry names no package or AppConfig, or a tasks
                module raised while importing (hiding it would leave its tasks
                unregistered and their messages dead-lettered as unknown).
        """
        from conveyor.discovery import autodiscover, waits_for_django

        if not force and waits_for_django(packages):
            with self._discovery_lock:
                self._pending_discovery.append((packages, related_name))
            return []
        return autodiscover(packages, related_name)

    def import_includes(self) -> list[str]:
        """Import the project's task modules: ``include=`` (and Celery's ``imports``/``include``
        settings), then discovery held for Django; annotate the tasks.

        Processes that run tasks call this at start (the worker, beat, ``run``); in a
        Django project it calls ``django.setup()`` first. Returns the modules discovery
        imported.

        Raises:
            ConfigurationError: Django could not be set up, or a tasks module failed to import.
        """
        from conveyor.contrib.django.setup import setup_django

        setup_django(self)
        extra = self.conf.extra
        for module in [*self.include, *_names(extra.get("imports")), *_names(extra.get("include"))]:
            importlib.import_module(module)
        imported = self.discover_pending()
        if self.conf.task_annotations:
            for task in self.tasks.values():
                self._annotate(task)
        return imported

    def _annotate(self, task: Task[Any, Any]) -> None:
        """``task_annotations``: {"name": {...}}, {"*": {...}} or a list of those; exact names win."""
        annotations = self.conf.task_annotations
        for entry in annotations if isinstance(annotations, (list, tuple)) else [annotations]:
            if not isinstance(entry, Mapping):
                raise ConfigurationError(f"task_annotations entries must be dicts, got {entry!r}")
            for key in ("*", task.name):
                options = entry.get(key)
                if options:
                    task.set_options(options)

    def discover_pending(self) -> list[str]:
        """Run the ``autodiscover_tasks()`` calls that waited for Django; returns the modules imported."""
        from conveyor.discovery import autodiscover

        with self._discovery_lock:
            pending, self._pending_discovery = self._pending_discovery, []
        imported: list[str] = []
        for done, (packages, related_name) in enumerate(pending):
            try:
                imported += autodiscover(packages, related_name)
            except BaseException:
                # Kept for the next call: a failed import is raised again, not forgotten.
                with self._discovery_lock:
                    self._pending_discovery[:0] = pending[done:]
                raise
        return imported

    # -- tasks ---------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, bind: Literal[True], **options: Any
    ) -> Callable[[Callable[..., R]], Task[..., R]]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue="email", ...)``."""

        def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
            opts = dict(options)
            name = opts.pop("name", None) or self.default_task_name(func)
            cls = task_class(opts.pop("base", None) or self.Task, name)
            task: Task[Any, Any] = cls(func, app=self, name=name, **opts)
            self.register(task)
            return task

        return decorate(fn) if fn is not None else decorate

    def default_task_name(self, func: Callable[..., Any]) -> str:
        module = func.__module__
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{func.__qualname__}"

    def register(self, task: Task[Any, Any]) -> None:
        existing = self.tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            log.debug("task %s re-registered", task.name)
        self.tasks[task.name] = task
        if self.conf.task_annotations:
            self._annotate(task)

    def get_task(self, name: str) -> Task[Any, Any]:
        task = self.tasks.get(name)
        if task is None and self._pending_discovery:
            from conveyor.discovery import waits_for_django

            if not waits_for_django(None):  # a name looked up once Django is ready: discover now
                self.discover_pending()
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"task {name!r} is not registered: is its module imported by the worker (-A/include)?"
            ) from None

    # -- routing and sending -----------------------------------------------------------
    def route(self, task_name: str) -> str | None:
        """The queue ``task_routes`` gives a task name: exact names first, then glob patterns in order."""
        routes = self.conf.task_routes
        if not routes:
            return None
        items: Iterable[tuple[str, Any]]
        if isinstance(routes, Mapping):
            exact = routes.get(task_name)
            if exact is not None:
                return _route_queue(exact)
            items = routes.items()
        else:  # a list of (pattern, route) pairs or of mappings, as Celery allows
            items = [
                pair
                for entry in routes
                for pair in (entry.items() if isinstance(entry, Mapping) else [entry])
            ]
        for pattern, route in items:
            if fnmatch.fnmatchcase(task_name, pattern):
                return _route_queue(route)
        return None

    def split_registry(self) -> dict[str, list[str]]:
        """Tasks registered on *other* apps of this process that share this app's broker.

        Two ``Conveyor()`` objects in one project split the registry: a worker for one
        does not know the other's ``@app.task`` functions (``@shared_task`` binds to both).
        Keyed by the other app's name; empty when there is no such app.
        """
        with _state_lock:
            others = [a for a in _apps if a is not self and a.tasks]
        split: dict[str, list[str]] = {}
        url = self.conf.broker_url
        for other in others:
            if other.conf.broker_url != url or url.startswith("memory:"):  # memory: one broker per app
                continue
            missing = sorted(set(other.tasks) - set(self.tasks))
            if missing:
                split[other.main or "__main__"] = missing
        return split

    def known_queues(self) -> list[str]:
        """Every queue this app sends to: the default, tasks' ``queue=``, ``task_routes``, beat entries.

        Sorted, the default first. Tasks registered so far only: import the project first.
        """
        names = {self.conf.task_default_queue, *queue_names(self.conf.task_queues)}
        names.update(task.queue for task in self.tasks.values() if task.queue)
        routes = self.conf.task_routes or {}
        pairs: Iterable[tuple[str, Any]] = (
            routes.items()
            if isinstance(routes, Mapping)
            else [p for e in routes for p in (e.items() if isinstance(e, Mapping) else [e])]
        )
        names.update(q for _, route in pairs if (q := _route_queue(route)))
        for entry in (self.conf.beat_schedule or {}).values():
            options = entry.get("options") or {} if isinstance(entry, Mapping) else {}
            queue = options.get("queue") or self.route(str(entry.get("task", "")))
            names.add(queue or self.conf.task_default_queue)
        default = self.conf.task_default_queue
        return [default, *sorted(names - {default})]

    def build_message(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: dt.datetime | float | None = None,
        expires: float | dt.datetime | dt.timedelta | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        default_queue: str | None = None,
        default_priority: int | None = None,
        default_expires: float | dt.datetime | dt.timedelta | None = None,
        serializer: str | None = None,
        default_serializer: str | None = None,
        retries: int = 0,
        link: Any = None,
        link_error: Any = None,
        idempotency_key: str | None = None,
        unique_for: float | bool | None = None,
        default_unique_for: float | bool | None = None,
        **unknown: Any,
    ) -> Message:
        if unknown:
            raise TypeError(f"{name}: unknown option(s) {', '.join(sorted(unknown))} for apply_async()")
        if args is not None and not isinstance(args, (list, tuple)):
            raise TypeError(f"{name}: args must be a list or tuple, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"{name}: kwargs must be a dict, got {type(kwargs).__name__}")
        now = time.time()
        if eta is not None and countdown is not None:
            raise ValueError(f"{name}: pass countdown or eta, not both")
        eta_at = to_timestamp(eta) if eta is not None else (now + countdown if countdown else None)
        prio = priority if priority is not None else default_priority
        if prio is None:
            prio = self.conf.task_default_priority
        if not isinstance(prio, int) or not MIN_PRIORITY <= prio <= MAX_PRIORITY:
            raise ValueError(f"{name}: priority must be an integer from 0 to 9, got {prio!r}")
        headers = {**(headers or {}), **self._extra_headers(link, link_error)}
        unique = unique_lease(self.conf, name, args, kwargs, idempotency_key, unique_for, default_unique_for)
        if unique is not None:
            headers["unique"] = unique
        parent = current_request()
        return Message(
            id=task_id or new_id(),
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            queue=queue or default_queue or self.route(name) or self.conf.task_default_queue,
            priority=prio,
            eta=eta_at,
            expires=expires_at(expires if expires is not None else default_expires, now),
            retries=retries,
            parent_id=parent.id if parent else None,
            root_id=(parent.root_id or parent.id) if parent else None,
            created_at=now,
            headers=headers,
            serializer=serializers.get(serializer or default_serializer or self.conf.task_serializer).name,
        )

    def _extra_headers(self, link: Any, link_error: Any) -> dict[str, Any]:
        from conveyor.canvas import callback_nodes

        extra: dict[str, Any] = {}
        if link:
            extra["link"] = callback_nodes(link)
        if link_error:
            extra["link_error"] = callback_nodes(link_error)
        return extra

    def _checked(self, message: Message) -> Message:
        """Refuse a message that cannot travel, at the caller, with the reason."""
        try:
            body = message.encode()
        except SerializationError as exc:
            if message.serializer != "json":
                raise TypeError(
                    f"{message.task}: the message cannot be sent as {message.serializer}: {exc}"
                ) from None
            check_arguments(message.args, message.kwargs, message.task)
            raise TypeError(f"{message.task}: headers cannot be sent as JSON") from None
        limit = self.conf.task_message_max_bytes
        if limit and len(body) > limit:
            raise ValueError(
                f"{message.task}: message is {len(body)} bytes, over task_message_max_bytes={limit}; "
                "store large data elsewhere (a file, a database row) and pass its id"
            )
        return message

    def send(self, message: Message) -> str:
        """Publish ``message``, unless it is unique and its key is held: then nothing is
        sent. Returns the id of the task that stands for it (its own or the holder's)."""
        if not message.headers.get("unique"):
            self.publish(message)
            sent = message.id
        else:
            sent = send_unique(self.broker, self._checked(message))
        if message.parent_id is not None and sent == message.id:
            from conveyor.relations import record_sent

            record_sent(self, [message])  # sent from a running task: one of its children
        return sent

    def publish(self, message: Message) -> None:
        observed = bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)
        if observed:
            _publish_signal(signals.before_task_publish, message)  # headers may still change here
        checked = self._checked(message)  # before touching the broker: bad input costs no I/O
        self.broker.publish(checked, eta=checked.eta)
        if observed:
            _publish_signal(signals.after_task_publish, checked)

    def publish_many(self, messages: Sequence[Message]) -> None:
        observed = bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)
        if observed:
            for message in messages:
                _publish_signal(signals.before_task_publish, message)
        checked = [self._checked(m) for m in messages]
        self.broker.publish_many(checked)
        if observed:
            for message in checked:
                _publish_signal(signals.after_task_publish, message)

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name, without importing it (the worker must know it)."""
        task = self.tasks.get(name)
        if task is not None:
            return task.apply_async(args, kwargs, **options)
        message = self.build_message(name, args, kwargs, **options)
        return self.AsyncResult(self.send(message), task_name=name)

    # -- monitoring ----------------------------------------------------------------
    @property
    def control(self) -> Control:
        """Inspect and control running workers (conveyor/monitor/control.py)."""
        from conveyor.monitor.control import Control

        return Control(self)

    # -- results -------------------------------------------------------------------
    def AsyncResult(self, task_id: str, *, task_name: str | None = None) -> AsyncResult[Any]:  # noqa: N802
        from conveyor.result import AsyncResult

        return AsyncResult(task_id, app=self, task_name=task_name)

    # -- periodic tasks ----------------------------------------------------------------
    @property
    def periodic(self) -> Periodic:
        """Periodic tasks: ``beat_schedule`` plus the run-time ones stored in the broker."""
        from conveyor.periodic import Periodic

        return Periodic(self)

    # -- connections ---------------------------------------------------------------
    @property
    def broker(self) -> AdminBroker:
        self._check_fork()
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    from conveyor.brokers.base import broker_from_url

                    self._broker = broker_from_url(self.conf.broker_url)
        return self._broker

    @property
    def backend(self) -> ResultBackend:
        self._check_fork()
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._make_backend()
        return self._backend

    def _make_backend(self) -> ResultBackend:
        from conveyor.backends.base import DisabledBackend, backend_from_url

        url = self.conf.result_backend
        if url is False:
            return DisabledBackend()
        expires = self.conf.result_expires
        if not (isinstance(url, str) and url) or _names_broker_file(url, self.conf.broker_url):
            # The broker's own store: share its connections, so the worker can write
            # a result and its ack in one transaction.
            return self.broker.result_backend(result_expires_s=float(expires or 0))
        return backend_from_url(url, result_expires_s=float(expires or 0))

    def _check_fork(self) -> None:
        # A forked child must not share its parent's connections (sqlite handles,
        # sockets); brokers reopen per process too, this just drops our references.
        if self._pid != _pid:
            self._pid = _pid
            self._lock = threading.RLock()  # a parent thread may have held it at the fork
            self._broker = None
            self._backend = None

    def _reset_connections(self) -> None:
        if self._broker is not None or self._backend is not None:
            self.close()

    def close(self) -> None:
        broker, backend = self._broker, self._backend
        self._broker = self._backend = None
        if broker is not None:
            broker.close()
        if backend is not None:
            backend.close()

    # Last in the class body: from here on, ``Task`` in this class's scope is this property.
    @property
    def Task(self) -> type[Task[Any, Any]]:  # noqa: N802 - Celery's name: class MyTask(app.Task)
        """The class ``@app.task`` instantiates unless ``base=`` names another (``task_cls=``)."""
        return task_class(self._task_cls, "task_cls")


def _is_django_settings(obj: Any) -> bool:
    """``"django.conf:settings"`` (or ``django.conf.settings``), or Django's settings object."""
    if isinstance(obj, str):
        return obj.replace(":", ".") == "django.conf.settings"
    return type(obj).__module__ == "django.conf"


def _names_broker_file(backend_url: str, broker_url: str) -> bool:
    """True when an SQLite result backend URL names the SQLite broker's own file.

    Celery projects write ``result_backend = broker_url``. A second store on that
    file would open its own connections, and the worker's result write, made inside
    the transaction that acks the message, would wait on that very transaction
    until the busy timeout: never stored, every time. However the path is spelled,
    the file gets one store.
    """
    if not (_scheme(backend_url) == _scheme(broker_url) == "sqlite"):
        return False
    from conveyor._sqlite import same_file

    return same_file(backend_url, broker_url)


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower()


def _route_queue(route: Any) -> str | None:
    if isinstance(route, str):
        return route
    if isinstance(route, Mapping):
        queue = route.get("queue")
        return str(queue) if queue else None
    raise ConfigurationError(f"task_routes values must be a queue name or {{'queue': name}}, got {route!r}")


@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def shared_task(
    fn: None = None, /, *, bind: Literal[True], **options: Any
) -> Callable[[Callable[..., R]], Task[..., R]]: ...


@overload
def shared_task(fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a task without naming an app: it binds to the current app at use time.

    Reusable apps (a Django app's ``tasks.py``) use this, so they do not import the
    project's app module.
    """

    def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
        opts = dict(options)
        name = opts.pop("name", None) or f"{func.__module__}.{func.__qualname__}"
        cls = task_class(opts.pop("base", None) or Task, name)
        task: Task[Any, Any] = cls(func, app=None, name=name, **opts)

        def register(app: Conveyor) -> None:
            app.register(task)

        with _state_lock:
            _shared.append(register)
            for app in _apps:
                register(app)
        return task

    return decorate(fn) if fn is not None else decorate


def task_class(cls: type[Task[Any, Any]] | str, where: str) -> type[Task[Any, Any]]:
    """``base=``/``task_cls=``: a Task subclass, or its ``"module:Class"``/``"module.Class"`` path."""
    if isinstance(cls, str):
        module, _, attr = cls.rpartition(":") if ":" in cls else cls.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigurationError(f"{where}: cannot import task class {cls!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"{where}: base/task_cls must be a subclass of conveyor.Task, got {cls!r}")
    return cls


def _names(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def queue_names(task_queues: Any) -> list[str]:
    """``task_queues`` as names: strings, ``{"name": ...}`` dicts, or objects with ``.name`` (kombu's Queue)."""
    if not task_queues:
        return []
    found = []
    for queue in [task_queues] if isinstance(task_queues, str) else task_queues:
        name = (
            queue
            if isinstance(queue, str)
            else (queue.get("name") if isinstance(queue, Mapping) else getattr(queue, "name", None))
        )
        if not name:
            raise ConfigurationError(f"task_queues entries must be names or have a name, got {queue!r}")
        found.append(str(name))
    return found


def _publish_signal(signal: signals.Signal, message: Message) -> None:
    """Celery's publish signals: sender is the task name; body (args, kwargs, embed), headers...

    Keys a ``before_task_publish`` receiver adds to ``headers`` travel in the message.
    """
    headers = {"id": message.id, "task": message.task, **message.headers}
    extra: dict[str, Any] = {}
    if signal is signals.before_task_publish:
        extra = {"properties": {"correlation_id": message.id, "priority": message.priority}}
        extra.update(declare=[], retry_policy=None)
    signal.send(
        sender=message.task,
        body=(message.args, message.kwargs, {}),
        exchange="",
        routing_key=message.queue,
        headers=headers,
        **extra,
    )
    if signal is signals.before_task_publish:
        message.headers.update({k: v for k, v in headers.items() if k not in ("id", "task")})
