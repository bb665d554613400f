"""Conveyor's pages in Django's admin: periodic schedules and task results.

Each page is a view of the admin site (its login, staff check, CSRF and look), and
reads or writes Conveyor's own stores through the same calls the CLI and the
dashboard use: ``app.periodic`` for schedules, the dashboard's data layer for
results (task events plus the result store). Permissions are Django's, on the two
table-less models in ``models.py``: ``conveyor.view_periodictask``,
``add_``/``change_``/``delete_periodictask``, ``view_taskresult`` and
``change_taskresult`` (retry).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages  # type: ignore[import-not-found,import-untyped,unused-ignore]
from django.core.exceptions import PermissionDenied  # type: ignore[import-not-found,import-untyped,unused-ignore]
from django.http import Http404, HttpResponseRedirect  # type: ignore[import-not-found,import-untyped,unused-ignore]
from django.template.response import TemplateResponse  # type: ignore[import-not-found,import-untyped,unused-ignore]
from django.urls import path, reverse  # type: ignore[import-not-found,import-untyped,unused-ignore]

from conveyor.app import Conveyor, get_current_app
from conveyor.contrib.django.forms import PeriodicTaskForm, initial_from
from conveyor.contrib.django.models import PeriodicTask, TaskResult
from conveyor.periodic import PeriodicError
from conveyor.schedules import show_time


def conveyor_app() -> Conveyor:
    """The project's app: the current one (``core/celery.py`` made it, imported with the settings)."""
    return get_current_app()


class _StoreAdmin(admin.ModelAdmin):  # type: ignore[misc,unused-ignore]
    """A ModelAdmin whose pages are its own views, over a store instead of a table."""

    def _context(self, request: Any, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "app_label": self.model._meta.app_label,
            **extra,
        }

    def _require(self, allowed: bool) -> None:
        if not allowed:
            raise PermissionDenied

    def _url(self, name: str, *args: Any) -> str:
        return str(reverse(f"admin:conveyor_{self.model._meta.model_name}_{name}", args=args))

    def _wrap(self, view: Any) -> Any:
        return self.admin_site.admin_view(view)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(_StoreAdmin):
    def get_urls(self) -> list[Any]:
        return [
            path("", self._wrap(self.list_view), name="conveyor_periodictask_changelist"),
            path("add/", self._wrap(self.add_view), name="conveyor_periodictask_add"),
            path("<path:name>/change/", self._wrap(self.edit_view), name="conveyor_periodictask_change"),
            path("<path:name>/delete/", self._wrap(self.remove_view), name="conveyor_periodictask_delete"),
            path("<path:name>/toggle/", self._wrap(self.toggle_view), name="conveyor_periodictask_toggle"),
        ]

    def list_view(self, request: Any) -> Any:
        self._require(self.has_view_permission(request))
        periodic = conveyor_app().periodic
        zone = periodic.zone
        entries = [
            {
                "entry": e,
                "last_run": show_time(e.last_run_at, zone) if e.last_run_at else None,
                "next_run": show_time(e.next_run_at, zone) if e.next_run_at else None,
            }
            for e in periodic.list()
        ]
        return TemplateResponse(
            request,
            "conveyor/admin/periodic_list.html",
            self._context(
                request,
                "Periodic tasks",
                entries=entries,
                can_add=self.has_add_permission(request),
                can_change=self.has_change_permission(request),
                can_delete=self.has_delete_permission(request),
            ),
        )

    def add_view(self, request: Any, form_url: str = "", extra_context: Any = None) -> Any:
        self._require(self.has_add_permission(request))
        app = conveyor_app()
        form = PeriodicTaskForm(request.POST or None, app=app)
        if request.method == "POST" and form.is_valid():
            if app.periodic.get(form.cleaned_data["name"]) is not None:
                form.add_error("name", "A periodic task with this name exists: edit it instead.")
            elif self._saved(request, form, app):
                return HttpResponseRedirect(self._url("changelist"))
        return self._form_page(request, form, "Add periodic task")

    def edit_view(self, request: Any, name: str) -> Any:
        self._require(self.has_change_permission(request))
        app = conveyor_app()
        entry = app.periodic.get(name)
        if entry is None:
            raise Http404(f"no periodic task named {name!r}")
        form = PeriodicTaskForm(request.POST or None, app=app, editing=name, initial=initial_from(entry))
        if entry.source == "config":
            form.add_error(None, "This schedule comes from beat_schedule in the code: change it there.")
        elif request.method == "POST" and form.is_valid() and self._saved(request, form, app):
            return HttpResponseRedirect(self._url("changelist"))
        return self._form_page(request, form, f"Change periodic task {name}", entry=entry)

    def _saved(self, request: Any, form: PeriodicTaskForm, app: Conveyor) -> bool:
        try:
            entry = form.save(app)
        except (PeriodicError, ValueError, TypeError) as exc:
            form.add_error(None, str(exc))
            return False
        messages.success(request, f"Periodic task {entry.name!r} saved.")
        return True

    def _form_page(self, request: Any, form: PeriodicTaskForm, title: str, **extra: Any) -> Any:
        context = self._context(request, title, form=form, **extra)
        return TemplateResponse(request, "conveyor/admin/periodic_form.html", context)

    def remove_view(self, request: Any, name: str) -> Any:
        self._require(self.has_delete_permission(request))
        app = conveyor_app()
        entry = app.periodic.get(name)
        if entry is None:
            raise Http404(f"no periodic task named {name!r}")
        if request.method == "POST":
            try:
                app.periodic.remove(name)
            except PeriodicError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Periodic task {name!r} deleted.")
            return HttpResponseRedirect(self._url("changelist"))
        context = self._context(request, f"Delete periodic task {name}", entry=entry)
        return TemplateResponse(request, "conveyor/admin/periodic_delete.html", context)

    def toggle_view(self, request: Any, name: str) -> Any:
        self._require(self.has_change_permission(request))
        if request.method != "POST":
            return HttpResponseRedirect(self._url("changelist"))
        periodic = conveyor_app().periodic
        try:
            entry = periodic.get(name)
            if entry is None:
                raise Http404(f"no periodic task named {name!r}")
            changed = periodic.disable(name) if entry.enabled else periodic.enable(name)
        except PeriodicError as exc:
            messages.error(request, str(exc))
        else:
            state = "enabled" if changed.enabled else "disabled"
            messages.success(request, f"Periodic task {name!r} {state}.")
        return HttpResponseRedirect(self._url("changelist"))


