"""Notifications: alerts posted to an external API (INTEL_WEBHOOK_URL) that allows 5 calls a second.

`rate_limit` holds across every worker on the broker, so adding workers never
exceeds the API's limit; an alert that waits for its turn stays in the queue.
"""

from conveyor import shared_task
from intel.config import setting
from intel.http import post_json


@shared_task(
    rate_limit="5/s",
    autoretry_for=(OSError,),  # down, or 429/5xx (urllib's HTTPError is an OSError)
    retry_backoff=True,
    retry_kwargs={"max_retries": 8},
    acks_late=True,
)
def notify_analysts(feed: str, value: str, kind: str, score: int) -> int:
    alert = {"text": f"[{feed}] malicious {kind} {value} (score {score})", "value": value, "feed": feed}
    return post_json(setting("WEBHOOK_URL"), alert)
