"""The admin's form for a periodic schedule: every field checked before anything is stored."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django import forms  # type: ignore[import-not-found,import-untyped,unused-ignore]

from conveyor.schedules import crontab, parse_every

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.periodic import PeriodicEntry

KINDS = (("every", "Every (interval)"), ("cron", "Cron expression"))


class PeriodicTaskForm(forms.Form):  # type: ignore[misc,unused-ignore]
    name = forms.CharField(max_length=200)
    task = forms.ChoiceField(help_text="A task registered in this project.")
    kind = forms.ChoiceField(choices=KINDS, initial="every", label="Schedule")
    every = forms.CharField(required=False, help_text="30s, 5m, 1h, 1d, 1h30m")
    cron = forms.CharField(required=False, help_text='"*/15 * * * *", in the app\'s timezone')
    args = forms.CharField(required=False, initial="[]", help_text="A JSON list", label="Arguments")
    kwargs = forms.CharField(
        required=False, initial="{}", help_text="A JSON object", label="Keyword arguments"
    )
    queue = forms.CharField(required=False, help_text="Empty: the task's queue or route")
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args: Any, app: Conveyor, editing: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app.discover_pending()  # the registry is ready here: list every app's tasks
        names = sorted(n for n in app.tasks if not n.startswith("conveyor."))
        current = self.initial.get("task")
        if current and current not in names:  # a schedule for a task this process lacks
            names.append(current)
        self.fields["task"].choices = [(n, n) for n in names]
        self.editing = editing
        if editing is not None:
            self.fields["name"].disabled = True  # the name is the key: rename = delete + add

    def clean_args(self) -> list[Any]:
        value = _json(self.cleaned_data.get("args"), "[]")
        if not isinstance(value, list):
            raise forms.ValidationError('Arguments must be a JSON list, e.g. [1, "a"].')
        return value

    def clean_kwargs(self) -> dict[str, Any]:
        value = _json(self.cleaned_data.get("kwargs"), "{}")
        if not isinstance(value, dict):
            raise forms.ValidationError('Keyword arguments must be a JSON object, e.g. {"x": 1}.')
        return value

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean()
        kind = data.get("kind")
        text = (data.get(kind or "") or "").strip()
        if not text:
            self.add_error(kind or "every", "Required for this kind of schedule.")
            return data
        try:
            data["schedule"] = parse_every(text) if kind == "every" else crontab.from_string(text)
        except ValueError as exc:
            self.add_error(kind, str(exc))
        return data

    def save(self, app: Conveyor) -> PeriodicEntry:
        """Store through ``app.periodic``: the one place schedules are written."""
        data = self.cleaned_data
        options = {"queue": data["queue"]} if data.get("queue") else None
        return app.periodic.add(
            self.editing or data["name"],
            data["task"],
            data["schedule"],
            args=data["args"],
            kwargs=data["kwargs"],
            options=options,
            enabled=data["enabled"],
        )


def initial_from(entry: PeriodicEntry) -> dict[str, Any]:
    spec = entry.schedule.to_dict()
    cron = spec.get("cron") if spec.get("type") == "crontab" else None
    return {
        "name": entry.name,
        "task": entry.task,
        "kind": "cron" if cron else "every",
        "cron": cron or "",
        "every": "" if cron else f"{spec.get('seconds', 0):g}s",
        "args": json.dumps(list(entry.args)),
        "kwargs": json.dumps(entry.kwargs),
        "queue": entry.options.get("queue") or "",
        "enabled": entry.enabled,
    }


def _json(raw: Any, empty: str) -> Any:
    try:
        return json.loads(raw or empty)
    except ValueError as exc:
        raise forms.ValidationError(f"Not valid JSON: {exc}") from None
