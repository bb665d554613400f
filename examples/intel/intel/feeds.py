"""Feeds: download a list of indicators, keep the new ones, enrich them all in parallel.

The enrichment is a chord: one `enrich_observable` per new indicator on the
`observables` queue, and `summarize_feed` once every one of them has finished, with
all their results, which alerts on the malicious ones.
"""

import re

from conveyor import chord, shared_task
from intel import store
from intel.http import get_text
from intel.notifications import notify_analysts
from intel.observables import MALICIOUS, enrich_observable

KINDS = [
    ("ipv4", re.compile(r"\d{1,3}(\.\d{1,3}){3}")),
    ("sha256", re.compile(r"[0-9a-f]{64}")),
    ("domain", re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+")),
]


def parse(text: str) -> list[tuple[str, str]]:
    """One indicator per line, `#` comments; returns (value, kind), unknown lines skipped."""
    found = []
    for line in text.splitlines():
        value = line.split("#", 1)[0].strip().lower()
        kind = next((kind for kind, pattern in KINDS if pattern.fullmatch(value)), None)
        if kind is not None:
            found.append((value, kind))
    return found


@shared_task(autoretry_for=(OSError,), retry_backoff=True, retry_kwargs={"max_retries": 5}, acks_late=True)
def fetch_feed(feed: str, url: str) -> dict:
    """Fetch one feed; returns how many indicators were new and the summary's task id."""
    new = store.add_indicators(feed, parse(get_text(url)))
    if not new:
        store.record_feed_run(feed, new=0, malicious=0)
        return {"new": 0, "summary": None}
    summary = chord(enrich_observable.s(value, kind) for value, kind in new)(summarize_feed.s(feed))
    return {"new": len(new), "summary": summary.id}


@shared_task
def summarize_feed(enriched: list[dict], feed: str) -> dict:
    """The chord's callback: record the run, alert on each malicious indicator."""
    malicious = [e for e in enriched if e["score"] >= MALICIOUS]
    store.record_feed_run(feed, new=len(enriched), malicious=len(malicious))
    notify_analysts.map([(feed, e["value"], e["kind"], e["score"]) for e in malicious])
    return {"feed": feed, "new": len(enriched), "malicious": len(malicious)}
