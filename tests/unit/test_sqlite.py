"""What only the SQLite broker and result store do: URLs, files, locks, wake sockets.

The behaviour every broker shares is in ``tests/brokers/test_contract.py``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conveyor import _sqlite
from conveyor._sqlite import SCHEMA_VERSION, parse_url, wake_dir
from conveyor.backends.base import ResultRecord, backend_from_url
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.brokers.base import broker_from_url
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from conveyor.message import Message, new_id


def msg(queue: str = "default") -> Message:
    return Message(id=new_id(), task="tests.add", queue=queue)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite3'}"


def test_url_relative_is_resolved_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = parse_url("sqlite:///conveyor.sqlite3")
    assert spec.path == str(tmp_path / "conveyor.sqlite3")
    assert spec.synchronous == "normal"


def test_url_absolute_and_options() -> None:
    spec = parse_url("sqlite:////var/lib/app/q.db?synchronous=FULL")
    assert (spec.path, spec.synchronous) == ("/var/lib/app/q.db", "full")


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("sqlite://", "names no database file"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?journal=wal", "unknown sqlite URL option"),
    ],
)
def test_bad_urls_are_configuration_errors(bad: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        SQLiteBroker(bad)


def test_from_url_factories(url: str) -> None:
    assert isinstance(broker_from_url(url), SQLiteBroker)
    assert isinstance(backend_from_url(url, result_expires_s=10), SQLiteBackend)


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "db.sqlite3"
    broker = SQLiteBroker(f"sqlite:///{missing}")
    with pytest.raises(BrokerConnectionError, match=str(tmp_path / "nope")) as info:
        broker.publish(msg())
    assert info.value.__context__ is None  # raised before sqlite3 could fail with a vaguer error
    with pytest.raises(BrokerConnectionError, match="does not exist"):
        SQLiteBackend(f"sqlite:///{missing}").get("x")


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BrokerConnectionError, match="not an SQLite database"):
        SQLiteBroker(f"sqlite:///{path}").queue_stats()


def test_wal_mode_and_schema_version(url: str) -> None:
    broker = SQLiteBroker(url)
    backend = SQLiteBackend(url)
    broker.publish(msg())
    backend.store([ResultRecord(task_id="t", state="SUCCESS")])
    conn = sqlite3.connect(broker.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"messages", "scheduled", "dead_letters", "rate_limits", "leases", "results"} <= tables
    conn.close()
    broker.close()
    backend.close()


def test_newer_schema_is_refused(url: str) -> None:
    path = parse_url(url).path
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(BrokerError, match="newer than this Conveyor"):
        SQLiteBroker(url).queue_stats()


def test_long_lock_becomes_one_line_broker_error(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite, "BUSY_TIMEOUT_S", 0.05)
    broker = SQLiteBroker(url)
    broker.queue_stats()
    broker.close()  # reconnect with the short busy timeout
    holder = sqlite3.connect(broker.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with pytest.raises(BrokerError, match="stayed locked") as info:
            broker.publish(msg())
        assert "\n" not in str(info.value)
        assert info.value.__suppress_context__  # translated at the boundary: no sqlite3 traceback
        assert time.monotonic() - start < 1.0  # one busy timeout, not one per retry
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    broker.publish(msg())  # fine once the lock is gone


def test_lock_held_briefly_is_waited_out(url: str) -> None:
    broker = SQLiteBroker(url)
    broker.queue_stats()
    holder = sqlite3.connect(broker.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.2, lambda: holder.execute("COMMIT"))
    release.start()
    broker.publish(msg())  # waits on the busy timeout instead of failing
    release.join()
    holder.close()
    assert broker.queue_stats(["default"])[0].ready == 1


def test_wake_socket_lives_beside_the_file_and_goes_on_close(url: str) -> None:
    broker = SQLiteBroker(url)
    directory = wake_dir(broker.path)
    assert directory == broker.path + "-wake" or directory.startswith("/tmp/conveyor-wake-")
    broker.fetch(["default"], limit=1, lease_s=1, timeout_s=0.01)
    assert len(os.listdir(directory)) == 1
    broker.close()
    assert not os.path.exists(directory)  # the last one out removes the emptied directory


def test_deep_paths_get_a_short_wake_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / "db.sqlite3"
    directory = wake_dir(str(deep))
    assert directory.startswith("/tmp/conveyor-wake-")
    assert directory == wake_dir(str(deep))  # every process finds the same one


def test_stale_socket_of_a_dead_consumer_is_removed(url: str) -> None:
    broker = SQLiteBroker(url)
    directory = wake_dir(broker.path)
    os.makedirs(directory, exist_ok=True)
    stale = os.path.join(directory, "12345-dead")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(stale)
    sock.close()  # the file stays, nobody is bound: what SIGKILL leaves behind
    time.sleep(0.06)  # past the racy-mtime window, so the listing is cached
    broker.publish(msg())
    assert not os.path.exists(stale)
    broker.close()


def test_receipts_from_elsewhere_are_refused(url: str) -> None:
    from conveyor.brokers.base import Delivery

    broker = SQLiteBroker(url)
    with pytest.raises(BrokerError, match="not issued by the SQLite broker"):
        broker.ack([Delivery(body=b"", queue="default", receipt="m1:2", attempt=1)])


def test_fork_child_opens_its_own_connection(url: str) -> None:
    broker = SQLiteBroker(url)
    broker.publish(msg())
    parent_conn = broker._db.connection()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not touch the inherited connection
        ok = broker._db.connection() is not parent_conn
        broker.publish(msg())
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    assert broker._db.connection() is parent_conn
    assert broker.queue_stats(["default"])[0].ready == 2


def test_backend_store_cleans_up_expired_rows(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SQLiteBackend(url, result_expires_s=60)
    backend.store([ResultRecord(task_id="old", state="SUCCESS")])
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 120)
    backend._next_cleanup = 0.0  # the once-a-minute throttle has passed
    backend.store([ResultRecord(task_id="new", state="SUCCESS")])
    assert backend.get("old") is None
    assert backend.get("new") is not None


def test_a_missing_directory_is_an_error_and_is_never_created(tmp_path: Path) -> None:
    from conveyor.exceptions import BrokerConnectionError
    from conveyor.message import Message

    missing = tmp_path / "typo" / "db.sqlite3"
    broker = SQLiteBroker(f"sqlite:///{missing}")
    with pytest.raises(BrokerConnectionError, match="does not exist"):
        broker.publish(Message(id="1", task="t"))
    with pytest.raises(BrokerConnectionError, match="does not exist"):
        broker.fetch(["default"], limit=1, lease_s=1, timeout_s=0.05)
    assert not missing.parent.exists()
