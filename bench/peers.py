"""Conveyor against its peers: the same workloads, the same private Redis, one run, one table.

Systems: Conveyor on SQLite, Conveyor on Redis, Celery, RQ, Dramatiq, Huey and arq. Each
framework is one small module under bench/peers/ (``<name>_peer.py``): its no-op and add
tasks, and an adapter with the same few methods (send one, send in bulk, count queued,
worker command, round trip). This script starts ONE private ``redis-server`` on a free
port (never the shared 127.0.0.1:6379), then measures each system, round by round (round 1
of every system, then round 2, ...) so that load from elsewhere on the machine is shared:

1. enqueue: N ``noop(i)`` sends from this process, one framework call per task (Celery
   ``delay``, RQ ``Queue.enqueue``, Dramatiq ``send``, Huey calling the task, arq
   ``enqueue_job``, Conveyor ``delay``), and N sends with the framework's bulk API where it
   has one (Conveyor ``Task.map``, RQ ``enqueue_many`` (one pipeline), Celery ``group``
   and Dramatiq ``group``, which send one message after another; Huey and arq have none);
2. drain: N tasks queued first, then two worker processes started; "wall" is N / (workers
   spawned .. last task done), "busy" is N / (first task done .. last task done);
   "start" is workers spawned .. first task done; "results stored" is the busy rate again
   for ``echo(i)``, the same no-op with its result stored. Every task calls
   ``common.mark_done()``: one Lua call on the same Redis over a plain socket (INCR and
   the first/latest time), the same cost for every system, so completion is read the
   same way for all; more than N runs counted fails the drain (duplicate delivery);
3. worker memory: RSS and PSS of every process of the workers (parents, pool children)
   summed, right after the drain (RSS counts what a forked child shares with its parent
   in both; PSS splits shared pages among their sharers);
4. round trip: with two worker processes running, ``--round-trips`` (300) sequential
   ``add(i, i)`` sends each waited on with the framework's own result API (results on),
   after 20 unmeasured ones; p50 and p99. Then, with the same workers, as many
   ``stamp(i)`` sends timed from inside the task: the driver reads CLOCK_MONOTONIC before
   the send, the task reads it first thing and pushes it to a Redis list
   (``common.mark_started``); "send..task start" is the difference, however each
   framework would have told the client;
   the round trips run in ``--round-trip-slices`` (3) slices, the systems in turn (slice
   1 of every system, then slice 2, ...), and the percentiles are over all the samples;
5. Redis memory per queued message: ``INFO memory`` ``used_memory`` before and after
   ``--memory-n`` (100,000) ``add(1, 2)`` sent with the one-call API, no worker running,
   divided by that number (n/a for a system that keeps nothing in Redis).

Conveyor runs with its defaults, task events included: no ``CONVEYOR_*`` variable of the
caller's reaches its workers but the broker URL. Its sources, the peer modules and the venv's
packages are byte-compiled first, as an installation from wheels has them
(``compile_sources``). ``--conveyor-before REV`` adds, beside each
Conveyor column, the same system with Conveyor at git revision REV (``conveyor/`` from
``git archive``, first on the PYTHONPATH of a child driver process and of its workers;
the bench/peers modules are this checkout's), measured in the same rounds.

Results are off for the no-op task everywhere (Celery ``ignore_result``, RQ
``result_ttl=0``, Dramatiq no ``store_results``, Huey stores no None, arq ``keep_result=0``,
Conveyor ``ignore_result``). Rates and drain figures are medians of ``--repeat`` runs.
The store is emptied (FLUSHALL) between phases. A system that fails shows its error in its
column and the table still prints; the work directory (a log file per worker run, the
Redis log) is then kept, as with ``--keep``. Each framework's settings are documented in
its module and in docs/benchmarks.md (defaults, except RQ's SimpleWorker, Huey's
``notify_result`` and arq's poll intervals).

The peers live in their own venv, never in the package's dependencies: on first use this
script creates ``bench/.venv-peers`` (``python3 -m venv``, then ``pip install -r
bench/peers-requirements.txt -e '.[redis,postgres]'`` and arq with ``--no-deps``) and re-runs itself
with that venv's Python, so one interpreter drives every framework and Conveyor (installed
editable from this checkout).

    python3 bench/peers.py                 # N=10,000, 3 repeats: about 13 minutes
    python3 bench/peers.py --quick         # N=2,000, 1 repeat
    python3 bench/peers.py --systems conveyor-redis,huey --json out.json
    python3 bench/peers.py --repeat 1 --conveyor-before main   # this checkout beside main
    python3 bench/peers.py --group postgres  # Conveyor on PostgreSQL vs Procrastinate: peers_pg.py

More systems on Redis: add a ``System(make, conveyor=...)`` to SYSTEMS below.

Exit status 0 when the table printed (even with failed systems), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_DIR = HERE / "peers"
VENV = HERE / ".venv-peers"
REQUIREMENTS = HERE / "peers-requirements.txt"
NO_DEPS = ["arq==0.28.0"]  # see peers-requirements.txt: arq pins an older redis-py than kombu needs
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class System:
    """One column of the table: how to build its adapter (a ``common.Peer``), imported only
    when it runs, so that a framework that fails to import fails its own column."""

    make: Callable[[str, Path], Any]  # (private Redis URL, work directory) -> Peer
    conveyor: bool = False  # Conveyor's own columns: not a peer, compared with the best peer


def _peer_class(module: str, cls: str) -> Callable[[str, Path], Any]:
    def make(redis_url: str, workdir: Path) -> Any:
        return getattr(importlib.import_module(module), cls)()

    return make


def _conveyor(broker: str) -> Callable[[str, Path], Any]:
    def make(redis_url: str, workdir: Path) -> Any:
        from conveyor_peer import ConveyorPeer

        if broker == "sqlite":
            return ConveyorPeer("Conveyor SQLite", f"sqlite:///{workdir}/conveyor.sqlite3")
        importlib.import_module("conveyor.brokers.redis")  # a clear error while it does not exist
        return ConveyorPeer("Conveyor Redis", redis_url)

    return make


# The systems, in table order.
SYSTEMS: dict[str, System] = {
    "conveyor-sqlite": System(_conveyor("sqlite"), conveyor=True),
    "conveyor-redis": System(_conveyor("redis"), conveyor=True),
    "celery": System(_peer_class("celery_peer", "CeleryPeer")),
    "rq": System(_peer_class("rq_peer", "RQPeer")),
    "dramatiq": System(_peer_class("dramatiq_peer", "DramatiqPeer")),
    "huey": System(_peer_class("huey_peer", "HueyPeer")),
    "arq": System(_peer_class("arq_peer", "ArqPeer")),
}
DEFAULT_SYSTEMS = list(SYSTEMS)
BEFORE = "@"  # "conveyor-redis@main": that system with Conveyor at another revision


class BenchError(Exception):
    """One measurement could not be made (worker died, timeout, lost or missing tasks)."""


# -- the benchmark venv ------------------------------------------------------------------------


def in_peers_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv() -> Path:
    """The venv's Python, creating the venv and installing the peers on first use."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    wanted = REQUIREMENTS.read_text() + "\n".join(NO_DEPS)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"peers: setting up {VENV.relative_to(REPO)} (one-time) ...", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS), "-e", f"{REPO}[redis,postgres]"], check=True)
    subprocess.run([*pip, "--no-deps", *NO_DEPS], check=True)
    marker.write_text(wanted)
    return python


