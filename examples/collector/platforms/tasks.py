"""A collection round every 15 minutes that polls only the platforms that are due.

Each platform has its own interval (set in the admin). The round sends one
`poll_platform` per due platform, on the `collect` queue, with `expires` at the next
round: a poll still waiting then (workers down, a backlog) is stale and skipped,
recorded as REVOKED, and the next round sends a fresh one instead of piling them up.
"""

import datetime as dt
import json
import urllib.request

from django.utils import timezone

from conveyor import shared_task
from platforms.models import ROUND, Collection, Platform


@shared_task
def collect_due_platforms(now: str | None = None) -> dict[str, str]:
    """One round (beat sends it with no argument; `now`, ISO 8601, replays a round at
    another time). Returns the due platforms' names and their poll task ids."""
    round_at = dt.datetime.fromisoformat(now) if now else timezone.now()
    sent = {}
    for platform in Platform.objects.filter(enabled=True).order_by("name"):
        if platform.is_due(round_at):
            result = poll_platform.apply_async((platform.pk, round_at.isoformat()), expires=round_at + ROUND)
            sent[platform.name] = result.id
    return sent


@shared_task(autoretry_for=(OSError,), retry_backoff=True, retry_kwargs={"max_retries": 3}, time_limit=120)
def poll_platform(platform_id: int, round_at: str) -> int:
    """Fetch one platform's items; returns how many. The round's time, not the clock's,
    becomes `last_polled_at`, so intervals don't drift by each poll's queueing delay."""
    platform = Platform.objects.get(pk=platform_id)
    with urllib.request.urlopen(platform.url, timeout=30) as response:
        items = json.load(response)
    Collection.objects.get_or_create(platform=platform, round_at=round_at, defaults={"items": len(items)})
    Platform.objects.filter(pk=platform.pk).update(last_polled_at=round_at)
    return len(items)
