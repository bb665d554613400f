from __future__ import annotations

import random

import pytest

from conveyor.retry import backoff_countdown, parse_rate


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_countdown(n, jitter=False) for n in range(5)] == [1, 2, 4, 8, 16]
    assert backoff_countdown(20, jitter=False, maximum=600) == 600
    assert backoff_countdown(3, factor=60, jitter=False, maximum=10_000) == 480


def test_jitter_stays_within_window() -> None:
    rng = random.Random(1)
    values = [backoff_countdown(4, rng=rng) for _ in range(200)]
    assert all(0 <= v <= 16 for v in values)
    assert len(set(values)) > 100


@pytest.mark.parametrize(
    ("rate", "interval"), [("10/m", 6.0), ("5/s", 0.2), ("100/h", 36.0), (4, 0.25), ("2", 0.5)]
)
def test_parse_rate(rate: str | int, interval: float) -> None:
    assert parse_rate(rate) == pytest.approx(interval)


@pytest.mark.parametrize("rate", ["ten/m", "10/fortnight"])
def test_bad_rate_is_a_clear_error(rate: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate(rate)


def test_no_rate() -> None:
    assert parse_rate(None) is None
    assert parse_rate("0/s") is None
