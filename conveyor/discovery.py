"""``autodiscover_tasks()``: import each app's tasks module, the way Celery's loader does.

Django lets INSTALLED_APPS name an app two ways: its package (``"feeds"``) or its
AppConfig class (``"accounts.apps.AccountsConfig"``), whose ``name`` is the
package. Taking the second for a package, as a plain ``import_module(entry +
".tasks")`` does, finds nothing, and every task of that app is then dead-lettered
as unknown; so each entry is resolved to its package first.

Only a package without a tasks module is skipped. Anything else that goes wrong (an
entry that names nothing, a tasks module that raises while importing) raises
``ConfigurationError`` naming the module and the entry, chained to the cause. That
is Celery's behaviour too (its ``find_related_module`` re-raises), and it makes the
worker refuse to start with one line that says what to fix, where logging and going
on would leave those tasks unregistered until their messages were dead-lettered.

In a Django project discovery waits for Django's app registry (``waits_for_django``):
Celery's ``core/celery.py`` runs while Django imports the settings module, before any
model can be imported, so a tasks module that imports its models would raise
AppRegistryNotReady in every ``manage.py`` command. The app keeps the request and runs
it once the registry is ready (``Conveyor.import_includes``, which the worker, beat and
``run`` call after ``django.setup()``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable

from conveyor.exceptions import ConfigurationError

Packages = Iterable[str] | Callable[[], Iterable[str]]


def autodiscover(packages: Packages | None, related_name: str = "tasks") -> list[str]:
    """Import ``<package>.<related_name>`` for each package; returns the modules imported.

    ``packages`` may be a callable returning them (Celery's ``lambda:
    settings.INSTALLED_APPS``); with None, Django's installed apps are used.
    """
    if callable(packages):
        packages = packages()
    entries = _django_apps() if packages is None else [(p, f"package {p!r}") for p in packages]
    imported = []
    for entry, source in entries:
        package = _package_of(entry, source)
        if not related_name:
            imported.append(package)
            continue
        name = f"{package}.{related_name}"
        if not _has_submodule(package, related_name):
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ConfigurationError(f"cannot import {name} ({source}): {_describe(exc)}") from exc
        imported.append(name)
    return imported


def waits_for_django(packages: Packages | None) -> bool:
    """Must this discovery wait for Django's app registry?

    Yes while the registry is not ready and Django is in play: no packages given (they
    come from INSTALLED_APPS), or Django's settings are in use in this process. A
    project without Django never waits, and never pays for importing it.
    """
    django_in_play = "django" in sys.modules or bool(os.environ.get("DJANGO_SETTINGS_MODULE"))
    if not django_in_play:
        return False
    try:
        from django.apps import apps  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from django.conf import settings  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return False
    if apps.ready:
        return False
    return packages is None or settings.configured or bool(os.environ.get("DJANGO_SETTINGS_MODULE"))


def _django_apps() -> list[tuple[str, str]]:
    """(entry, where it came from) for each of Django's installed apps."""
    try:
        from django.apps import apps  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from django.conf import settings  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from django.core.exceptions import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
            ImproperlyConfigured,
        )
    except ImportError:
        raise ConfigurationError(
            "autodiscover_tasks() needs a list of packages when Django is not installed"
        ) from None
    try:
        installed = list(settings.INSTALLED_APPS)
    except ImproperlyConfigured as exc:
        raise ConfigurationError(
            f"autodiscover_tasks() reads Django's INSTALLED_APPS, but Django is not configured: {exc}"
        ) from None
    if apps.apps_ready:
        # django.setup() has run: the registry resolved every entry, AppConfig paths too,
        # in INSTALLED_APPS order, so an error can still name the entry as written.
        configs = list(apps.get_app_configs())
        if len(configs) == len(installed):
            return [(c.name, f"INSTALLED_APPS entry {e!r}") for c, e in zip(configs, installed, strict=True)]
        return [(config.name, f"Django app {config.label!r}") for config in configs]
    return [(entry, f"INSTALLED_APPS entry {entry!r}") for entry in installed]


def _package_of(entry: str, source: str) -> str:
    """The package an entry names: itself, or the ``name`` of the AppConfig class it names."""
    try:
        importlib.import_module(entry)
        return entry
    except ModuleNotFoundError as exc:
        if exc.name != entry:
            raise ConfigurationError(f"cannot import {entry} ({source}): {_describe(exc)}") from exc
    except Exception as exc:
        raise ConfigurationError(f"cannot import {entry} ({source}): {_describe(exc)}") from exc
    module_name, _, attr = entry.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except Exception as exc:
        raise ConfigurationError(f"cannot import {module_name} ({source}): {_describe(exc)}") from exc
    app_config = getattr(module, attr, None)
    name = getattr(app_config, "name", None) if isinstance(app_config, type) else None
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{source} is neither an importable package nor an AppConfig class")
    return name


def _has_submodule(package: str, name: str) -> bool:
    module = importlib.import_module(package)
    if not hasattr(module, "__path__"):
        return False  # a plain module has no submodules
    return importlib.util.find_spec(f"{package}.{name}") is not None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
