"""Each signal fires once, in the process Celery fires it in, with Celery's arguments.

The project connects a receiver to every signal at import, as users do; each receiver
writes one line: the signal, this process's pid, and the arguments worth checking.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.testing import wait_for

pytestmark = pytest.mark.integration

PROJECT = """
import json, os, time
from conveyor import Conveyor, signals

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("sigproj", broker="sqlite:///" + os.path.join(HERE, "b.sqlite3"))


def note(signal_name, **fields):
    with open(os.path.join(HERE, "signals.log"), "a") as fh:
        fh.write(json.dumps({"signal": signal_name, "pid": os.getpid(), **fields}) + "\\n")


def plain(value):
    return value if isinstance(value, (str, int, float, list, dict, type(None))) else type(value).__name__


def receiver_for(name):
    def receiver(sender=None, signal=None, **kwargs):
        note(name, sender=plain(getattr(sender, "name", sender)), keys=sorted(kwargs),
             **{k: plain(v) for k, v in kwargs.items() if k in ("task_id", "state", "retval", "result",
                                                              "how", "sig", "args", "kwargs", "pid",
                                                              "exitcode", "terminated", "signum",
                                                              "expired", "name", "id", "request",
                                                              "message", "exc")},
             request_id=getattr(kwargs.get("request"), "id", None))
    receiver.__name__ = "on_" + name
    return receiver


# setup_logging is left alone: a receiver there takes logging over (as in Celery).
RECEIVERS = [receiver_for(name) for name in signals.__all__ if name not in ("Signal", "setup_logging")]
for receiver in RECEIVERS:
    getattr(signals, receiver.__name__[3:]).connect(receiver)


@app.task(name="sigproj.add")
def add(x, y):
    return x + y


@app.task(name="sigproj.sleepy")
def sleepy(seconds):
    time.sleep(seconds)


@app.task(name="sigproj.fail")
def fail():
    raise ValueError("boom")