# -- the private Redis -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[str, Any]]:
    """A redis-server of our own on a free port, stopped on exit; yields (url, client)."""
    import redis

    port = free_port()
    if port == 6379:  # never the shared server's port, even by chance
        port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(
                        f"redis-server on port {port} did not start (see {workdir}/redis.log)"
                    ) from exc
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()


# -- worker processes --------------------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process. RSS counts pages a forked pool child shares with its
    parent once per process; PSS divides each shared page among its sharers."""
    rss = pss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Rss:", "Pss:")):
                kib = int(line.split()[1]) / 1024
                if line.startswith("Rss:"):
                    rss = kib
                else:
                    pss = kib
    except (OSError, IndexError, ValueError):
        pass
    return rss, pss


class Workers:
    """The system's worker command(s), each in its own process group; leaving stops them all."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], log: Path) -> None:
        self.commands = commands
        self.env = env
        self.log_path = log
        self.procs: list[subprocess.Popen[bytes]] = []
        self.spawned_at = 0.0

    def __enter__(self) -> Workers:
        log = self.log_path.open("ab")
        self.spawned_at = time.time()
        try:
            for command in self.commands:
                self.procs.append(
                    subprocess.Popen(command, cwd=PEERS_DIR, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                )  # fmt: skip
        finally:
            log.close()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.procs:  # whatever did not stop, and any orphaned pool child
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-8:])
                raise BenchError(f"worker exited with code {proc.returncode}: {tail}")

    def memory_mib(self) -> tuple[float, float]:
        """(RSS, PSS) summed over every process of the workers."""
        sizes = [memory_mib(pid) for proc in self.procs for pid in group_pids(proc.pid)]
        return sum(r for r, _ in sizes), sum(p for _, p in sizes)


