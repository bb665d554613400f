"""What only the Redis broker has: its URL forms, error translation, script cache
loss, reconnects, and the write batch that carries a worker's settle."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import states
from conveyor._redis import parse_url
from conveyor.backends.base import ResultRecord, backend_from_url
from conveyor.brokers.base import broker_from_url
from conveyor.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from conveyor.message import Message, new_id

from ..redis_server import RedisServer, free_port, fresh_url, redis_server_or_skip

pytest.importorskip("redis")

from conveyor.backends.redis import RedisBackend  # noqa: E402
from conveyor.brokers.redis import RedisBroker  # noqa: E402


@pytest.fixture
def url() -> str:
    return fresh_url(redis_server_or_skip())


@pytest.fixture
def broker(url: str) -> Iterator[RedisBroker]:
    made = RedisBroker(url)
    yield made
    made.close()


def msg(queue: str = "default") -> Message:
    return Message(id=new_id(), task="tests.add", args=[1, 2], queue=queue, created_at=time.time())


def test_every_script_is_a_file_that_declares_its_keys() -> None:
    from conveyor.backends import redis as redis_backend
    from conveyor.brokers import redis as redis_broker

    scripts = [*redis_broker.SCRIPTS, *redis_backend.SCRIPTS]
    assert len({s.name for s in scripts}) == len(scripts) == 24
    for script in scripts:
        assert script.keys, f"{script.name}.lua declares no KEYS"
        assert "--#" not in script.source  # snippets are included
        assert "KEYS[" in script.source, f"{script.name}.lua reads no KEYS"
    assert redis_broker._NACK.keys.startswith("the queue's keys (queue_keys.lua)")


def test_url_forms() -> None:
    plain = parse_url("redis://:s3cret@host:6380/2?prefix=app&socket_timeout=3")
    assert plain.prefix == "app" and plain.client_url == "redis://:s3cret@host:6380/2?socket_timeout=3"
    assert parse_url("rediss://host/0").prefix == "conveyor"
    sentinel = parse_url("redis+sentinel://user:pw@s1:26379,s2:26380/mymaster/3?publish_retry=1")
    assert sentinel.sentinels == (("s1", 26379), ("s2", 26380))
    assert (sentinel.service, sentinel.db, sentinel.username, sentinel.password) == (
        "mymaster",
        3,
        "user",
        "pw",
    )
    assert sentinel.publish_retry_s == 1.0
    with pytest.raises(ConfigurationError, match="names no service"):
        parse_url("redis+sentinel://s1:26379")
    with pytest.raises(ConfigurationError, match="publish_retry"):
        parse_url("redis://host/0?publish_retry=soon")
    with pytest.raises(ConfigurationError, match="prefix"):
        parse_url("redis://host/0?prefix=")


def test_factories_make_redis_objects(url: str) -> None:
    broker = broker_from_url(url)
    backend = backend_from_url(url, result_expires_s=60)
    assert isinstance(broker, RedisBroker) and isinstance(backend, RedisBackend)
    shared = broker.result_backend(result_expires_s=60)
    assert isinstance(shared, RedisBackend) and shared.link is broker.link  # one pool, one batch
    broker.close()
    backend.close()


def test_unreachable_redis_is_one_clear_line_without_the_password() -> None:
    broker = RedisBroker(f"redis://:hunter2@127.0.0.1:{free_port()}/0?publish_retry=0.3")
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as caught:
        broker.publish(msg())
    assert time.monotonic() - started < 5
    text = str(caught.value)
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in text
    assert "hunter2" not in text and "\n" not in text
    with pytest.raises(BrokerConnectionError):
        broker.queue_stats()


def test_batch_is_one_transaction_with_results(broker: RedisBroker) -> None:
    backend = broker.result_backend(result_expires_s=60)
    broker.publish(msg())
    [d] = broker.fetch(["default"], limit=1, lease_s=30, timeout_s=0)
    follow_up = msg("next")
    done = ResultRecord(d.message_id, states.SUCCESS, result=3)
    with broker.batch():
        backend.store([done])
        broker.publish_many([follow_up])
        broker.ack([d])
        # Nothing is sent before the batch ends...
        assert RedisBackend(broker.url).get(done.task_id) is None
    # ...then everything is there.
    assert backend.get(done.task_id) == done
    assert [s.in_flight for s in broker.queue_stats(["default"])] == [0]
    assert [x.message_id for x in broker.fetch(["next"], limit=5, lease_s=30, timeout_s=0)] == [follow_up.id]


def test_failed_batch_sends_nothing(broker: RedisBroker) -> None:
    with pytest.raises(RuntimeError), broker.batch():
        broker.publish(msg())
        raise RuntimeError("settle failed midway")
    assert broker.queue_stats(["default"])[0].ready == 0


def test_script_cache_flushed_under_live_connections(broker: RedisBroker) -> None:
    broker.publish(msg())  # scripts loaded, connection open
    [d] = broker.fetch(["default"], limit=1, lease_s=30, timeout_s=0)
    broker.link.send([("SCRIPT", "FLUSH")])
    with broker.batch():  # EVALSHA inside MULTI meets NOSCRIPT: sent again with the source
        broker.publish(msg("after"))
        broker.ack([d])
    assert [(s.ready, s.in_flight) for s in broker.queue_stats(["default", "after"])] == [(0, 0), (1, 0)]
    broker.link.send([("SCRIPT", "FLUSH")])
    assert len(broker.fetch(["after"], limit=5, lease_s=30, timeout_s=0)) == 1  # outside a batch too


def test_a_batched_chord_count_answers_after_a_script_cache_flush(broker: RedisBroker) -> None:
    backend = broker.result_backend(result_expires_s=60)
    with broker.batch():  # loads the counting script on this connection
        assert not backend.count_chord_member("c1", "a", size=2).ready
    broker.link.send([("SCRIPT", "FLUSH")])
    with broker.batch():  # refused inside MULTI, sent again with its source: its answer too
        broker.publish(msg("after"))
        last = backend.count_chord_member("c1", "b", size=2)
    assert last.get() is True
    assert broker.queue_stats(["after"])[0].ready == 1


def test_reconnects_after_a_restart(tmp_path: Path) -> None:
    redis_server_or_skip()
    server = RedisServer(tmp_path, durable=True)
    server.start()
    try:
        broker = RedisBroker(server.url + "?publish_retry=5")
        backend = broker.result_backend(result_expires_s=60)
        broker.publish(msg())
        server.stop()
        with pytest.raises(BrokerConnectionError):
            broker.queue_stats()
        server.start()
        # Pooled connections died with the server: the next calls reconnect by themselves.
        [d] = broker.fetch(["default"], limit=1, lease_s=30, timeout_s=0)
        with broker.batch():
            backend.store([ResultRecord(d.message_id, states.SUCCESS, result=1)])
            broker.ack([d])
        assert backend.get(d.message_id) is not None
        assert broker.queue_stats(["default"])[0].in_flight == 0
        broker.close()
    finally:
        server.stop()


def test_a_hung_server_is_noticed_within_the_socket_timeout(tmp_path: Path) -> None:
    """Timeouts are the kernel's on plain TCP (SO_RCVTIMEO): a server that stops
    answering still fails the call, as a lost connection, and the next call after it
    recovers reconnects."""
    import os
    import signal

    redis_server_or_skip()
    server = RedisServer(tmp_path)
    server.start()
    assert server.process is not None
    try:
        broker = RedisBroker(server.url + "?socket_timeout=0.5&publish_retry=0")
        broker.publish(msg())
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerConnectionError, match="cannot reach Redis"):
                broker.queue_stats()
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert broker.queue_stats(["default"])[0].ready == 1
        broker.close()
    finally:
        server.stop()


def test_keys_stay_under_the_prefix(url: str, broker: RedisBroker) -> None:
    broker.publish(msg())
    [d] = broker.fetch(["default"], limit=1, lease_s=30, timeout_s=0)
    broker.dead_letter(d, reason="x")
    broker.kv_set("workers", "w", b"1")
    broker.log_append("events", [b"e"], maxlen=10)
    broker.result_backend(result_expires_s=60).store([ResultRecord("t", states.SUCCESS)])
    keys = [k.decode() for k in broker.link.send([("KEYS", broker.prefix + "*")])[0]]
    assert keys and all(k.startswith(broker.prefix + ":") for k in keys)
    other = RedisBroker(fresh_url(redis_server_or_skip()))
    assert other.queue_stats() == []  # another prefix sees nothing of it
    other.close()


def test_one_append_is_one_stream_entry_in_the_settle_batch(broker: RedisBroker) -> None:
    stream = broker.link.key("log", "events")
    with broker.batch():
        broker.publish(msg())
        broker.log_append("events", [b"received", b"started", b"succeeded"], maxlen=1000)
    assert broker.link.send([("XLEN", stream)])[0] == 1
    assert [body for _, body in broker.log_read("events")] == [b"received", b"started", b"succeeded"]


def test_the_log_keeps_about_maxlen_events_whatever_the_append_sizes(broker: RedisBroker) -> None:
    sent = 0
    for size in [1, 3, 256, 2, 100, 1, 40] * 10:
        broker.log_append("events", [b"%d" % (sent + i) for i in range(size)], maxlen=500)
        sent += size
    bodies = [body for _, body in broker.log_read("events", limit=100_000)]
    assert bodies == [b"%d" % i for i in range(sent - len(bodies), sent)]  # the newest, no gaps
    assert 500 <= len(bodies) <= 525 + 256  # past the bound by 5% at most, plus the last append


def test_log_entries_written_one_event_each_still_read(broker: RedisBroker) -> None:
    """Entries as older versions wrote them (one XADD per event) read as before."""
    stream = broker.link.key("log", "events")
    old = [broker.link.send([("XADD", stream, "*", "d", body)])[0].decode() for body in (b"x", b"y")]
    broker.log_append("events", [b"z1", b"z2"], maxlen=100)
    entries = broker.log_read("events")
    assert [body for _, body in entries] == [b"x", b"y", b"z1", b"z2"]
    assert [entry_id for entry_id, _ in entries[:2]] == old
    assert broker.log_trim("events", older_than_s=-60) == 4


def test_result_wait_wakes_several_waiters(url: str) -> None:
    import threading

    backend = RedisBackend(url, result_expires_s=60)
    task_id = new_id()
    got: list[ResultRecord | None] = []
    waiters = [
        threading.Thread(
            target=lambda: got.append(RedisBackend(url).wait(task_id, timeout_s=10, interval_s=1))
        )
        for _ in range(3)
    ]
    for thread in waiters:
        thread.start()
    time.sleep(0.3)
    stored_at = time.monotonic()
    backend.store([ResultRecord(task_id, states.SUCCESS, result="ok")])
    for thread in waiters:
        thread.join(10)
    assert time.monotonic() - stored_at < 2
    assert [r.result if r else None for r in got] == ["ok", "ok", "ok"]


def test_threads_that_end_leave_no_connection_behind(broker: RedisBroker) -> None:
    import gc
    import threading

    def clients() -> int:
        return len(broker.link.send([("CLIENT", "LIST")])[0].splitlines())

    broker.publish(msg())
    before = clients()
    for _ in range(200):  # a web server starting a thread per request, each sending a task
        thread = threading.Thread(target=lambda: broker.publish(msg()))
        thread.start()
        thread.join()
    gc.collect()
    assert clients() - before <= 5
    assert broker.queue_stats(["default"])[0].ready == 201


def test_connections_are_named_after_their_host_and_process(broker: RedisBroker) -> None:
    import os
    import socket

    broker.publish(msg())
    listed = broker.link.send([("CLIENT", "LIST")])[0].decode()
    names = {field[5:] for line in listed.splitlines() for field in line.split() if field.startswith("name=")}
    assert f"conveyor:{socket.gethostname()}:{os.getpid()}" in names
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a forked worker child names its own connections
        try:
            broker.publish(msg())
            os.write(write, broker.link.send([("CLIENT", "GETNAME")])[0])
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    assert os.read(read, 200).decode() == f"conveyor:{socket.gethostname()}:{child}"
    os.close(read)


def test_sentinel_url_reaches_the_master(tmp_path: Path) -> None:
    from ..redis_server import Sentinel

    sentinel = Sentinel(tmp_path, redis_server_or_skip())
    try:
        broker = RedisBroker(f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0?prefix=s{new_id()[:8]}")
        sent = msg()
        broker.publish(sent)
        [d] = broker.fetch(["default"], limit=1, lease_s=30, timeout_s=1)
        assert d.message_id == sent.id
        broker.ack([d])
        assert broker.queue_stats(["default"])[0].in_flight == 0
        broker.close()
    finally:
        sentinel.stop()


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition`` every 50 ms; the seconds it took, or fail saying ``what``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what} within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_sentinel_failover_loses_no_message_or_result(tmp_path: Path) -> None:
    """Master, one replica, one sentinel (quorum 1): the master is killed, the
    replica promoted, and the same broker object carries on against the new master:
    it publishes, fetches what was published before and after, and reads a result
    stored before."""
    import redis

    from ..redis_server import Sentinel

    redis_server_or_skip()  # skips without redis-server (fails under CI=true)
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master = RedisServer(tmp_path / "master")
    replica = RedisServer(tmp_path / "replica", replica_of=master.port)
    sentinel: Sentinel | None = None
    broker: RedisBroker | None = None
    clients: list[redis.Redis] = []
    try:
        master.start()
        replica.start()
        on_master, on_replica = (redis.Redis(port=s.port, socket_timeout=5) for s in (master, replica))
        clients += [on_master, on_replica]
        _until(
            lambda: on_replica.info("replication")["master_link_status"] == "up",
            10,
            "the replica did not sync",
        )
        sentinel = Sentinel(tmp_path, master, down_after_ms=1000, failover_timeout_ms=5000)
        asks = redis.Redis(port=sentinel.port, socket_timeout=5)
        clients.append(asks)

        def replica_watched() -> bool:
            # A replica the sentinel has not seen, or sees down, is not promoted.
            return any(
                r["port"] == replica.port and not (r["is_sdown"] or r["is_disconnected"])
                for r in asks.sentinel_slaves("mymaster")
            )

        _until(replica_watched, 10, "the sentinel did not find the replica")

        def served_by(broker: RedisBroker) -> int:
            # The port of the server the broker's own connection reaches.
            [info] = broker.link.send([("INFO", "server")])
            return int(info.split(b"tcp_port:")[1].split(b"\r\n")[0])

        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0?prefix=f{new_id()[:8]}&publish_retry=10"
        broker = RedisBroker(url)
        backend = broker.result_backend(result_expires_s=60)
        before = [msg(), msg()]
        for m in before:
            broker.publish(m)
        stored = ResultRecord(new_id(), states.SUCCESS, result=[1, 2])
        backend.store([stored])
        assert on_master.wait(1, 2000) == 1  # every write above reached the replica
        # ...and they were made on this master, not on some other Redis.
        written = set(on_master.keys(f"{broker.prefix}:*"))
        assert written and set(on_replica.keys(f"{broker.prefix}:*")) == written
        assert served_by(broker) == master.port

        master.stop()  # SIGKILL: the broker's connection now leads to a dead server
        took = _until(
            lambda: asks.sentinel_get_master_addr_by_name("mymaster")[1] == replica.port,
            20,
            "the sentinel did not promote the replica",
        )
        assert on_replica.info("replication")["role"] == "master", took

        after = msg()
        broker.publish(after)  # the same broker object: reconnects through the sentinel
        got = broker.fetch(["default"], limit=10, lease_s=30, timeout_s=1)
        assert [d.message_id for d in got] == [m.id for m in [*before, after]]
        broker.ack(got)
        assert [(s.ready, s.in_flight) for s in broker.queue_stats(["default"])] == [(0, 0)]
        assert broker.fetch(["default"], limit=10, lease_s=30, timeout_s=0) == []
        assert backend.get(stored.task_id) == stored
        assert served_by(broker) == replica.port
    finally:
        if broker is not None:
            broker.close()
        for client in clients:
            client.close()
        if sentinel is not None:
            sentinel.stop()
        replica.stop()
        master.stop()


def test_rediss_url_speaks_tls(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from ..redis_server import REDIS_SERVER

    redis_server_or_skip()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        broker = RedisBroker(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&publish_retry=10")
        sent = msg()
        broker.publish(sent)  # retried until the server listens
        [d] = broker.fetch(["default"], limit=1, lease_s=30, timeout_s=1)
        assert d.message_id == sent.id
        plain = RedisBroker(f"redis://127.0.0.1:{port}/0?publish_retry=0")
        with pytest.raises(BrokerConnectionError):
            plain.queue_stats()  # the server speaks only TLS
        broker.close()
        plain.close()
    finally:
        server.kill()
        server.wait(10)


# -- batches sent without waiting for their reply (the worker's write before a task) --
def test_a_batch_sent_with_reply_later_is_applied_and_its_replies_never_read_as_anothers(
    broker: RedisBroker,
) -> None:
    broker.publish(msg())
    [d] = broker.fetch(["default"], limit=1, lease_s=30, timeout_s=0)
    link = broker.link
    k = link.key("k")  # under this test's own prefix: tests share the server
    with broker.batch(reply_later=True):
        broker.ack([d])
        link.command("SET", k, "batched")
    assert len(link._local.conn.owed) == 1  # sent, its replies not read yet
    # The next command on this thread reads them first, then its own reply.
    assert link.send([("GET", k), ("ECHO", "mine")]) == [b"batched", b"mine"]
    assert not link._local.conn.owed
    assert [s.in_flight for s in broker.queue_stats(["default"])] == [0]
    with broker.batch(reply_later=True):
        link.command("SET", k, "again")
    broker.read_replies()  # or read now, with nothing else to send
    assert not link._local.conn.owed
    assert link.send([("GET", k)]) == [b"again"]


def test_an_error_in_a_batch_sent_with_reply_later_is_logged_and_the_batch_sent_again(
    broker: RedisBroker, caplog: pytest.LogCaptureFixture
) -> None:
    link = broker.link
    n, before = link.key("n"), link.key("before")
    link.send([("RPUSH", n, "a list, not a number")])
    with broker.batch(reply_later=True):
        link.command("SET", before, "1")
        link.command("INCR", n)  # fails inside EXEC: WRONGTYPE
    with caplog.at_level(logging.ERROR, logger="conveyor.broker"):
        assert link.send([("ECHO", "mine")]) == [b"mine"]  # not the batch's error
    assert "WRONGTYPE" in caplog.text and "sending it again" in caplog.text
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        broker.read_replies()  # sent again: fails again, kept for the next call
    link.send([("DEL", n)])
    broker.read_replies()
    assert link.send([("GET", n), ("GET", before)]) == [b"1", b"1"]
    broker.read_replies()  # nothing left: sent once more only
    assert link.send([("GET", n)]) == [b"1"]


def test_an_interruption_while_replies_are_owed_drops_the_connection(broker: RedisBroker) -> None:
    """A signal's exception raised while the replies of a reply_later batch are being read
    (the task's own command reads them first): the connection goes, so no later command
    reads a reply left on it; the batch is sent again by read_replies()."""
    link = broker.link
    k = link.key("k")
    busy = (  # Redis busy for 1 s (far longer than the alarm, even on a loaded machine), once
        "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end "
        "local function now() local t = redis.call('TIME') return t[1] * 1e6 + t[2] end "
        "local start = now() repeat until now() - start > 1000000 "
        "redis.call('SET', KEYS[1], 1) return 1"
    )
    link.send([("PING",)])
    first = link._local.conn

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with broker.batch(reply_later=True):
            link.command("EVAL", busy, 1, link.key("busy-once"))
            link.command("SET", k, "batched")
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            link.send([("GET", k)])  # blocked reading the owed replies
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not first._live, "the interrupted connection was kept"
    for n in range(20):
        assert link.send([("ECHO", f"mine {n}")]) == [f"mine {n}".encode()]
    broker.read_replies()
    assert link.send([("GET", k)]) == [b"batched"]


def test_a_batch_sent_with_reply_later_is_applied_though_its_process_is_killed_at_once(url: str) -> None:
    code = f"""
import os, signal
from conveyor.brokers.redis import RedisBroker
broker = RedisBroker({url!r})
broker.link.send([("PING",)])
with broker.batch(reply_later=True):
    broker.link.command("SET", "sent-then-killed", "applied")
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == -signal.SIGKILL
    reader = RedisBroker(url)
    try:
        assert reader.link.send([("GET", "sent-then-killed")]) == [b"applied"]
    finally:
        reader.close()
