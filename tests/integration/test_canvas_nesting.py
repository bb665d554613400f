"""Nested canvas, callbacks and unique tasks on a real prefork worker (SQLite and Redis).

Every task used here appends a line to runs.log, so each test counts the runs, not
only the results: a step sent twice would show up even when its value is right.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import chain, chord, group
from conveyor.canvas import xmap
from conveyor.exceptions import ChordError
from conveyor.testing import wait_for

from ..redis_server import fresh_url, redis_server_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis"])
def project(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Set before the shared fixture imports the project module, which reads it.
    if request.param == "redis":
        monkeypatch.setenv("TEST_BROKER_URL", fresh_url(redis_server_or_skip()))
    yield request.getfixturevalue("project")


def _stop(p: Any, worker: subprocess.Popen[bytes]) -> None:
    """A warm shutdown: anything sent twice has run (and been logged) or waits in a queue."""
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def _empty(proj: Any, *queues: str) -> None:
    for stats in proj.app.broker.queue_stats(list(queues)):
        assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0), stats


def test_nested_canvas_gives_exact_results_and_runs_each_step_once(project: Any) -> None:
    p, proj = project
    worker = p.start_worker("-c", "2", "-Q", "default,math")
    plus, tsum = proj.plus, proj.tsum
    piped = (plus.s(1, 2) | plus.s(10) | plus.s(100))()
    chain_of_groups = chain(group(plus.s(1, 1), plus.s(2, 2)), tsum.s(), group(plus.s(1), plus.s(2)))()
    group_of_chains = group(plus.s(3, 3) | plus.s(30), plus.s(4, 4) | plus.s(40))()
    chord_in_chain = (plus.s(5, 5) | chord([plus.s(1), plus.s(2)], tsum.s()) | plus.s(1000))()
    chain_as_body = chord([plus.s(i, i) for i in range(3)], tsum.s() | plus.s(7))()
    upgraded = (group(plus.s(i, 10) for i in range(4)) | tsum.s())()
    chunked = plus.chunks(zip(range(10), range(10), strict=True), 3)()
    starred = plus.starmap([(1, 2), (3, 4)])()
    mapped = xmap(proj.echo.s(), [7, 8])()
    routed = (plus.s(1, 1).set(queue="math") | plus.s(2).set(queue="math", priority=7, countdown=1))()

    assert piped.get(timeout=60) == 113
    assert piped.parent.get(timeout=5) == 13 and piped.parent.parent.get(timeout=5) == 3
    assert chain_of_groups.get(timeout=60) == [7, 8]
    assert group_of_chains.get(timeout=60) == [36, 48]
    assert chord_in_chain.get(timeout=60) == 1023
    assert chain_as_body.get(timeout=60) == 13
    assert upgraded.get(timeout=60) == 46
    assert chunked.get(timeout=60) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
    assert starred.get(timeout=60) == [3, 7]
    assert mapped.get(timeout=60) == [7, 8]
    assert routed.get(timeout=60) == 4
    first, second = proj.app.backend.get(routed.parent.id), proj.app.backend.get(routed.id)
    assert (first.queue, second.queue) == ("math", "math")
    assert second.started_at - first.finished_at >= 0.9  # countdown=1 applied to its step

    _stop(p, worker)
    # 3 + 4 + 4 + 4 + 4 + 4 (canvases) + 10 + 2 (chunks, starmap) + 2 (routed)
    assert p.count("plus") == 37
    assert sorted(int(r[1]) for r in p.runs if r[0] == "tsum") == [2, 2, 3, 4]
    assert sorted(r[1] for r in p.runs if r[0] == "echo") == ["7", "8"]
    _empty(proj, "default", "math")


def test_callbacks_and_chord_errors(project: Any) -> None:
    p, proj = project
    worker = p.start_worker("-c", "2")
    ok = proj.plus.apply_async((2, 2), link=proj.echo.s("linked"), link_error=proj.on_err.s("never"))
    bad = proj.boom.apply_async(("k",), link=proj.echo.s("never"), link_error=proj.on_err.s("tagged"))
    sig = proj.boom.s("k2")
    assert sig.on_error(proj.on_err.s("sig")) is sig
    from_sig = sig.delay()
    immutable = proj.plus.s(5, 5)
    immutable.link(proj.echo.si("immutable"))
    immutable.delay()
    # A failed member fails the body with ChordError; a retried one is counted once.
    failing = chord([proj.plus.s(1, 1), proj.boom.s("member")], proj.tsum.s())()
    retried = chord([proj.flaky.s("r", 2), proj.plus.s(2, 2)], proj.echo.s())()
    assert ok.get(timeout=60) == 4
    with pytest.raises(ChordError, match=r"proj\.boom\[.*\] raised ValueError\('boom member'\)"):
        failing.get(timeout=60)
    assert retried.get(timeout=60) == ["ok after 2", 4]
    wait_for(lambda: p.count("on_err") == 2 and p.count("echo") == 3, timeout=60, message=str(p.runs))
    _stop(p, worker)
    echoes = sorted(r for r in p.runs if r[0] == "echo" and r[1] != "['ok")
    assert echoes == [["echo", "4", "linked"], ["echo", "immutable"]], p.runs
    assert sorted(r for r in p.runs if r[0] == "on_err") == sorted(
        [
            ["on_err", bad.id, "proj.boom", "ValueError", "boom_k", "True", "tagged"],
            ["on_err", from_sig.id, "proj.boom", "ValueError", "boom_k2", "True", "sig"],
        ]
    )
    assert p.count("tsum") == 0 and p.count("flaky") == 3 and p.count("echo") == 3
    _empty(proj, "default")


_SENDER = """
import os, sys, time
import proj
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.001)
ids = {proj.plus.apply_async((1, 2), idempotency_key="order-42").id for _ in range(1000)}
print(" ".join(sorted(ids)))
"""


def test_one_idempotency_key_sent_by_two_processes_at_once_is_one_message(project: Any) -> None:
    p, proj = project
    go = p.root / "go"
    senders = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_SENDER), str(go)],
            cwd=p.root,
            env=p.env,
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    go.touch()
    ids = set()
    for sender in senders:
        out, _ = sender.communicate(timeout=180)
        assert sender.returncode == 0
        ids.update(out.decode().split())
    assert len(ids) == 1
    (stats,) = proj.app.broker.queue_stats(["default"])
    assert (stats.ready, stats.delayed) == (1, 0)
    (first,) = ids
    assert proj.plus.apply_async((1, 2), idempotency_key="order-42").id == first

    worker = p.start_worker("-c", "1")
    assert proj.app.AsyncResult(first).get(timeout=60) == 3
    # Finished: the key is free again, so the next send is a new task.
    again = proj.plus.apply_async((1, 2), idempotency_key="order-42")
    assert again.id != first and again.get(timeout=60) == 3
    _stop(p, worker)
    assert p.count("plus") == 2
