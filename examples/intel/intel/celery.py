"""The app `conveyor -A intel` finds (Celery's `proj/celery.py`), with one queue per kind of work.

`feeds` download and parse, `observables` enrich each indicator (many small calls to
reputation services), `notifications` talk to an external API that allows 5 calls a
second, and `default` has the rest. One worker per queue, so a flood of observables
never delays an alert:

    conveyor -A intel run -Q default,feeds,observables,notifications --worker-per-queue

Broker and results: CONVEYOR_BROKER_URL (default: conveyor.sqlite3 in this folder's
working directory; redis://... or postgresql://... for several hosts).
"""

from conveyor import Conveyor, crontab

app = Conveyor(
    "intel",
    include=["intel.feeds", "intel.observables", "intel.notifications", "intel.frameworks"],
)
app.conf.update(
    task_default_queue="default",
    task_routes={
        "intel.feeds.*": "feeds",
        "intel.observables.*": "observables",
        "intel.notifications.*": "notifications",
    },
    timezone="UTC",
    beat_schedule={
        "sync-attack-framework": {
            "task": "intel.frameworks.sync_framework",
            "schedule": crontab(minute=0, hour=2),  # nightly, 02:00 UTC
        },
    },
)
