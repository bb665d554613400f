from __future__ import annotations

import pytest

from conveyor.exceptions import SerializationError
from conveyor.message import Message, decode


def test_round_trip_keeps_every_field() -> None:
    msg = Message(
        id="abc",
        task="pkg.add",
        args=[1, "x", [2]],
        kwargs={"k": {"n": None}},
        queue="math",
        priority=7,
        eta=123.5,
        expires=200.0,
        retries=2,
        parent_id="p",
        root_id="r",
        created_at=100.25,
        headers={"h": 1},
    )
    assert decode(msg.encode()) == msg


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "invalid JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"v": 99, "id": "a", "task": "t"}', "unknown message format version 99"),
        (b'{"v": 1, "task": "t"}', "no 'id' field"),
        (b'{"v": 1, "id": "a", "task": "t", "args": {"a": 1}}', "args must be a list"),
        (b'{"v": 1, "id": "a", "task": ""}', "non-empty"),
    ],
)
def test_bad_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        decode(body)


def test_priority_is_clamped_to_range() -> None:
    assert decode(b'{"v": 1, "id": "a", "task": "t", "priority": 42}').priority == 9


def test_new_ids_are_random_version_4_uuids() -> None:
    import uuid

    from conveyor.message import new_id

    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every variant digit shows up: the two variable bits are really random.
    assert {text[19] for text in ids} == set("89ab")