@admin.register(TaskResult)
class TaskResultAdmin(_StoreAdmin):
    def get_urls(self) -> list[Any]:
        return [
            path("", self._wrap(self.list_view), name="conveyor_taskresult_changelist"),
            path("<str:task_id>/", self._wrap(self.detail_view), name="conveyor_taskresult_change"),
            path("<str:task_id>/retry/", self._wrap(self.retry_view), name="conveyor_taskresult_retry"),
        ]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def _data(self) -> Any:
        from conveyor.dashboard.data import DashboardData

        return DashboardData(conveyor_app(), refresh_interval=0)

    def list_view(self, request: Any) -> Any:
        self._require(self.has_view_permission(request))
        query = request.GET
        try:
            page = max(1, int(query.get("page") or 1))
        except ValueError:
            page = 1
        filters = {k: query.get(k) or None for k in ("state", "name", "queue", "worker")}
        listing = self._data().tasks(**filters, search=query.get("q") or None, page=page)
        context = self._context(request, "Task results", listing=listing, query=query)
        return TemplateResponse(request, "conveyor/admin/results_list.html", context)

    def detail_view(self, request: Any, task_id: str) -> Any:
        self._require(self.has_view_permission(request))
        task = self._data().task(task_id)
        if task is None:
            raise Http404(f"nothing is known about task {task_id}")
        zone = conveyor_app().periodic.zone  # the app's timezone, as the periodic list shows times
        for event in task.get("events") or []:
            if isinstance(event, dict) and isinstance(event.get("ts"), (int, float)):
                event["at"] = show_time(event["ts"], zone)
        context = self._context(
            request, f"Task {task_id}", task=task, can_retry=self.has_change_permission(request)
        )
        return TemplateResponse(request, "conveyor/admin/result_detail.html", context)

    def retry_view(self, request: Any, task_id: str) -> Any:
        self._require(self.has_change_permission(request))
        if request.method != "POST":
            return HttpResponseRedirect(self._url("change", task_id))
        try:
            new_id = self._data().retry_task(task_id)
        except LookupError as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(self._url("change", task_id))
        messages.success(request, f"Sent again as {new_id}.")
        return HttpResponseRedirect(self._url("change", new_id))
