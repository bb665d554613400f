"""What every command shares: the ``-A``/``--broker`` options and the app they select.

The app is loaded lazily, by the command that needs it, so ``conveyor worker --help``
and usage errors never import the user's project (whose import may be slow, or the
very thing that is broken).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import click

from conveyor.app import Conveyor

F = TypeVar("F", bound=Callable[..., Any])

APP_ENVVAR = "CONVEYOR_APP"
# The app a broker-only command runs with when no -A is given (`conveyor queues`).
BARE_APP_NAME = "conveyor"
# Tried in order when -A names only a module, as Celery tries `app` and `celery`.
APP_ATTRIBUTES = ("app", "conveyor")
# Tried when -A names a package that holds no app itself: Celery finds `core/celery.py`
# for `-A core`, and the README tells Django users they may keep that file name.
APP_SUBMODULES = ("conveyor", "celery")


@dataclass
class CliState:
    """The options of the ``conveyor`` group, and the app once a command asked for it."""

    app_path: str | None = None
    broker_url: str | None = None
    show_traceback: bool = False
    _app: Conveyor | None = None

    def get_app(self, *, need_project: str | None = None) -> Conveyor:
        """The ``-A`` app, or a bare one for commands that only need a broker.

        Args:
            need_project: the command's name when it cannot run without the project's
                tasks (``worker``); then a missing ``-A`` is a usage error.

        Raises:
            click.UsageError: ``need_project`` is set and neither -A nor CONVEYOR_APP is.
            click.ClickException: the project cannot be imported or holds no app.
        """
        if self._app is None:
            if self.app_path:
                app = load_app(self.app_path)
            elif need_project:
                raise click.UsageError(
                    f"'conveyor {need_project}' needs the app that defines your tasks: "
                    f"pass -A module[:attribute] or set {APP_ENVVAR}"
                )
            else:
                # Admin commands read and repair the broker; they need no task code, so a
                # bare app on the configured broker (CONVEYOR_BROKER_URL or the default) is enough.
                app = Conveyor(BARE_APP_NAME)
            if self.broker_url:
                app.conf.broker_url = self.broker_url
                app.close()  # drop a connection the project may have opened to its own broker
            self._app = app
        return self._app

    def close(self) -> None:
        """Release the app's broker and store handles when the command ends."""
        if self._app is not None:
            self._app.close()


pass_state = click.make_pass_decorator(CliState, ensure=True)


