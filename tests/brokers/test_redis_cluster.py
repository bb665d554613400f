"""The Redis broker on a Redis Cluster (``redis+cluster://``), beyond the contract
suites (which run on the session's cluster too, see conftest.py): the URL, one slot
per deployment, a slot moved to another master (MOVED) and a master failover.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import states
from conveyor._redis import parse_url
from conveyor.backends.base import ResultRecord, backend_from_url
from conveyor.brokers.base import broker_from_url
from conveyor.exceptions import BrokerConnectionError, ConfigurationError
from conveyor.message import Message, new_id

from ..redis_cluster import RedisCluster, fresh_cluster_url, redis_cluster_or_skip
from ..redis_server import free_port

pytest.importorskip("redis")

from conveyor.backends.redis import RedisBackend  # noqa: E402
from conveyor.brokers.redis import RedisBroker  # noqa: E402


def msg(queue: str = "default") -> Message:
    return Message(id=new_id(), task="tests.add", args=[1, 2], queue=queue, created_at=time.time())


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition`` every 50 ms; the seconds it took, or fail saying ``what``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what} within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _port_of(broker: RedisBroker | RedisBackend) -> int:
    """The port of the node the broker's own connection reaches."""
    [info] = broker.link.send([("INFO", "server")])
    return int(info.split(b"tcp_port:")[1].split(b"\r\n")[0])


def test_cluster_url_forms() -> None:
    url = parse_url("redis+cluster://user:pw@n1:7000,n2:7001,[::1]:7002/0?socket_timeout=3&publish_retry=1")
    assert url.cluster_nodes == (("n1", 7000), ("n2", 7001), ("::1", 7002))
    assert url.prefix == "{conveyor}"  # the hash tag: every key of the deployment in one slot
    assert url.client_url == "redis://user:pw@n1:7000/0?socket_timeout=3"
    assert (url.username, url.password, url.publish_retry_s) == ("user", "pw", 1.0)
    assert parse_url("redis+cluster://n1:7000?prefix=app").prefix == "{app}"
    assert parse_url("rediss+cluster://n1:7000").client_url.startswith("rediss://n1:7000/0")
    with pytest.raises(ConfigurationError, match="only database 0"):
        parse_url("redis+cluster://n1:7000/2")
    for bad in ("redis+cluster://n1:x", "redis+cluster://", "redis+cluster://n1:7000,/0"):
        with pytest.raises(ConfigurationError, match="bad cluster node"):
            parse_url(bad)
    with pytest.raises(ConfigurationError, match="bad prefix"):
        parse_url("redis+cluster://n1:7000?prefix={a}")


def test_unreachable_cluster_is_one_clear_line_without_the_password() -> None:
    broker = RedisBroker(f"redis+cluster://:hunter2@127.0.0.1:{free_port()}/0?publish_retry=0.3")
    with pytest.raises(BrokerConnectionError) as caught:
        broker.publish(msg())
    text = str(caught.value)
    assert "cannot reach Redis at redis+cluster://:***@127.0.0.1:" in text
    assert "hunter2" not in text and "\n" not in text
    broker.close()


def test_a_deployment_lives_in_one_slot_on_the_master_serving_it() -> None:
    cluster = redis_cluster_or_skip()
    url = fresh_cluster_url(cluster)
    broker = broker_from_url(url)
    backend = backend_from_url(url, result_expires_s=60)
    assert isinstance(broker, RedisBroker) and isinstance(backend, RedisBackend)
    try:
        for queue in ("default", "high", "low"):
            broker.publish(msg(queue))
        backend.store([ResultRecord(new_id(), states.SUCCESS, result=1)])
        master, _ = cluster.serving(broker.prefix)
        assert _port_of(broker) == _port_of(backend) == master
        slots = {
            int(cluster.cli(master, "CLUSTER", "KEYSLOT", k)) for k in _keys(cluster, master, broker.prefix)
        }
        assert len(slots) == 1  # queues, results, registries: one slot
        assert all(not _keys(cluster, port, broker.prefix) for port in cluster.ports if port != master)
    finally:
        broker.close()
        backend.close()


def _keys(cluster: RedisCluster, port: int, prefix: str) -> list[str]:
    return cluster.cli(port, "KEYS", prefix + "*").decode().split()


def test_slot_moved_to_another_master_is_followed() -> None:
    """The slot is migrated to another master under a live broker: its next command
    gets MOVED, it asks the cluster again and carries on against the new master."""
    cluster = redis_cluster_or_skip()
    broker = RedisBroker(fresh_cluster_url(cluster))
    try:
        before = [msg(), msg()]
        for m in before:
            broker.publish(m)
        source, _ = cluster.serving(broker.prefix)
        assert _port_of(broker) == source
        target = next(port for port in cluster.ports if port != source)
        _move_slot(cluster, broker.prefix, source, target)

        after = msg()
        broker.publish(after)  # MOVED on the old connection: rediscovered, sent again
        got = broker.fetch(["default"], limit=10, lease_s=30, timeout_s=1)
        assert [d.message_id for d in got] == [m.id for m in [*before, after]]
        broker.ack(got)
        assert [(s.ready, s.in_flight) for s in broker.queue_stats(["default"])] == [(0, 0)]
        assert _port_of(broker) == target
    finally:
        broker.close()


