"""Observables: each indicator checked against a reputation service (INTEL_REPUTATION_URL)."""

import urllib.parse

from conveyor import shared_task
from intel import store
from intel.config import setting
from intel.http import get_json

MALICIOUS = 70  # a reputation score from 0 (clean) to 100 (known bad)


@shared_task(autoretry_for=(OSError,), retry_backoff=True, retry_kwargs={"max_retries": 5}, time_limit=60)
def enrich_observable(value: str, kind: str) -> dict:
    query = urllib.parse.urlencode({"value": value, "kind": kind})
    score = int(get_json(f"{setting('REPUTATION_URL')}?{query}")["score"])
    store.set_score(value, score)
    return {"value": value, "kind": kind, "score": score}
