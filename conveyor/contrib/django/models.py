"""Two models without tables: they put Conveyor's pages in the admin's index and give
Django's permissions (view/add/change/delete) something to name.

The data is not in Django's database: periodic schedules live in the broker's store
(``app.periodic``, the same the scheduler, ``conveyor periodic`` and the dashboard
read and write) and task results in the result store. A copy in Django's tables
would be a second truth that drifts (the django-celery-beat model), so the admin
views read and write the stores themselves (``admin.py``).
"""

from __future__ import annotations

from django.db import models  # type: ignore[import-not-found,import-untyped,unused-ignore]


class PeriodicTask(models.Model):  # type: ignore[misc,unused-ignore]
    class Meta:
        managed = False
        verbose_name = "periodic task"
        default_permissions = ("view", "add", "change", "delete")


class TaskResult(models.Model):  # type: ignore[misc,unused-ignore]
    class Meta:
        managed = False
        verbose_name = "task result"
        default_permissions = ("view", "change")  # change: retry
