"""The SQLite writer lock is a bounded wait (docs/brokers.md, "The SQLite broker").

A producer must get a clear error, not hang, when another process holds the write
lock and does not let go (stopped with SIGSTOP, hung), and must be able to publish
again once it is gone; an exception while waiting must leave nothing held.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerError
from conveyor.testing import wait_for

HOLDER = """
import sys
from conveyor import Conveyor

app = Conveyor("holder", broker=sys.argv[1])
app.broker.queue_stats()
with app.broker._db.batch():  # a writer caught mid-transaction
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that took the write lock of ``tmp_path/db.sqlite3`` and keeps it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), f"sqlite:///{tmp_path}/db.sqlite3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _app(tmp_path: Path, timeout_s: float) -> Conveyor:
    app = Conveyor("t", broker=f"sqlite:///{tmp_path}/db.sqlite3?timeout={timeout_s:g}")

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def _in_thread(body: object) -> tuple[threading.Thread, list[BaseException | None]]:
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            body()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_stopped_holder_gives_a_clear_error_within_the_bound(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    app = _app(tmp_path, 0.5)
    add = app.tasks["t.add"]
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        # In a thread, so that a lock with no bound fails this test instead of hanging it.
        thread, outcome = _in_thread(lambda: add.delay(1, 2))
        thread.join(30)
        assert outcome, "delay() still blocked on the write lock"
        elapsed = time.monotonic() - started
        error = outcome[0]
        assert isinstance(error, BrokerError), error
        message = str(error)
        assert "\n" not in message
        assert f"process {holder.pid}" in message
        assert str(tmp_path / "db.sqlite3") in message
        assert 0.4 <= elapsed < 15
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        os.kill(holder.pid, signal.SIGCONT)
        holder.wait(10)
    add.delay(3, 4)  # the same process publishes again once the holder is gone
    assert app.broker.queue_stats(["default"])[0].ready == 1  # the failed send left nothing
    app.close()


def test_an_exception_while_waiting_leaves_nothing_held(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    app = _app(tmp_path, 60)
    add = app.tasks["t.add"]

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            add.delay(1, 2)  # Ctrl-C in a producer waiting for the lock
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    holder.kill()
    holder.wait(10)
    # Another thread of this process can write: the in-process lock was released ...
    thread, outcome = _in_thread(lambda: add.delay(3, 4))
    thread.join(30)
    assert outcome == [None], outcome or "delay() in another thread still blocked"
    # ... and so is the file lock: another process can take it.
    lock_file = f"{tmp_path}/db.sqlite3-lock"
    wait_for(lambda: _free(lock_file), timeout=10, message="the file lock is still held")
    assert app.broker.queue_stats(["default"])[0].ready == 1
    app.close()


def _free(path: str) -> bool:
    code = f"import fcntl, os; fcntl.flock(os.open({path!r}, os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_a_lock_released_in_time_is_waited_for(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    app = _app(tmp_path, 30)
    add = app.tasks["t.add"]
    threading.Timer(0.3, holder.kill).start()
    add.delay(1, 2)
    assert app.broker.queue_stats(["default"])[0].ready == 1
    app.close()