# -- measurements ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str  # "/s", "ms", "s", "MiB", "B"
    higher_is_better: bool
    target: float | None = None  # the target for Conveyor on Redis

    def shown(self, value: float) -> str:
        if self.unit == "/s":
            return f"{value:,.0f}"
        if self.unit == "ms":
            return f"{value:.2f}"
        if self.unit == "s":
            return f"{value:.2f}"
        return f"{value:,.0f}"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b


ROWS = [
    Row("enqueue", "enqueue, one call/task", "/s", True, 12_000),
    Row("enqueue_bulk", "enqueue, bulk API", "/s", True, 60_000),
    Row("drain_busy", "drain, first..last task", "/s", True, 8_000),
    Row("drain_wall", "drain, start..last task", "/s", True, None),
    Row("drain_results", "drain, results stored", "/s", True, 5_000),
    Row("start", "start to first task", "s", False, 0.3),
    Row("rss", "worker RSS, all procs", "MiB", False, 60),
    Row("pss", "worker PSS, all procs", "MiB", False, None),
    Row("rt_p50", "round trip p50, get()", "ms", False, 0.4),
    Row("rt_p99", "round trip p99, get()", "ms", False, 1.0),
    Row("rt_in_p50", "send..task start p50", "ms", False, None),
    Row("rt_in_p99", "send..task start p99", "ms", False, None),
    Row("redis_mem", "Redis memory/queued msg", "B", False, None),
]
ROW = {row.key: row for row in ROWS}


@dataclass
class Outcome:
    """One system's figures: medians per row, every run's value, and errors per row."""

    system: str
    values: dict[str, float] = field(default_factory=dict)
    runs: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    bulk_api: str = ""


@dataclass
class Context:
    redis_url: str
    redis: Any
    workdir: Path
    n: int
    repeat: int
    round_trips: int
    timeout_s: float
    verbose: bool
    memory_n: int
    round_trip_slices: int = 1
    # Where the "@before" systems import Conveyor from (a git archive), else "".
    conveyor_path: str = ""

    def as_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items() if k != "redis"}