"""


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "sigproj.py").write_text(textwrap.dedent(PROJECT))
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("sigproj", None)
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sigproj", None)


def _lines(root: Path) -> list[dict[str, object]]:
    import json

    path = root / "signals.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _start_worker(root: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    with open(root / "worker.log", "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli.main", "-A", "sigproj", "worker", "-c", "1", "-n", "w@h", *args],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_worker_and_task_signals_fire_once_in_the_right_process(root: Path) -> None:
    import sigproj  # type: ignore[import-not-found]

    log = root / "worker.log"
    worker = _start_worker(root)
    try:
        wait_for(lambda: b"ready." in log.read_bytes(), timeout=20)
        assert sigproj.add.delay(2, 3).get(timeout=20) == 5
        failed = sigproj.fail.delay()
        wait_for(lambda: failed.state == "FAILURE", timeout=20)
        publisher_pid = os.getpid()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        sigproj.app.close()
    lines = _lines(root)
    by = {}
    for line in lines:
        by.setdefault(line["signal"], []).append(line)
    counts = Counter(line["signal"] for line in lines)
    main_pid = worker.pid

    # The sending side, in this process.
    assert counts["before_task_publish"] == counts["after_task_publish"] == 2
    assert {ln["pid"] for ln in by["before_task_publish"]} == {publisher_pid}
    # The worker's main process, once each.
    for name in (
        "worker_init",
        "worker_ready",
        "worker_shutting_down",
        "worker_shutdown",
        "after_setup_logger",
    ):
        assert counts[name] == 1, (name, counts)
        assert by[name][0]["pid"] == main_pid, name
    assert (
        by["worker_shutting_down"][0]["how"] == "Warm" and by["worker_shutting_down"][0]["sig"] == "SIGTERM"
    )
    assert by["worker_shutting_down"][0]["sender"] == "w@h"
    # Where the tasks ran: the prefork child, never the main process.
    for name in ("task_prerun", "task_postrun"):
        assert counts[name] == 2 and main_pid not in {ln["pid"] for ln in by[name]}, name
    assert [ln["state"] for ln in by["task_postrun"]] == ["SUCCESS", "FAILURE"]
    assert counts["task_success"] == 1 and by["task_success"][0]["result"] == 5
    assert counts["task_failure"] == 1 and by["task_failure"][0]["keys"] == [
        "args", "einfo", "exception", "kwargs", "task_id", "traceback",
    ]  # fmt: skip
    assert by["task_prerun"][0]["sender"] == "sigproj.add" and by["task_prerun"][0]["args"] == [2, 3]


def _by_signal(root: Path) -> dict[str, list[dict[str, object]]]:
    by: dict[str, list[dict[str, object]]] = {}
    for line in _lines(root):
        by.setdefault(str(line["signal"]), []).append(line)
    return by


def test_child_and_consumer_signals_fire_once_with_celerys_arguments(root: Path) -> None:
    """worker_process_init/shutdown in the child; received, unknown, rejected, revoked once each."""
    import datetime

    import sigproj

    log = root / "worker.log"
    worker = _start_worker(root)
    app = sigproj.app
    try:
        wait_for(lambda: b"ready." in log.read_bytes(), timeout=20)
        assert sigproj.add.delay(1, 1).get(timeout=20) == 2
        unknown = app.send_task("sigproj.nope", (1,))
        app.send_task("sigproj.add", (1, 2), serializer="pickle")  # the worker accepts json only
        stale = sigproj.add.apply_async(
            (1, 1), expires=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
        )
        assert app.control.revoke("revoked-early", reply=True, timeout=20)  # in force in the child
        sigproj.add.apply_async((1, 1), task_id="revoked-early")
        sleeper = sigproj.sleepy.delay(60)
        wait_for(
            lambda: any(ln["task_id"] == sleeper.id for ln in _by_signal(root).get("task_prerun", [])),
            timeout=20,
        )
        app.control.revoke(sleeper.id, terminate=True)
        wait_for(lambda: sleeper.state == "REVOKED", timeout=20)
        assert sigproj.add.delay(2, 2).get(timeout=20) == 4  # all of the above was settled
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        app.close()
    by = _by_signal(root)
    main_pid = worker.pid
    child = by["task_prerun"][0]["pid"]
    assert child != main_pid

    # Each prefork child: once after fork, before its first task; once as it exits.
    assert [ln["pid"] for ln in by["worker_process_init"]] == [child]
    lines = _lines(root)
    first_task = next(i for i, ln in enumerate(lines) if ln["signal"] == "task_prerun")
    assert lines.index(by["worker_process_init"][0]) < first_task
    assert [(ln["pid"], ln["sender"]) for ln in by["worker_process_shutdown"]] == [(child, None)]
    assert by["worker_process_shutdown"][0]["exitcode"] == 0

    # Received once for each message accepted to run (the two adds, the sleeper, the last add).
    received = by["task_received"]
    assert [ln["request_id"] for ln in received][1:] == [sleeper.id, by["task_prerun"][2]["task_id"]]
    assert len(received) == 3 and {ln["request"] for ln in received} == {"Request"}
    assert {ln["sender"] for ln in received} == {"Consumer"}

    assert len(by["task_unknown"]) == 1
    (unk,) = by["task_unknown"]
    assert (unk["name"], unk["id"], unk["exc"]) == ("sigproj.nope", unknown.id, "NotRegistered")
    assert sorted(unk["keys"]) == ["exc", "id", "message", "name"]

    assert len(by["task_rejected"]) == 1
    assert by["task_rejected"][0]["keys"] == ["exc", "message"]
    assert by["task_rejected"][0]["exc"] in ("SerializationError", "ContentDisallowed")

    revoked = {ln["request_id"]: ln for ln in by["task_revoked"]}
    assert len(by["task_revoked"]) == 3, by["task_revoked"]
    assert revoked[stale.id]["expired"] is True and revoked[stale.id]["terminated"] is False
    assert revoked["revoked-early"]["expired"] is False and revoked["revoked-early"]["terminated"] is False
    assert revoked[sleeper.id]["terminated"] is True and revoked[sleeper.id]["signum"]
    assert revoked[sleeper.id]["sender"] == "sigproj.sleepy"
    assert all(ln["keys"] == ["expired", "request", "signum", "terminated"] for ln in by["task_revoked"])


def test_without_prefork_consumer_signals_fire_in_the_main_process(root: Path) -> None:
    """threads pool: no child processes, so no worker_process_*; the consumer is the main process."""
    import sigproj

    log = root / "worker.log"
    worker = _start_worker(root, "--pool", "threads")
    try:
        wait_for(lambda: b"ready." in log.read_bytes(), timeout=20)
        assert sigproj.add.delay(1, 1).get(timeout=20) == 2
        unknown = sigproj.app.send_task("sigproj.nope")
        wait_for(lambda: "task_unknown" in _by_signal(root), timeout=20)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        sigproj.app.close()
    by = _by_signal(root)
    assert "worker_process_init" not in by and "worker_process_shutdown" not in by
    assert [ln["pid"] for ln in by["task_received"]] == [worker.pid]
    assert [(ln["pid"], ln["id"]) for ln in by["task_unknown"]] == [(worker.pid, unknown.id)]
