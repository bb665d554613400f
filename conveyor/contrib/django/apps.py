"""``conveyor.contrib.django`` in INSTALLED_APPS: Conveyor's pages in Django's admin."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-not-found,import-untyped,unused-ignore]


class ConveyorConfig(AppConfig):  # type: ignore[misc,unused-ignore]
    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "Conveyor"
    default_auto_field = "django.db.models.AutoField"
