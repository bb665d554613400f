from __future__ import annotations

import pytest

from conveyor import Conveyor, chain, chord, group
from conveyor.canvas import Signature, next_in_chain
from conveyor.message import decode


@pytest.fixture
def app() -> Conveyor:
    app = Conveyor("canvas", broker="memory://canvas", task_always_eager=True)

    @app.task(name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="c.total")
    def total(values: list[int]) -> int:
        return sum(values)

    return app


def test_partial_arguments_go_first(app: Conveyor) -> None:
    assert app.tasks["c.add"].s(10).delay(5).get() == 15


def test_eager_group_and_chord(app: Conveyor) -> None:
    add = app.tasks["c.add"]
    assert group(add.s(i, i) for i in range(4))().get() == [0, 2, 4, 6]
    assert chord([add.s(i, i) for i in range(4)], app.tasks["c.total"].s())().get() == 12


def test_chain_step_carries_the_rest(app: Conveyor) -> None:
    add = app.tasks["c.add"]
    first = add.s(1, 2).message(headers={"chain": [add.s(10).to_dict(), add.si(0, 0).to_dict()]})
    (step,) = next_in_chain(app, first, 3)
    assert step.args == [3, 10] and len(step.headers["chain"]) == 1
    (last,) = next_in_chain(app, step, 13)
    assert last.args == [0, 0] and last.headers == {}
    assert next_in_chain(app, last, 0) == []


def test_signature_round_trips_as_data(app: Conveyor) -> None:
    sig = app.tasks["c.add"].s(1).set(queue="math", priority=4)
    again = Signature.from_dict(sig.to_dict(), app=app)
    msg = again.message((2,))
    assert (msg.args, msg.queue, msg.priority) == ([2, 1], "math", 4)
    assert decode(msg.encode()) == msg


def test_chain_needs_a_step() -> None:
    with pytest.raises(ValueError, match="at least one"):
        chain()
