"""A private redis-server for tests: a free port, a temporary directory, never the
machine's shared Redis on 6379.

``redis_server_or_skip()`` starts one per test session (shared by every test that
asks) or skips with the reason when ``redis-server`` is not installed; with
``CI=true`` in the environment a missing server fails instead, so CI cannot go
green without testing Redis. ``RedisServer`` alone can be stopped and restarted
(fault tests), optionally with an append-only file so data survives the restart.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1.

    Args:
        directory: where it keeps its files (the append-only file, when ``durable``).
        durable: ``--appendonly yes --appendfsync always``: every write survives a
            restart (fault tests); otherwise nothing is written to disk.
        replica_of: the port of a master on 127.0.0.1 to replicate (failover tests).
    """

    def __init__(
        self,
        directory: Path,
        *,
        durable: bool = False,
        port: int | None = None,
        replica_of: int | None = None,
    ) -> None:
        self.directory = directory
        self.durable = durable
        self.port = port or free_port()
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.durable
            else ["--save", "", "--appendonly", "no"]
        )
        # A replica syncs at once (the default waits 5 s for more replicas to join).
        replication = ["--repl-diskless-sync-delay", "0"]
        if self.replica_of is not None:
            replication += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                *persistence,
                *replication,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start on port {self.port}: "
                    + (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop at once (SIGKILL, as a crash); the append-only file keeps every write."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(64)


_session: RedisServer | None = None


def redis_server_or_skip() -> RedisServer:
    """The session's private Redis, started on first use."""
    global _session
    if _session is not None:
        return _session
    if shutil.which(REDIS_SERVER) is None:
        reason = f"{REDIS_SERVER} is not installed (apt-get install redis-server); Redis tests skipped"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="conveyor-redis-"))
    server = RedisServer(directory)
    server.start()

    def cleanup() -> None:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(cleanup)
    _session = server
    return server


def fresh_url(server: RedisServer) -> str:
    """A URL with a prefix no other test uses: tests share the server, not keys."""
    # CONVEYOR_TEST_REDIS_QUERY adds URL options (any redis-py option, e.g.
    # "socket_timeout=1"), to run the suites with them.
    extra = os.environ.get("CONVEYOR_TEST_REDIS_QUERY", "")
    return f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}" + (f"&{extra}" if extra else "")


class Sentinel:
    """A private redis-sentinel watching ``master`` under the name ``mymaster``.

    Args:
        down_after_ms, failover_timeout_ms: ``sentinel down-after-milliseconds`` and
            ``sentinel failover-timeout`` (failover tests); Redis's defaults (30 s,
            3 min) otherwise.
    """

    def __init__(
        self,
        directory: Path,
        master: RedisServer,
        *,
        down_after_ms: int | None = None,
        failover_timeout_ms: int | None = None,
    ) -> None:
        self.port = free_port()
        self.config = directory / f"sentinel-{self.port}.conf"
        self.log = directory / f"sentinel-{self.port}.log"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 1",
        ]
        if down_after_ms is not None:
            lines.append(f"sentinel down-after-milliseconds mymaster {down_after_ms}")
        if failover_timeout_ms is not None:
            lines.append(f"sentinel failover-timeout mymaster {failover_timeout_ms}")
        self.config.write_text("\n".join(lines) + "\n")
        log = open(self.log, "ab")  # noqa: SIM115 - lives as long as the sentinel
        self.process = subprocess.Popen(
            [REDIS_SERVER, str(self.config), "--sentinel", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()  # the caller gets no object to stop
                raise RuntimeError(
                    f"redis-sentinel did not start on port {self.port}: "
                    + self.log.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
