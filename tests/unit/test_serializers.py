"""Message and result serializers: the content type is known, and refused ones are never read."""

from __future__ import annotations

import pickle

import pytest

from conveyor import Conveyor
from conveyor.exceptions import SerializationError
from conveyor.message import Message, decode
from conveyor.serializers import accepted, unwrap_result, wrap_result


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))  # what an attacker's body would run


def test_each_serializer_round_trips_a_message() -> None:
    for name in ("json", "msgpack", "pickle"):
        message = Message(id="1", task="t", args=[1, "x"], kwargs={"k": [2]}, serializer=name)
        back = decode(message.encode(), frozenset({name}))
        assert (back.args, back.kwargs, back.serializer) == ([1, "x"], {"k": [2]}, name)


def test_a_refused_content_type_is_never_deserialized(capsys: pytest.CaptureFixture[str]) -> None:
    body = b"\x00cv:pickle\n" + pickle.dumps({"v": 1, "id": "1", "task": "t", "args": [Boom()]})
    with pytest.raises(SerializationError, match="content type 'pickle' refused: not in accept_content"):
        decode(body, accepted(["json", "msgpack"]))
    assert "unpickled!" not in capsys.readouterr().out
    with pytest.raises(SerializationError, match="'msgpack' refused"):
        decode(Message(id="1", task="t", serializer="msgpack").encode())  # default: JSON only


def test_celery_content_type_names_and_unknown_ones() -> None:
    assert accepted(["application/json", "application/x-msgpack"]) == {"json", "msgpack"}
    with pytest.raises(Exception, match="unknown serializer 'yaml'"):
        accepted(["yaml"])


def test_results_wrap_and_unwrap_with_their_accept_list() -> None:
    stored = wrap_result("pickle", {1, 2})
    assert unwrap_result(stored, frozenset({"pickle"})) == {1, 2}
    with pytest.raises(SerializationError, match="result content type 'pickle' refused"):
        unwrap_result(stored, frozenset({"json"}))
    assert wrap_result("json", [1]) == [1]


def test_apply_async_serializer_option_and_unsendable_arguments() -> None:
    app = Conveyor("s", broker="memory://", backend="memory://", set_as_current=False)

    @app.task(name="s.t")
    def t(x: object) -> None: ...

    assert t.build_message((1,), None, serializer="msgpack").serializer == "msgpack"
    with pytest.raises(TypeError, match="cannot be sent as msgpack"):
        t.apply_async((object(),), serializer="msgpack")
    app.close()