def _move_slot(cluster: RedisCluster, tag: str, source: int, target: int) -> None:
    """Migrate ``tag``'s slot with its keys from ``source`` to ``target``, as
    ``redis-cli --cluster reshard`` does for each slot it moves."""
    slot = cluster.cli(source, "CLUSTER", "KEYSLOT", tag).decode().strip()
    ids = {port: cluster.cli(port, "CLUSTER", "MYID").decode().strip() for port in (source, target)}
    cluster.cli(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    cluster.cli(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    keys = cluster.cli(source, "CLUSTER", "GETKEYSINSLOT", slot, "10000").decode().split()
    assert keys
    moved = cluster.cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
    assert moved.strip() == b"OK", moved
    for port in cluster.ports:
        cluster.cli(port, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])


def _master_and_synced_replica(cluster: RedisCluster, prefix: str) -> tuple[int, int]:
    """The ports of the master serving ``prefix``'s slot and of its replica, once in sync."""
    _until(lambda: bool(cluster.serving(prefix)[1]), 10, "the cluster did not learn of the replica")
    master, [replica] = cluster.serving(prefix)
    _until(
        lambda: b"master_link_status:up" in cluster.cli(replica, "INFO", "replication"),
        10,
        "the replica did not sync",
    )
    return master, replica


def test_master_failover_loses_no_message_or_result(tmp_path: Path) -> None:
    """Three masters with a replica each: the master serving the deployment's slot is
    killed, its replica promoted, and the same broker object carries on against the
    new master: it publishes, fetches what was published before and after, and reads
    a result stored before."""
    redis_cluster_or_skip()  # skips without redis-server (fails under CI=true)
    cluster = RedisCluster(tmp_path, replicas=1, node_timeout_ms=1000)
    started = time.monotonic()
    cluster.start()
    print(f"6-node cluster up in {time.monotonic() - started:.1f} s")
    broker: RedisBroker | None = None
    try:
        broker = RedisBroker(f"{cluster.url}?prefix=f{new_id()[:8]}&publish_retry=20")
        backend = broker.result_backend(result_expires_s=60)
        master, replica = _master_and_synced_replica(cluster, broker.prefix)
        before = [msg(), msg()]
        for m in before:
            broker.publish(m)
        stored = ResultRecord(new_id(), states.SUCCESS, result=[1, 2])
        backend.store([stored])
        assert broker.link.send([("WAIT", 1, 2000)]) == [1]  # every write above reached the replica
        assert _port_of(broker) == master

        cluster.kill(master)  # SIGKILL: the broker's connection now leads to a dead node
        killed = time.monotonic()
        after = msg()
        broker.publish(after)  # retried (publish_retry) until the replica is promoted
        pause = time.monotonic() - killed
        assert b"role:master" in cluster.cli(replica, "INFO", "replication")
        got = broker.fetch(["default"], limit=10, lease_s=30, timeout_s=1)
        assert [d.message_id for d in got] == [m.id for m in [*before, after]]
        broker.ack(got)
        assert [(s.ready, s.in_flight) for s in broker.queue_stats(["default"])] == [(0, 0)]
        assert backend.get(stored.task_id) == stored
        assert _port_of(broker) == replica
        print(f"Redis Cluster failover: publish waited {pause:.1f} s for the replica's promotion")
    finally:
        if broker is not None:
            broker.close()
        cluster.stop()


def test_the_async_client_rides_out_a_master_failover(tmp_path: Path) -> None:
    """The async client on a cluster: it publishes to, and reads results from, the
    master serving the deployment's slot; when that master is SIGKILLed, a publish is
    retried until the replica is promoted, and a result stored before is read back."""
    import asyncio

    from conveyor.aio.redis import RedisAsyncBackend, RedisAsyncBroker

    redis_cluster_or_skip()
    cluster = RedisCluster(tmp_path, replicas=1, node_timeout_ms=1000)
    cluster.start()
    broker: RedisBroker | None = None
    try:
        url = f"{cluster.url}?prefix=a{new_id()[:8]}&publish_retry=20"
        broker = RedisBroker(url)
        master, replica = _master_and_synced_replica(cluster, broker.prefix)
        before, after = msg(), msg()
        stored = ResultRecord(new_id(), states.SUCCESS, result={"n": 1})

        async def run() -> None:
            aio_broker = RedisAsyncBroker(url)
            aio_backend = RedisAsyncBackend(url, result_expires_s=60)
            try:
                await aio_broker.publish(before)
                await aio_backend.store([stored])
                assert broker is not None
                assert broker.link.send([("WAIT", 1, 2000)]) == [1]  # both reached the replica
                cluster.kill(master)
                await aio_broker.publish(after)  # retried until the replica is promoted
                assert await aio_backend.get(stored.task_id) == stored
            finally:
                await aio_broker.aclose()
                await aio_backend.aclose()

        asyncio.run(run())
        assert b"role:master" in cluster.cli(replica, "INFO", "replication")
        got = broker.fetch(["default"], limit=10, lease_s=30, timeout_s=1)
        assert [d.message_id for d in got] == [before.id, after.id]
    finally:
        if broker is not None:
            broker.close()
        cluster.stop()


def test_concurrent_first_async_sends_look_the_master_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty coroutines publishing at once through a new async broker: one lookup of
    the slot's master, one client, every message queued."""
    import asyncio

    from conveyor.aio import redis as aio_redis

    url = fresh_cluster_url(redis_cluster_or_skip())
    lookups = []
    real = aio_redis._Redis._master_client

    async def counted(self: aio_redis._Redis) -> object:
        lookups.append(1)
        return await real(self)

    monkeypatch.setattr(aio_redis._Redis, "_master_client", counted)
    sent = [msg() for _ in range(20)]

    async def run() -> None:
        broker = aio_redis.RedisAsyncBroker(url)
        try:
            await asyncio.gather(*(broker.publish(m) for m in sent))
        finally:
            await broker.aclose()

    asyncio.run(run())
    assert len(lookups) == 1
    sync = RedisBroker(url)
    try:
        got = sync.fetch(["default"], limit=50, lease_s=30, timeout_s=1)
        assert sorted(d.message_id for d in got) == sorted(m.id for m in sent)
    finally:
        sync.close()
