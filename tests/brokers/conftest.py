"""The only broker-specific part of the contract suite: how to make each broker.

Adding a broker means adding one param here and one ``_*_case`` function; every
test in ``test_contract.py`` then runs against it unchanged. Redis cases use one
private redis-server per session (``tests/redis_server.py``), Redis Cluster cases one
private three-master cluster per session (``tests/redis_cluster.py``), and a fresh
key prefix per test; without ``redis-server`` they skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.backends import memory as memory_backend
from conveyor.backends.base import ResultBackend
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.brokers import memory as memory_broker
from conveyor.brokers.base import AdminBroker
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.sqlite import MESSAGES, SQLiteBroker

from ..postgres_server import drop_schema, fresh_schema, postgres_url_or_skip, with_schema
from ..redis_cluster import fresh_cluster_url, redis_cluster_or_skip
from ..redis_server import fresh_url, redis_server_or_skip


@dataclass
class BrokerCase:
    """How a test makes brokers of one kind that share one store."""

    name: str
    url: str
    make: Callable[[], AdminBroker]
    # Can another process (fork or spawn) reach the same queues through ``url``?
    cross_process: bool
    # Queue a body as raw bytes, bypassing Message.encode(), as a foreign or corrupt producer would.
    inject_raw: Callable[[str, bytes], None]


def _memory_case(tmp_path: Path) -> BrokerCase:
    url = f"memory://contract-{uuid.uuid4().hex}"

    def inject(queue: str, body: bytes) -> None:
        MemoryBroker(url).publish_raw(queue, body)

    return BrokerCase("memory", url, lambda: MemoryBroker(url), cross_process=False, inject_raw=inject)


def _sqlite_case(tmp_path: Path) -> BrokerCase:
    path = tmp_path / "broker.sqlite3"
    url = f"sqlite:///{path}"

    def inject(queue: str, body: bytes) -> None:
        creator = SQLiteBroker(url)
        creator.queue_stats()  # creates the schema
        creator.close()
        with sqlite3.connect(path) as conn:
            conn.execute(
                f"INSERT INTO {MESSAGES} (queue, priority, attempts, body) VALUES (?, 0, 0, ?)", (queue, body)
            )
        conn.close()

    return BrokerCase("sqlite", url, lambda: SQLiteBroker(url), cross_process=True, inject_raw=inject)


def _redis_case(tmp_path: Path) -> BrokerCase:
    from conveyor.brokers.redis import RedisBroker

    url = fresh_url(redis_server_or_skip())  # a fresh key prefix: tests share the server, not keys

    def inject(queue: str, body: bytes) -> None:
        creator = RedisBroker(url)
        creator.publish_raw(queue, body)
        creator.close()

    return BrokerCase("redis", url, lambda: RedisBroker(url), cross_process=True, inject_raw=inject)


def _redis_cluster_case(tmp_path: Path) -> BrokerCase:
    from conveyor.brokers.redis import RedisBroker

    url = fresh_cluster_url(redis_cluster_or_skip())  # a fresh prefix, so a fresh slot tag

    def inject(queue: str, body: bytes) -> None:
        creator = RedisBroker(url)
        creator.publish_raw(queue, body)
        creator.close()

    return BrokerCase("redis-cluster", url, lambda: RedisBroker(url), cross_process=True, inject_raw=inject)


def _postgres_case(tmp_path: Path) -> BrokerCase:
    from conveyor.brokers.postgres import MESSAGES as PG_MESSAGES
    from conveyor.brokers.postgres import PostgresBroker

    base = postgres_url_or_skip()
    schema = fresh_schema()  # a fresh schema per test: tests share the server, not tables
    url = with_schema(base, schema)
    _postgres_schemas.append((base, schema))

    def inject(queue: str, body: bytes) -> None:
        import psycopg

        creator = PostgresBroker(url)
        creator.queue_stats()  # creates the schema
        creator.close()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {schema}.{PG_MESSAGES} (queue, priority, attempts, body) VALUES (%s, 0, 0, %s)",
                (queue, body),
            )

    # Tables made now, as a deployed schema has them: a test's timings then measure
    # the operation, not the one-off DDL of its first use.
    creator = PostgresBroker(url)
    creator.result_backend(result_expires_s=0).get("none")
    creator.close()
    return BrokerCase("postgres", url, lambda: PostgresBroker(url), cross_process=True, inject_raw=inject)


_postgres_schemas: list[tuple[str, str]] = []


def _drop_postgres_schemas() -> None:
    while _postgres_schemas:
        drop_schema(*_postgres_schemas.pop())


_BROKER_CASES = {
    "memory": _memory_case,
    "sqlite": _sqlite_case,
    "redis": _redis_case,
    "redis-cluster": _redis_cluster_case,
    "postgres": _postgres_case,
}


@pytest.fixture(params=sorted(_BROKER_CASES))
def broker_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerCase]:
    yield _BROKER_CASES[request.param](tmp_path)
    memory_broker.reset()
    _drop_postgres_schemas()


@pytest.fixture
def broker(broker_case: BrokerCase) -> Iterator[AdminBroker]:
    made = broker_case.make()
    yield made
    made.close()


@dataclass
class BackendCase:
    name: str
    url: str
    make: Callable[[float], ResultBackend]  # result_expires_s -> backend sharing one store


def _memory_backend_case(tmp_path: Path) -> BackendCase:
    url = f"memory://contract-{uuid.uuid4().hex}"
    return BackendCase("memory", url, lambda expires: MemoryBackend(url, result_expires_s=expires))


def _sqlite_backend_case(tmp_path: Path) -> BackendCase:
    url = f"sqlite:///{tmp_path / 'results.sqlite3'}"
    return BackendCase("sqlite", url, lambda expires: SQLiteBackend(url, result_expires_s=expires))


def _redis_backend_case(tmp_path: Path) -> BackendCase:
    from conveyor.backends.redis import RedisBackend

    url = fresh_url(redis_server_or_skip())
    return BackendCase("redis", url, lambda expires: RedisBackend(url, result_expires_s=expires))


def _redis_cluster_backend_case(tmp_path: Path) -> BackendCase:
    from conveyor.backends.redis import RedisBackend

    url = fresh_cluster_url(redis_cluster_or_skip())
    return BackendCase("redis-cluster", url, lambda expires: RedisBackend(url, result_expires_s=expires))


def _postgres_backend_case(tmp_path: Path) -> BackendCase:
    from conveyor.backends.postgres import PostgresBackend

    base = postgres_url_or_skip()
    schema = fresh_schema()
    url = with_schema(base, schema)
    _postgres_schemas.append((base, schema))
    creator = PostgresBackend(url)
    creator.get("none")  # tables made now, as in _postgres_case
    creator.close()
    return BackendCase("postgres", url, lambda expires: PostgresBackend(url, result_expires_s=expires))


_BACKEND_CASES = {
    "memory": _memory_backend_case,
    "sqlite": _sqlite_backend_case,
    "redis": _redis_backend_case,
    "redis-cluster": _redis_cluster_backend_case,
    "postgres": _postgres_backend_case,
}


@pytest.fixture(params=sorted(_BACKEND_CASES))
def backend_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendCase]:
    yield _BACKEND_CASES[request.param](tmp_path)
    memory_backend.reset()
    _drop_postgres_schemas()


@pytest.fixture
def backend(backend_case: BackendCase) -> Iterator[ResultBackend]:
    made = backend_case.make(3600.0)
    yield made
    made.close()
