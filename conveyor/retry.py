"""Retry timing as pure functions, so the worker and tests agree on the maths."""

from __future__ import annotations

import random


def backoff_countdown(
    retries: int,
    *,
    factor: float = 1.0,
    maximum: float = 600.0,
    jitter: bool = True,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff: factor * 2**retries, capped at ``maximum``.

    With jitter the delay is drawn uniformly from [0, delay] ("full jitter"), which
    spreads a burst of failures (an SMTP server down for everyone) over the window
    instead of retrying them all in the same second.
    """
    delay = float(min(maximum, factor * 2.0 ** max(0, retries)))
    if jitter:
        delay = float((rng or random).uniform(0, delay))
    return delay


def parse_rate(rate: str | float | int | None) -> float | None:
    """``"10/m"`` -> minimum seconds between two runs (6.0); None or 0 -> no limit.

    Accepts Celery's forms: ``"10/s"``, ``"100/m"``, ``"1000/h"``, a bare number (per second).
    """
    if rate is None:
        return None
    if isinstance(rate, (int, float)):
        return None if rate <= 0 else 1.0 / float(rate)
    text = rate.strip()
    count_text, _, unit = text.partition("/")
    try:
        count = float(count_text)
    except ValueError:
        raise ValueError(f"invalid rate limit {rate!r}: use a form like '10/m', '5/s' or '100/h'") from None
    seconds = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}.get(
        unit.strip().lower()
    )
    if seconds is None:
        raise ValueError(f"invalid rate limit unit in {rate!r}: use /s, /m or /h")
    if count <= 0:
        return None
    return seconds / count
