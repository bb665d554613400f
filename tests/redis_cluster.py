"""A private three-master Redis Cluster for tests, beside ``redis_server.py``.

``redis_cluster_or_skip()`` starts one per test session (so one per xdist worker,
each its own process) on free ports in a temporary directory, joins the nodes with
``redis-cli --cluster create`` and waits for ``cluster_state:ok``. Without
``redis-server`` or ``redis-cli`` it skips with the reason, or fails when
``CI=true``, as the single server does.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from .redis_server import REDIS_SERVER, _ping

REDIS_CLI = os.environ.get("REDIS_CLI", "redis-cli")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (10,000 higher) are free too: ports from
    10,000 to 19,999, so no port is another's bus port and none is in the kernel's
    ephemeral range, where other tests' ports come from."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(10_000, 19_999)
        if port not in ports and _free(port) and _free(port + 10_000):
            ports.append(port)
    return ports


class PortTaken(RuntimeError):
    """Another process bound a chosen port (or its bus port) before the node did."""


def _covers(slots: str, slot: int) -> bool:
    """Does a CLUSTER NODES slot field (``5461-10922`` or ``42``) hold ``slot``?"""
    if slots.startswith("["):  # a slot being migrated or imported
        return False
    low, _, high = slots.partition("-")
    return int(low) <= slot <= int(high or low)


class RedisCluster:
    """Cluster-enabled redis-server processes on 127.0.0.1: three masters, and
    ``replicas`` replicas of each (failover tests)."""

    def __init__(
        self, directory: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 15_000
    ) -> None:
        self.directory = directory
        self.replicas = replicas
        # How long a silent node takes to be declared failed (and its replica promoted);
        # Redis's default keeps a loaded test machine from failing healthy nodes.
        self.node_timeout_ms = node_timeout_ms
        self.ports = free_cluster_ports(masters * (1 + replicas))
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports) + "/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start and join the nodes; on a port taken meanwhile, again on new ports."""
        for attempt in range(3):
            try:
                self._start(timeout)
                return
            except PortTaken:
                if attempt == 2:
                    raise
                self.ports = free_cluster_ports(len(self.ports))

    def _start(self, timeout: float) -> None:
        for port in self.ports:
            log = open(self.directory / f"redis-{port}.log", "ab")  # noqa: SIM115 - lives as long as the node
            self.processes.append(
                subprocess.Popen(
                    [
                        REDIS_SERVER,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(self.directory),
                        "--daemonize",
                        "no",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        # A replica syncs at once (the default waits 5 s for more replicas).
                        "--repl-diskless-sync-delay",
                        "0",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        str(self.node_timeout_ms),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        deadline = time.monotonic() + timeout
        for port, process in zip(self.ports, self.processes, strict=True):
            while not _ping(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self._log(port)
                    if "Address already in use" in log:
                        raise PortTaken(log)
                    raise RuntimeError(f"cluster node did not start on port {port}: {log}")
                time.sleep(0.02)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
        )
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(
                f"redis-cli --cluster create failed: {created.stdout[-2000:]!r} {created.stderr!r}"
            )
        # Every node must see every slot served before a test may rely on any of them.
        for port in self.ports:
            while b"cluster_state:ok" not in self.cli(port, "CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"cluster on {nodes} not ok: {self.cli(port, 'CLUSTER', 'INFO')!r}")
                time.sleep(0.05)

    def serving(self, key: str) -> tuple[int, list[int]]:
        """The port of the master serving ``key``'s slot, and the ports of its replicas."""
        slot = int(self.cli(self.ports[0], "CLUSTER", "KEYSLOT", key))
        nodes = [line.split() for line in self.cli(self.ports[0], "CLUSTER", "NODES").decode().splitlines()]
        port_of = {fields[0]: int(fields[1].split("@")[0].rsplit(":", 1)[1]) for fields in nodes}
        for fields in nodes:
            if "master" in fields[2] and any(_covers(r, slot) for r in fields[8:]):
                replicas = [port_of[f[0]] for f in nodes if f[3] == fields[0]]
                return port_of[fields[0]], replicas
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        process = self.processes[self.ports.index(port)]
        process.kill()
        process.wait(10)

    def cli(self, port: int, *args: str) -> bytes:
        return subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, timeout=10
        ).stdout

    def _log(self, port: int) -> str:
        return (self.directory / f"redis-{port}.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self.processes = []


_session: RedisCluster | None = None


def redis_cluster_or_skip() -> RedisCluster:
    """The session's private cluster, started on first use."""
    global _session
    if _session is not None:
        return _session
    missing = [tool for tool in (REDIS_SERVER, REDIS_CLI) if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install redis-server); Redis Cluster tests skipped"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="conveyor-redis-cluster-"))
    cluster = RedisCluster(directory)
    cluster.start()

    def cleanup() -> None:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(cleanup)
    _session = cluster
    return cluster


def fresh_cluster_url(cluster: RedisCluster) -> str:
    """A URL with a prefix (so a slot) no other test uses: tests share the cluster, not keys."""
    extra = os.environ.get("CONVEYOR_TEST_REDIS_QUERY", "")
    return f"{cluster.url}?prefix=t{uuid.uuid4().hex[:12]}" + (f"&{extra}" if extra else "")