def _set_app_path(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(CliState).app_path = value


def _set_broker_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(CliState).broker_url = value


def queues_option(help: str, *, envvar: str | None = None) -> Callable[[F], F]:
    """``-Q/--queues NAMES``: comma-separated or repeated; read with ``split_names``."""
    return click.option(
        "-Q",
        "--queues",
        "queue_names",
        multiple=True,
        metavar="NAMES",
        envvar=envvar,
        show_envvar=envvar is not None,
        help=help,
    )


def shared_options(*, envvars: bool) -> Callable[[F], F]:
    """Add ``-A/--app`` and ``-b/--broker`` to the group and to each command.

    The group reads them from the environment too; a command takes them only when
    typed after it (``conveyor worker -A proj``, Celery 4's order), so an environment
    variable can never override a value given before the command name.

    ``--broker`` overrides the app's ``broker_url``. It has no environment variable of
    its own on purpose: ``CONVEYOR_BROKER_URL`` keeps the meaning docs/configuration.md
    gives it (used when the code sets no broker), so the worker and the web process
    that import the same app always agree on the broker.
    """

    def decorate(fn: F) -> F:
        fn = click.option(
            "-b",
            "--broker",
            "broker_url",
            metavar="URL",
            expose_value=False,
            callback=_set_broker_url,
            help="Broker URL, overriding the app's broker_url (e.g. sqlite:///conveyor.sqlite3).",
        )(fn)
        fn = click.option(
            "-A",
            "--app",
            "app_path",
            metavar="MODULE[:ATTR]",
            envvar=APP_ENVVAR if envvars else None,
            show_envvar=envvars,
            expose_value=False,
            callback=_set_app_path,
            help="The project's Conveyor app: a module (its `app`) or module:attribute.",
        )(fn)
        return fn

    return decorate


def load_app(path: str) -> Conveyor:
    """Import ``module`` or ``module:attribute`` and return the Conveyor app it names.

    With a module only: its ``app``, else its ``conveyor``, else the one Conveyor
    instance it holds; for a package holding none, the same in its ``conveyor`` or
    ``celery`` submodule. The current directory is put on ``sys.path`` first, as
    Celery does, so ``conveyor -A proj`` finds ``./proj.py``.

    Raises:
        click.UsageError: the path is not of the form module[:attribute].
        click.ClickException: the import fails (one line naming the module and the
            error) or no single app is found.
    """
    module_name, sep, attr = path.partition(":")
    if not module_name or (sep and not attr):
        raise click.UsageError(f"-A {path!r}: expected module or module:attribute, e.g. -A proj:app")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module = import_project(module_name)
    if attr:
        return _named_app(module, module_name, attr)
    app = _find_app(module)
    if app is None and hasattr(module, "__path__"):
        for sub in APP_SUBMODULES:
            sub_name = f"{module_name}.{sub}"
            if importlib.util.find_spec(sub_name) is not None:
                app = _find_app(import_project(sub_name))
                if app is not None:
                    break
    if app is None:
        raise click.ClickException(
            f"no Conveyor app in module {module_name!r}: define `app = Conveyor(...)` there "
            "or name it with -A module:attribute"
        )
    return app


def import_project(module_name: str) -> ModuleType:
    """Import one of the project's modules; any failure becomes one line naming it.

    Raises:
        click.ClickException: the module is missing or raised while being imported.
    """
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise click.ClickException(
                f"cannot import {module_name!r}: no module named {missing!r} "
                "(run conveyor from the project's directory or add it to PYTHONPATH)"
            ) from None
        # Whatever the project's own import does wrong (SyntaxError, NameError, a
        # missing dependency, a failing settings read) is one line; --traceback shows the rest.
        if _wants_traceback():
            raise
        raise click.ClickException(f"cannot import {module_name!r}: {_describe(exc)}") from None


def load_tasks(app: Conveyor) -> None:
    """What a process that runs tasks or schedules does after loading the app.

    ``django.setup()`` when the project uses Django, each ``include=`` module (a broken
    one is one line naming it), then the discovery ``autodiscover_tasks()`` held until
    Django was ready.

    Raises:
        click.ClickException: an include module cannot be imported.
        ConfigurationError: Django cannot be set up, or a tasks module fails to import.
    """
    from conveyor.contrib.django.setup import setup_django

    setup_django(app)
    for module_name in app.include:
        import_project(module_name)
    app.discover_pending()


def _named_app(module: ModuleType, module_name: str, attr: str) -> Conveyor:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.ClickException(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Conveyor):
        raise click.ClickException(f"{module_name}:{attr} is a {type(obj).__name__}, not a Conveyor app")
    return obj


def _find_app(module: ModuleType) -> Conveyor | None:
    for name in APP_ATTRIBUTES:
        candidate = getattr(module, name, None)
        if isinstance(candidate, Conveyor):
            return candidate
    found = {id(v): v for v in vars(module).values() if isinstance(v, Conveyor)}
    if len(found) > 1:
        names = sorted(k for k, v in vars(module).items() if isinstance(v, Conveyor))
        raise click.ClickException(
            f"module {module.__name__!r} holds several Conveyor apps ({', '.join(names)}): "
            f"pick one with -A {module.__name__}:NAME"
        )
    return next(iter(found.values()), None)


def _describe(exc: BaseException) -> str:
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def one_line(text: str) -> str:
    """Collapse a message onto one line: the CLI's errors never span several."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _wants_traceback() -> bool:
    ctx = click.get_current_context(silent=True)
    state = ctx.find_object(CliState) if ctx is not None else None
    return bool(state and state.show_traceback)
