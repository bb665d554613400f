"""Messages queued in the version 1 envelope before an upgrade still run afterwards, on
every broker: the bytes the old encoder wrote are put in the queue as they are, and the
new worker code (``run_until_empty``: the worker's consumer, runner and settling) runs
them with their arguments, options and request fields, beside version 2 messages."""

from __future__ import annotations

from typing import Any

from conveyor import Conveyor
from conveyor.testing import run_until_empty

from .conftest import BrokerCase

# What the version 1 encoder (conveyor at 2f169ab) wrote for add.delay(2, 3) and for
# report.apply_async(("x",), {"n": 4}, priority=5, headers={"h": 1}) sent from inside a
# task on its second try, queue "default" named explicitly.
V1_ADD = (
    b'{"v":1,"id":"v1-add","task":"add","args":[2,3],"kwargs":{},"queue":"default","priority":0,'
    b'"eta":null,"expires":null,"retries":0,"parent_id":null,"root_id":null,'
    b'"created_at":1795396400.5,"headers":{}}'
)
V1_REPORT = (
    b'{"v":1,"id":"v1-report","task":"report","args":["x"],"kwargs":{"n":4},"queue":"default",'
    b'"priority":5,"eta":null,"expires":null,"retries":1,"parent_id":"p-1","root_id":"r-1",'
    b'"created_at":1795396400.5,"headers":{"h":1}}'
)


def test_version_1_messages_queued_before_an_upgrade_run(broker_case: BrokerCase) -> None:
    app = Conveyor("upgrade", broker=broker_case.url)

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="report", bind=True)
    def report(self: Any, label: str, n: int) -> list[Any]:
        request = self.request
        return [label, n, request.retries, request.parent_id, request.root_id]

    try:
        broker_case.inject_raw("default", V1_ADD)
        broker_case.inject_raw("default", V1_REPORT)
        fresh = add.delay(20, 22)  # written as version 2, queued behind them
        assert run_until_empty(app) == 3
        assert app.AsyncResult("v1-add").get(timeout=5) == 5
        assert app.AsyncResult("v1-report").get(timeout=5) == ["x", 4, 1, "p-1", "r-1"]
        assert fresh.get(timeout=5) == 42
        assert app.broker.queue_stats(["default"])[0].ready == 0
        assert list(app.broker.dead_letters()) == []
    finally:
        app.close()