class Runner:
    """Runs every phase for one system's adapter and fills its Outcome."""

    def __init__(self, ctx: Context, system: str, peer: Any, conveyor_path: str = "") -> None:
        self.ctx = ctx
        self.system = system
        self.peer = peer
        self.out = Outcome(system, notes=peer.notes, bulk_api=peer.bulk_api)
        # Conveyor runs with its defaults: no CONVEYOR_* setting from the caller's shell
        # (say, task events switched off) reaches the workers; the peer sets what it needs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        # conveyor_path: the workers import Conveyor from there (RemoteRunner's child).
        path = os.pathsep.join(p for p in (str(PEERS_DIR), conveyor_path) if p)
        self.env = dict(env, PYTHONPATH=path, PEERS_REDIS_URL=ctx.redis_url, **peer.worker_env())
        self.env.pop("PYTHONSTARTUP", None)
        self.started = 0  # worker runs so far: names their log files
        self.samples: dict[str, list[float]] = {"get": [], "inside": []}  # ms, every slice

    def log(self, message: str) -> None:
        if self.ctx.verbose:
            print(f"  [{self.system}] {message}", file=sys.stderr, flush=True)

    def empty(self) -> None:
        self.ctx.redis.flushall()
        self.peer.reset()

    def record(self, key: str, measure: Callable[[], float | dict[str, float]]) -> None:
        """One run of a measurement; a failure marks its row (and the rows it also fills)
        and skips it in later rounds."""
        if key in self.out.errors:
            return
        try:
            got = measure()
        except Exception as exc:  # one system's failure must not stop the others
            self.out.errors[key] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            self.log(f"{key}: FAILED {self.out.errors[key]}")
            return
        for k, v in (got if isinstance(got, dict) else {key: got}).items():
            self.out.runs.setdefault(k, []).append(round(v, 4))
            self.out.values[k] = statistics.median(self.out.runs[k])
            self.log(f"{k}: {ROW[k].shown(v)} {ROW[k].unit}")

    def workers(self, phase: str) -> Workers:
        """This system's workers, logging to a file of their own for this run."""
        self.started += 1
        log = self.ctx.workdir / f"{self.system}-{phase}-{self.started}.log"
        return Workers(self.peer.worker_commands(), self.env, log)

    def check_queued(self, what: str) -> None:
        queued = self.peer.queued()
        if queued != self.ctx.n:
            raise BenchError(f"{what}: {self.ctx.n} sent but {queued} queued")

    def timed_send(self, send: Callable[[int], None], what: str) -> float:
        self.empty()
        send(100)  # warm-up: connections, scripts, code paths
        self.empty()
        started = time.perf_counter()
        send(self.ctx.n)
        elapsed = time.perf_counter() - started
        self.check_queued(what)
        self.empty()
        return self.ctx.n / elapsed

    def drain(self, results: bool = False) -> dict[str, float]:
        n = self.ctx.n
        self.empty()
        (self.peer.enqueue_bulk if self.peer.bulk_api else self.peer.enqueue)(n, results)
        self.check_queued("drain set-up")
        redis = self.ctx.redis
        with self.workers("drain-results" if results else "drain") as workers:
            deadline = time.monotonic() + START_TIMEOUT_S + self.ctx.timeout_s
            while int(redis.get("peers:done") or 0) < n:
                workers.check()
                if time.monotonic() > deadline:
                    done = int(redis.get("peers:done") or 0)
                    raise BenchError(
                        f"drain: {done} of {n} tasks done within {self.ctx.timeout_s:g}s "
                        f"(worker log: {workers.log_path})"
                    )
                time.sleep(0.02)
            time.sleep(0.3)  # let a straggler (a duplicate delivery) show up, and RQ's horse exit
            done = int(redis.get("peers:done") or 0)
            if done != n:
                raise BenchError(f"drain: {done} task runs for {n} tasks (duplicates)")
            rss, pss = workers.memory_mib()
            spawned = workers.spawned_at
        first, last = float(redis.get("peers:first")), float(redis.get("peers:last"))
        self.empty()
        if results:
            return {"drain_results": (n - 1) / max(last - first, 1e-9)}
        return {
            "drain_busy": (n - 1) / max(last - first, 1e-9),
            "drain_wall": n / (last - spawned),
            "start": first - spawned,
            "rss": rss,
            "pss": pss,
        }

    def round_trip(self) -> dict[str, float]:
        """One slice of both round trips, with the same two worker processes running:
        ``add(i, i)`` waited on with the framework's result API, then ``stamp(i)``, whose
        start the task itself reports (common.mark_started); each series after 20
        unmeasured ones. The figures are over every slice's samples so far: the driver
        runs the slices of all systems in turn, as it does the rounds, so that load from
        elsewhere falls on every system alike."""
        count = -(-self.ctx.round_trips // self.ctx.round_trip_slices)
        self.empty()
        with self.workers("round-trip") as workers:
            try:
                through_get = self._round_trips_get(count)
                inside = self._round_trips_inside(workers, count)
            except Exception:
                workers.check()  # a dead worker is the better explanation
                raise
        self.empty()
        self.samples["get"] += through_get
        self.samples["inside"] += inside
        through_get, inside = sorted(self.samples["get"]), sorted(self.samples["inside"])
        return {
            "rt_p50": percentile(through_get, 50),
            "rt_p99": percentile(through_get, 99),
            "rt_in_p50": percentile(inside, 50),
            "rt_in_p99": percentile(inside, 99),
        }

    def _round_trips_get(self, count: int) -> list[float]:
        samples = []
        for k in range(WARM_UP + count):
            i = k % 1000
            started = time.perf_counter()
            value = self.peer.round_trip(i, START_TIMEOUT_S if k == 0 else 10.0)
            elapsed = time.perf_counter() - started
            if value != 2 * i:
                raise BenchError(f"add({i}, {i}) returned {value!r}")
            if k >= WARM_UP:
                samples.append(elapsed * 1000)
        return samples

    def _round_trips_inside(self, workers: Workers, count: int) -> list[float]:
        """Send .. the task's first line, both read on CLOCK_MONOTONIC (time.monotonic),
        which every process on the machine shares; how the client then learns of it
        (BLPOP here) is outside the figure."""
        samples = []
        redis = self.ctx.redis
        for k in range(WARM_UP + count):
            started = time.monotonic()
            self.peer.send_stamp(k)
            got = redis.blpop([STARTED_KEY], timeout=START_TIMEOUT_S if k == 0 else 10.0)
            if got is None:
                workers.check()
                raise BenchError(f"stamp({k}) did not start")
            i, at = got[1].split()
            if int(i) != k:
                raise BenchError(f"stamp({k}) sent but stamp({int(i)}) started")
            if k >= WARM_UP:
                samples.append((float(at) - started) * 1000)
        return samples

    def redis_memory(self) -> float:
        """Bytes of Redis memory per queued ``add(1, 2)``: ``used_memory`` before and after
        --memory-n sends with the one-call API, no worker running."""
        n = self.ctx.memory_n
        self.empty()
        before = int(self.ctx.redis.info("memory")["used_memory"])
        for _ in range(n):
            self.peer.send_add(1, 2)
        after = int(self.ctx.redis.info("memory")["used_memory"])
        queued = self.peer.queued()
        self.empty()
        if queued != n:
            raise BenchError(f"memory: {n} sent but {queued} queued")
        return (after - before) / n

    def step(self, phase: str) -> Outcome:
        """One phase ("round", "round_trips", "memory"), as the driver asks for it."""
        if phase == "round":
            self.one_round()
        elif phase == "round_trips":
            self.record("rt_p50", self.round_trip)
            for key in ("rt_p50", "rt_p99", "rt_in_p50", "rt_in_p99"):  # every sample, not a median
                if self.out.runs.get(key):
                    self.out.values[key] = self.out.runs[key][-1]
        elif phase == "memory":
            if self.peer.uses_redis:
                self.record("redis_mem", self.redis_memory)
        else:
            raise ValueError(f"unknown phase {phase!r}")
        return self.out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.peer.close()

    def one_round(self) -> None:
        """One run of every rate: the driver interleaves systems round by round, so a
        burst of load from elsewhere on the machine does not fall on one system only."""
        self.record("enqueue", lambda: self.timed_send(self.peer.enqueue, "enqueue"))
        if self.peer.bulk_api:
            self.record("enqueue_bulk", lambda: self.timed_send(self.peer.enqueue_bulk, "bulk enqueue"))
        self.record("drain_busy", self.drain)
        self.record("drain_results", lambda: self.drain(results=True))


WARM_UP = 20  # unmeasured round trips before each series
STARTED_KEY = "peers:started"  # common.STARTED_KEY: where stamp(i) reports its start


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, round(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def make_peer(system: str, redis_url: str, workdir: Path) -> Any:
    """Import the system's module only now: a framework that fails to import fails its column."""
    if str(PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(PEERS_DIR))
    os.environ["PEERS_REDIS_URL"] = redis_url  # read by common.py when first imported
    return SYSTEMS[system].make(redis_url, workdir)


def is_conveyor(system: str) -> bool:
    return BEFORE in system or (system in SYSTEMS and SYSTEMS[system].conveyor)


# -- the table ---------------------------------------------------------------------------------


def ratio(row: Row, conveyor: float | None, best: float | None) -> str:
    """How many times better Conveyor is than the best peer (below 1: worse)."""
    if conveyor is None or best is None or conveyor <= 0 or best <= 0:
        return "-"
    times = conveyor / best if row.higher_is_better else best / conveyor
    return f"{times:.2f}x"


def best_peer(row: Row, outcomes: list[Outcome]) -> tuple[str, float] | None:
    best: tuple[str, float] | None = None
    for o in outcomes:
        if not is_conveyor(o.system) and row.key in o.values:
            if best is None or row.better(o.values[row.key], best[1]):
                best = (o.system, o.values[row.key])
    return best


def table(outcomes: list[Outcome]) -> str:
    systems = [o.system for o in outcomes]
    header = ["", *systems, "best peer", *(f"{s} vs best" for s in systems if is_conveyor(s)), "target"]
    lines = [header]
    footnotes: dict[str, int] = {}  # error text -> its number: one note per distinct error
    for row in ROWS:
        cells = [f"{row.title} ({row.unit})"]
        for o in outcomes:
            source = next((k for k in o.errors if k == row.key or (k, row.key) in FILLS), None)
            if row.key in o.values:
                cell = row.shown(o.values[row.key])
                if source is not None:  # some runs succeeded, a later one failed
                    note = f"{o.system}: {o.errors[source]}"
                    cell += f" ERR[{footnotes.setdefault(note, len(footnotes) + 1)}]"
                cells.append(cell)
            else:
                if source is None:
                    cells.append("n/a" if row.key in ("enqueue_bulk", "redis_mem") else "-")
                else:
                    note = f"{o.system}: {o.errors[source]}"
                    cells.append(f"ERR[{footnotes.setdefault(note, len(footnotes) + 1)}]")
        best = best_peer(row, outcomes)
        cells.append(f"{row.shown(best[1])} {best[0]}" if best else "-")
        for o in outcomes:
            if is_conveyor(o.system):
                cells.append(ratio(row, o.values.get(row.key), best[1] if best else None))
        target = (
            "-" if row.target is None else ("≥ " if row.higher_is_better else "≤ ") + row.shown(row.target)
        )
        cells.append(target)
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if k == 0:
            out.append("-" * len(out[0]))
    out.append("")
    out.append("x = times better than the best peer (rates: Conveyor/best; times and sizes: best/Conveyor);")
    out.append("below 1.00x Conveyor is behind. Target: the issue's target for Conveyor on Redis.")
    for note, i in footnotes.items():
        out.append(f"[{i}] {note}")
    return "\n".join(out)


# The drain fills four rows and the round trips four: an error in one marks all of them.
FILLS = {("drain_busy", k) for k in ("drain_wall", "start", "rss", "pss")} | {
    ("rt_p50", k) for k in ("rt_p99", "rt_in_p50", "rt_in_p99")
}


def versions() -> dict[str, str]:
    found = {}
    for dist in ("conveyor-tasks", "celery", "kombu", "rq", "dramatiq", "huey", "arq", "redis", "hiredis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    found["redis-server"] = next((w.split("=")[1] for w in server if w.startswith("v=")), "?")
    return found


def conveyor_revision() -> str:
    """The checkout Conveyor runs from (it is installed editable): commit, "+dirty" when
    conveyor/ has uncommitted changes. Compared before and after a run in the output."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "conveyor") else "")


# -- Conveyor at another revision ---------------------------------------------------------------


def checkout_before(rev: str, workdir: Path) -> tuple[str, Path]:
    """``conveyor/`` at ``rev`` (``git archive``) in the work directory: (short commit, path)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"peers: git {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    commit = git("rev-parse", "--short", f"{rev}^{{commit}}")
    target = workdir / f"conveyor-{commit}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit, "conveyor"], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return commit, target


def compile_sources(*dirs: Path) -> None:
    """Byte-compile what every worker imports, as a user's installation has it: the venv's
    packages (pip compiles what it installs, unless ``PYTHONDONTWRITEBYTECODE`` is set
    while it runs, as on some CI machines), Conveyor's sources (this checkout, the
    ``--conveyor-before`` archive) and the peer modules. Otherwise each worker process
    compiles its modules from source at every start, which the "start to first task" and
    memory rows would count against whichever system was not compiled."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    for d in (site_packages, *dirs):
        if not compileall.compile_dir(str(d), quiet=1):
            raise SystemExit(f"peers: could not byte-compile {d}")


class RemoteRunner:
    """A Runner in a child process that imports Conveyor from another checkout (one
    interpreter cannot hold two versions of the package). The driver asks it for one phase
    at a time over a pipe, so its columns interleave with the others round by round."""

    def __init__(self, ctx: Context, system: str, base: str) -> None:
        self.system = system
        self.ctx = ctx
        self.out = Outcome(system)
        env = dict(os.environ, PYTHONPATH=ctx.conveyor_path)
        env.pop("PYTHONSTARTUP", None)
        config = json.dumps({**ctx.as_json(), "system": base, "label": system})
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
        )  # fmt: skip
        self.call("hello")

    def log(self, message: str) -> None:
        if self.ctx.verbose:
            print(f"  [{self.system}] {message}", file=sys.stderr, flush=True)

    def call(self, phase: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(phase + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the runner for {self.system} exited (code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError(reply["error"])
        self.out = Outcome(**{**reply, "system": self.system})

    def step(self, phase: str) -> Outcome:
        try:
            self.call(phase)
        except (BenchError, OSError) as exc:
            row = {"round_trips": "rt_p50", "memory": "redis_mem"}.get(phase, "enqueue")
            self.out.errors.setdefault(row, str(exc))
        return self.out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.call("close")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.kill()


def serve(config_text: str) -> int:
    """The child side of RemoteRunner: one phase per line on stdin, the Outcome as one JSON
    line on the original stdout (anything else printed goes to stderr)."""
    import redis

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    config = json.loads(config_text)
    system, label = config.pop("system"), config.pop("label")
    config["workdir"] = Path(config["workdir"])
    client = redis.Redis.from_url(config["redis_url"])
    ctx = Context(redis=client, **config)
    runner = None
    for line in sys.stdin:
        phase = line.strip()
        try:
            if runner is None:
                import conveyor

                own = ctx.workdir / label  # its own SQLite file, apart from the other column's
                own.mkdir(exist_ok=True)
                peer = make_peer(system, ctx.redis_url, own)
                runner = Runner(ctx, label, peer, ctx.conveyor_path)
                runner.out.notes += f"; Conveyor from {Path(conveyor.__file__).parent.parent}"
            if phase == "close":
                runner.close()
            elif phase != "hello":
                runner.step(phase)
            reply: dict[str, Any] = runner.out.__dict__
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if phase == "close":
            break
    client.close()
    return 0


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=int, default=None, help="tasks per workload (default 10,000; --quick: 2,000)")
    p.add_argument(
        "--repeat", type=int, default=None, help="runs per rate, median shown (default 3; --quick: 1)"
    )
    p.add_argument("--quick", action="store_true", help="N=2,000 and 1 repeat, for a quick look")
    p.add_argument("--round-trips", type=int, default=300, help="sequential round trips (default 300)")
    p.add_argument(
        "--round-trip-slices",
        type=int,
        default=3,
        help="the round trips in this many slices, systems in turn (default 3)",
    )
    p.add_argument(
        "--memory-n",
        type=int,
        default=None,
        help="add(1, 2) queued for the Redis memory row (default 100,000; --quick: 10,000; 0: skip)",
    )
    p.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    p.add_argument(
        "--conveyor-before",
        metavar="REV",
        help="also run each Conveyor system with Conveyor at git revision REV (e.g. main), "
        "as a column SYSTEM@REV beside it",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for one drain (default 120)")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE ('-' for stdout)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs, redis.log)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the table")
    p.add_argument("--no-venv", action="store_true", help="run with this Python, not bench/.venv-peers")
    args = p.parse_args(argv)
    args.n = args.n or (2_000 if args.quick else 10_000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.memory_n is None:
        args.memory_n = 10_000 if args.quick else 100_000
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown or not chosen:
        p.error(f"unknown system(s): {', '.join(unknown)}" if unknown else "--systems names no system")
    if args.n < 2 or min(args.repeat, args.round_trips, args.round_trip_slices) < 1 or args.memory_n < 0:
        p.error(
            "-n must be at least 2, --repeat, --round-trips and --round-trip-slices at least 1, "
            "--memory-n not negative"
        )
    if args.conveyor_before:  # each Conveyor column, then the same at the other revision
        label = args.conveyor_before.replace(BEFORE, "_")
        chosen = [c for s in chosen for c in ([s, f"{s}{BEFORE}{label}"] if SYSTEMS[s].conveyor else [s])]
    args.systems = chosen
    return args


def measure_all(args: argparse.Namespace, ctx: Context) -> list[Outcome]:
    """Every system, round by round, then each system's round trips, then the memory row;
    in --systems order."""
    outcomes: list[Outcome] = []
    runners: list[Runner | RemoteRunner] = []
    for system in args.systems:
        try:
            base = system.split(BEFORE)[0]
            if base != system:
                runners.append(RemoteRunner(ctx, system, base))
            else:
                runners.append(Runner(ctx, system, make_peer(system, ctx.redis_url, ctx.workdir)))
        except Exception as exc:  # e.g. a framework that does not import: its column says why
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            keys = ("enqueue", "enqueue_bulk", "drain_busy", "drain_results", "rt_p50", "redis_mem")
            outcomes.append(Outcome(system, errors=dict.fromkeys(keys, error)))
            print(f"  [{system}] cannot run: {error}", file=sys.stderr, flush=True)
    phases = ["round"] * args.repeat + ["round_trips"] * args.round_trip_slices
    phases += ["memory"] if args.memory_n else []
    try:
        for k, phase in enumerate(phases):
            for runner in runners:
                runner.log(f"round {k + 1} of {args.repeat}" if phase == "round" else phase.replace("_", " "))
                runner.step(phase)
    finally:
        for runner in runners:
            runner.close()
    outcomes += [runner.out for runner in runners]
    return sorted(outcomes, key=lambda o: args.systems.index(o.system))


def json_report(
    args: argparse.Namespace, argv: list[str], started: float, outcomes: list[Outcome], revision: str
) -> str:
    rows = [
        {
            "key": r.key,
            "title": r.title,
            "unit": r.unit,
            "higher_is_better": r.higher_is_better,
            "target": r.target,
        }
        for r in ROWS
    ]
    report = {
        "started_at": started,
        "argv": argv,
        "n": args.n,
        "repeat": args.repeat,
        "round_trips": args.round_trips,
        "round_trip_slices": args.round_trip_slices,
        "memory_n": args.memory_n,
        "conveyor_before": args.conveyor_before,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": versions(),
        "conveyor_revision": revision,
        "rows": rows,
        "systems": [o.__dict__ for o in outcomes],
    }
    return json.dumps(report, indent=2)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:  # a RemoteRunner's child: already in the right interpreter
        return serve(argv[1])
    if "--group" in argv and argv[argv.index("--group") + 1 :][:1] == ["postgres"]:
        import peers_pg  # Conveyor on PostgreSQL vs Procrastinate: its own options and table

        return peers_pg.main(argv)
    args = parse_args(argv)
    if not args.no_venv and not in_peers_venv():
        python = ensure_venv()
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-peers-"))
    started = time.time()
    revision = conveyor_revision()
    before = checkout_before(args.conveyor_before, workdir) if args.conveyor_before else None
    compile_sources(REPO / "conveyor", PEERS_DIR, *([before[1]] if before else []))
    with private_redis(workdir) as (url, client):
        if not args.quiet:
            print(f"peers: N={args.n:,} repeat={args.repeat} round trips={args.round_trips}, "
                  f"private Redis {url}, work dir {workdir}", file=sys.stderr, flush=True)  # fmt: skip
        ctx = Context(
            url, client, workdir, args.n, args.repeat, args.round_trips, args.timeout, not args.quiet,
            args.memory_n, args.round_trip_slices, str(before[1]) if before else "",
        )  # fmt: skip
        outcomes = measure_all(args, ctx)
    print()
    print(f"Conveyor vs peers, N={args.n:,} no-op tasks, 2 worker processes, median of {args.repeat}, "
          f"{args.round_trips} round trips in {args.round_trip_slices} slices, {args.memory_n:,} queued "
          f"for memory; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
          f"{os.cpu_count()} CPUs, Redis {versions()['redis-server']} on loopback")  # fmt: skip
    finished = conveyor_revision()
    changed = "" if finished == revision else f" -> {finished} (CHANGED DURING THE RUN)"
    print(f"Conveyor from {REPO} at {revision}{changed}")
    if before:
        print(f"{BEFORE}{args.conveyor_before}: Conveyor at {args.conveyor_before} = {before[0]} "
              f"(git archive, its conveyor/ first on PYTHONPATH; same bench/peers modules)")  # fmt: skip
    print(table(outcomes))
    print()
    for o in outcomes:
        if o.notes:
            print(f"{o.system}: {o.notes}; bulk: {o.bulk_api or 'none'}")
    if args.json:
        text = json_report(args, argv, started, outcomes, f"{revision}{changed}")
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.keep or any(o.errors for o in outcomes):
        print(f"work directory kept (worker logs, redis.log): {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
