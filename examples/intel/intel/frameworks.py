"""The nightly framework sync (beat_schedule in intel/celery.py): techniques and their
tactics from INTEL_FRAMEWORK_URL, a JSON document {"techniques": [{"id", "name", "tactic"}]}
(a flattened MITRE ATT&CK export), upserted so a rerun changes nothing."""

from conveyor import shared_task
from intel import store
from intel.config import setting
from intel.http import get_json


@shared_task(autoretry_for=(OSError,), retry_backoff=True, retry_kwargs={"max_retries": 5})
def sync_framework() -> int:
    techniques = [
        {"id": t["id"], "name": t["name"], "tactic": t["tactic"]}
        for t in get_json(setting("FRAMEWORK_URL"))["techniques"]
    ]
    store.upsert_techniques(techniques)
    return len(techniques)
