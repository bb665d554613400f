"""Django in a Conveyor process: ``django.setup()`` before the project's tasks are imported,
and the worker's database connection handling (``connections.py``).

Celery's Django fixup does the same when its worker starts. A tasks module imports its
models, which Django allows only once the app registry is populated; the worker
imports the project's ``core`` module first (which Django has not set up), so it must
call ``django.setup()`` itself before running the discovery ``autodiscover_tasks()``
recorded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

SETTINGS_ENVVAR = "DJANGO_SETTINGS_MODULE"


def wants_django(app: Conveyor) -> bool:
    """Does this process run a Django project: settings read from Django, or its env var set?"""
    return app.uses_django or bool(os.environ.get(SETTINGS_ENVVAR))


def setup_django(app: Conveyor) -> bool:
    """``django.setup()`` unless it has run; False when the app does not use Django.

    Raises:
        ConfigurationError: Django is not installed though the app reads its settings,
            or ``django.setup()`` failed (bad settings, an app that cannot be imported).
    """
    if not wants_django(app):
        return False
    try:
        import django  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from django.apps import apps  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        if app.uses_django:
            raise ConfigurationError(
                "the app reads Django's settings (config_from_object) but Django is not installed"
            ) from None
        return False  # DJANGO_SETTINGS_MODULE left in the environment of a project without Django
    if not apps.ready:
        try:
            django.setup()
        except Exception as exc:
            module = os.environ.get(SETTINGS_ENVVAR) or "settings.configure()"
            raise ConfigurationError(
                f"django.setup() failed for {module}: {type(exc).__name__}: {exc}"
            ) from exc
    from conveyor.contrib.django.connections import install

    install()
    return True
