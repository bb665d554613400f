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
        (b'"text"', "expected an array or an object"),
        (b"[1, 2]", "unknown message format version 1"),
        (b"[]", "unknown message format version None"),
        (b'[2, "a", "t", []]', "5 or 6 elements"),
        (b'[2, "a", "t", [], 1.5, [1]]', "6th element .* must be an object"),
        (b'[2, "a", "t", {"x": 1}, 1.5]', "args must be a list"),
        (b'[2, "a", "", [], 1.5]', "non-empty"),
        (b'{"v": 99, "id": "a", "task": "t"}', "unknown message format version 99"),
        (b'{"v": 2, "id": "a", "task": "t"}', "unknown message format version 2"),
        (b'{"v": 1, "task": "t"}', "no 'id' field"),
        (b'{"v": 1, "id": "a", "task": "t", "args": {"a": 1}}', "args must be a list"),
        (b'{"v": 1, "id": "a", "task": ""}', "non-empty"),
    ],
)
def test_bad_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        decode(body)


# Each documented field on its own, away from its default: it must survive the trip
# whether it is packed (id, task, args, created_at) or in the object of the others.
FIELDS = {
    "args": [1, "x", [2]],
    "kwargs": {"k": {"n": None}},
    "queue": "math",
    "priority": 7,
    "eta": 123.5,
    "expires": 200.0,
    "retries": 2,
    "parent_id": "p",
    "root_id": "r",
    "created_at": 100.25,
    "headers": {"h": 1},
}


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_each_field_round_trips_alone(name: str, serializer: str) -> None:
    msg = Message(id="abc", task="pkg.add", serializer=serializer, **{name: FIELDS[name]})
    decoded = decode(msg.encode(), frozenset({serializer}))
    assert decoded == msg
    assert getattr(decoded, name) == FIELDS[name]


def test_empty_strings_and_zero_times_are_kept() -> None:
    msg = Message(id="abc", task="t", parent_id="", root_id="", eta=0.0, expires=0.0)
    assert decode(msg.encode()) == msg


def test_defaults_are_left_out_of_the_packed_form() -> None:
    msg = Message(id="5b0b3f8e-8d3c-4c57-9d4e-1e1a3f0b2c11", task="add", args=[1, 2], created_at=1795396400.5)
    body = msg.encode()
    assert body == b'[2,"5b0b3f8e-8d3c-4c57-9d4e-1e1a3f0b2c11","add",[1,2],1795396400.5]'
    with_queue = Message(id="a", task="t", queue="email", created_at=1.0).encode()
    assert with_queue == b'[2,"a","t",[],1.0,{"queue":"email"}]'


# Exactly what the version 1 encoder wrote (conveyor at 2f169ab): messages queued before
# an upgrade are read by the new worker as they were written.
V1_FULL = (
    b'{"v":1,"id":"5b0b3f8e-8d3c-4c57-9d4e-1e1a3f0b2c11","task":"accounts.send","args":[42,"123456"],'
    b'"kwargs":{"lang":"fr"},"queue":"email","priority":5,"eta":1795400000.0,"expires":1795400600.0,'
    b'"retries":1,"parent_id":"p-1","root_id":"r-1","created_at":1795396400.123,"headers":{"h":1}}'
)
V1_DEFAULTS = (
    b'{"v":1,"id":"a1","task":"add","args":[1,2],"kwargs":{},"queue":"default","priority":0,'
    b'"eta":null,"expires":null,"retries":0,"parent_id":null,"root_id":null,'
    b'"created_at":1795396400.5,"headers":{}}'
)


def test_version_1_messages_are_still_read() -> None:
    full = decode(V1_FULL)
    assert full == Message(
        id="5b0b3f8e-8d3c-4c57-9d4e-1e1a3f0b2c11",
        task="accounts.send",
        args=[42, "123456"],
        kwargs={"lang": "fr"},
        queue="email",
        priority=5,
        eta=1795400000.0,
        expires=1795400600.0,
        retries=1,
        parent_id="p-1",
        root_id="r-1",
        created_at=1795396400.123,
        headers={"h": 1},
    )
    # Read back, a version 1 message is the same Message as its version 2 form.
    assert decode(full.encode()) == full
    assert decode(V1_DEFAULTS) == Message(id="a1", task="add", args=[1, 2], created_at=1795396400.5)


def test_packed_form_is_smaller_than_version_1() -> None:
    assert len(decode(V1_DEFAULTS).encode()) < len(V1_DEFAULTS) / 2


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
