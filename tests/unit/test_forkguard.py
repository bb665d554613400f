"""Forking while other threads use SQLite: the child must be able to use it.

Without the guard this fails about half the time on one core: the child inherits
SQLite's allocator mutex held by a parent thread caught inside a statement and blocks
for ever in its first ``sqlite3.connect`` (seen as a prefork child that never works).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from conveyor import _forkguard
from conveyor._sqlite import Database

FORKS = 60


def test_children_forked_under_the_guard_never_inherit_a_held_sqlite_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(
        f"sqlite:///{tmp_path / 'fork.sqlite3'}",
        schema=["CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)"],
        tables=["t"],
        what="broker",
    )
    monkeypatch.setattr(_forkguard, "guard", _forkguard.guard)  # back to uncounted afterwards
    _forkguard.enable()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            db.write("INSERT INTO t (v) VALUES (?)", ("parent",))
            db.query("SELECT count(*) FROM t")

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    statuses = []
    try:
        for _ in range(FORKS):
            with _forkguard.fork_guard():
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                # A deadlocked child dies of SIGALRM instead of hanging the test (the
                # default action: pytest-timeout's Python handler could never run).
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(10)
                try:
                    for _ in range(5):
                        db.write("INSERT INTO t (v) VALUES (?)", ("child",))
                    os._exit(0)
                except BaseException:
                    os._exit(3)
            statuses.append(os.waitpid(pid, 0)[1])
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert statuses == [0] * FORKS
    assert db.query("SELECT count(*) FROM t WHERE v = 'child'")[0][0] == 5 * FORKS
    db.close()
