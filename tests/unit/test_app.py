from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from conveyor import Conveyor, shared_task
from conveyor.exceptions import NotRegistered


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("proj", broker="memory://unit-app", backend="memory://unit-app")


def test_task_name_defaults_to_module_and_function(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.test_task_name_defaults_to_module_and_function.<locals>.add"
    assert app.tasks[add.name] is add
    assert add(2, 3) == 5


def test_routes_exact_then_glob(app: Conveyor) -> None:
    app.conf.task_routes = {
        "feeds.tasks.fetch": "feeds",
        "feeds.*": {"queue": "feeds_other"},
        "mail.*": "email",
    }
    assert app.route("feeds.tasks.fetch") == "feeds"
    assert app.route("feeds.tasks.parse") == "feeds_other"
    assert app.route("mail.send") == "email"
    assert app.route("other") is None


def test_build_message_applies_options(app: Conveyor) -> None:
    @app.task(name="t.add", queue="math", priority=3, expires=60)
    def add(x: int, y: int) -> int:
        return x + y

    before = time.time()
    msg = add.build_message((1, 2), {"z": 1}, countdown=10, task_id="fixed")
    assert msg.id == "fixed"
    assert (msg.task, msg.args, msg.kwargs, msg.queue, msg.priority) == ("t.add", [1, 2], {"z": 1}, "math", 3)
    assert msg.eta is not None and before + 10 <= msg.eta <= time.time() + 10
    assert msg.expires is not None and before + 60 <= msg.expires <= time.time() + 60
    eta = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert add.build_message((1, 2), eta=eta, queue="other", priority=9).eta == eta.timestamp()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"priority": 10}, "priority must be an integer from 0 to 9"),
        ({"countdown": 1, "eta": 5.0}, "countdown or eta, not both"),
    ],
)
def test_bad_options_are_clear_errors(app: Conveyor, options: dict[str, Any], error: str) -> None:
    @app.task(name="t.noop")
    def noop() -> None:
        return None

    with pytest.raises(ValueError, match=error):
        noop.apply_async((), **options)


def test_unknown_option_is_refused(app: Conveyor) -> None:
    @app.task(name="t.noop2")
    def noop() -> None:
        return None

    with pytest.raises(TypeError, match="unknown option"):
        noop.apply_async((), countdwn=3)


def test_non_json_argument_is_a_type_error_naming_it(app: Conveyor) -> None:
    @app.task(name="t.send")
    def send(user: object, flags: object = None) -> None:
        return None

    with pytest.raises(TypeError, match=r"positional argument 0 of type object cannot be sent as JSON"):
        send.delay(object())
    with pytest.raises(TypeError, match=r"keyword argument 'flags' of type set"):
        send.delay(1, flags={1, 2})


def test_oversized_message_is_refused(app: Conveyor) -> None:
    app.conf.task_message_max_bytes = 1000

    @app.task(name="t.big")
    def big(blob: str) -> None:
        return None

    with pytest.raises(ValueError, match="over task_message_max_bytes=1000"):
        big.delay("x" * 2000)


def test_shared_task_binds_to_current_app() -> None:
    @shared_task(name="shared.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    first = Conveyor("one", broker="memory://one")
    assert "shared.mul" in first.tasks
    assert mul.app is first
    second = Conveyor("two", broker="memory://two")
    assert mul.app is second and "shared.mul" in second.tasks


def test_get_task_unknown_name(app: Conveyor) -> None:
    with pytest.raises(NotRegistered, match="is not registered"):
        app.get_task("nope")


def test_backend_before_broker_does_not_deadlock(tmp_path: object) -> None:
    # The result backend of the default store is made from the broker: reading
    # app.backend first (a web process calling AsyncResult.get()) must not hang.
    app = Conveyor("fresh", broker=f"sqlite:///{tmp_path}/db.sqlite3")
    assert app.backend.get("nope") is None
    app.close()
