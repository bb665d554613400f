"""Conveyor throughput, latency and idle-CPU benchmark, printed as one table.

What it measures, on one broker (default: a fresh SQLite file in a temporary
directory; ``--broker URL`` to choose), with a no-op task and N tasks (``-n``, 10,000):

1. enqueue rate with one ``delay()`` call per task, from this process (tasks/s);
2. enqueue rate with ``Task.map([(i,), ...])``, one broker round trip (tasks/s);
3. drain rate: N tasks already queued, consumed by a worker subprocess
   ``python -m conveyor.cli.main -A bench_tasks worker -Q <queue> -c 2 --pool prefork -l warning``.
   Two variants: results stored (``bench.noop``) and ``ignore_result=True``
   (``bench.noop_ignored``). "busy" is N / (first task started .. last task finished):
   from the stored results' started_at/finished_at, or, with no results, from polling
   ``queue_stats()`` (first message leased .. queue empty, +-25 ms). "wall" is
   N / (worker spawned .. queue empty and every result stored), start-up included.
   Also shown: worker start-up time, "result lag" (last task finished .. its result
   readable), and the worker's CPU per task (utime+stime of the worker parent and of
   the prefork children from /proc while draining);
4. round trip: with a worker running, ``--latency-count`` (300) sequential
   ``add.delay(i, i).get(timeout=10)`` after ``--warmup`` (20) unmeasured ones; p50, p99;
5. idle CPU: utime+stime of the idle worker and all its processes (``/proc/<pid>/stat``)
   over ``--idle-seconds`` (10), as a percentage of one core.

The throughput figures (1-3) are the median of ``--repeat`` runs (3). Each phase uses
its own queue (``bench-<pid>-<phase>``), purged before and after, so a shared broker
is left as it was except for the result records. Every wait has a timeout
(``--timeout`` per phase) and the worker's process group is killed when a phase ends.

``--profile DIR`` also profiles: the producer's ``delay()`` and ``map()`` loops with
cProfile (``DIR/producer-*.prof``), and one drain (results stored) with the worker
under ``py-spy record --subprocesses --idle`` (``pip install py-spy``), killed when the
queue is empty. It prints, per process (worker parent, each prefork child), the µs per
task each thread spends running, waiting for the SQLite write lock or blocked, and the
top running functions in µs per task; the raw stacks stay in ``DIR/worker-drain.txt``.

Run (from the repository root, Python 3.10+; ``pip install -e .`` or nothing: the
script puts the repository on the path):

    python bench/throughput.py                       # full run, about 50 s
    python bench/throughput.py -n 2000 --repeat 1 --idle-seconds 2   # quick look
    python bench/throughput.py --broker sqlite:////tmp/x.sqlite3 --json
    python bench/throughput.py --skip-enqueue --skip-latency --skip-idle --profile /tmp/prof

Exit status: 0, or 1 when the benchmark could not run (worker died, timeout,
wrong results); with ``--check``, also 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import importlib
import io
import json
import math
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT_S = 60.0  # a worker that takes longer than this to run its first task is broken


class BenchError(Exception):
    """The benchmark could not measure something (worker died, timeout, wrong results)."""


# -- metrics and targets ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    text: str
    bound: float
    higher_is_better: bool

    def met(self, value: float) -> bool:
        return value >= self.bound if self.higher_is_better else value <= self.bound


@dataclass
class Metric:
    name: str
    value: float
    unit: str  # "/s", "ms", "s", "%"
    target: Target | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value)

    def shown(self) -> str:
        if self.unit == "/s":
            return f"{self.value:,.0f}/s"
        if self.unit == "ms":
            return f"{self.value:,.3f} ms" if self.value < 1 else f"{self.value:,.2f} ms"
        if self.unit == "s":
            return f"{self.value:,.2f} s"
        return f"{self.value:,.2f} %"


DELAY_TARGET = Target("≥ 5,000/s", 5_000, True)
MAP_TARGET = Target("≥ 30,000/s", 30_000, True)
DRAIN_TARGET = Target("≥ 3,000/s", 3_000, True)
P50_TARGET = Target("≤ 2 ms", 2.0, False)
IDLE_TARGET = Target("≈ 0 % (< 1 %)", 1.0, False)


# -- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    pgrp: int
    cpu_ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime: children already reaped


def read_proc_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
    rest = raw.rsplit(")", 1)[1].split()
    return ProcStat(
        pid=pid,
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        cpu_ticks=int(rest[11]) + int(rest[12]),
        child_ticks=int(rest[13]) + int(rest[14]),
    )


def group_processes(pgid: int) -> dict[int, ProcStat]:
    """Every live process in process group ``pgid`` (the worker and all it started)."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_proc_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid:
                found[stat.pid] = stat
    return found


class WorkerProcess:
    """``conveyor worker`` as a subprocess in its own process group, optionally under py-spy.

    Use as a context manager: leaving it stops the worker (SIGTERM, then SIGKILL to the
    whole group), whatever happened inside.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        queue: str,
        concurrency: int,
        log_path: Path,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.command = [
            *wrapper,
            sys.executable,
            "-m",
            "conveyor.cli.main",
            "-A",
            "bench_tasks",
            "worker",
            "-Q",
            queue,
            "-c",
            str(concurrency),
            "--pool",
            "prefork",
            "-l",
            "warning",
            "-n",
            f"{queue}@{socket.gethostname()}",
        ]
        self.env = env
        self.log_path = log_path
        self.wrapped = bool(wrapper)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.spawned_at = 0.0  # time.time()

    def __enter__(self) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        self.spawned_at = time.time()
        self.proc = subprocess.Popen(
            self.command,
            cwd=HERE,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches the children
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pid(self) -> int | None:
        """The worker's main process: the Popen itself, or py-spy's child when wrapped."""
        if self.proc is None:
            return None
        if not self.wrapped:
            return self.proc.pid
        children = [p.pid for p in group_processes(self.pgid).values() if p.ppid == self.proc.pid]
        return min(children) if children else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        """Raise if the worker has exited: a benchmark must not wait on a dead worker."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"worker exited with code {self.proc.returncode}: {' '.join(self.command)}\n"
                f"--- worker log ({self.log_path}) ---\n{self.log_tail()}"
            )

    def kill_worker(self) -> None:
        """SIGKILL the worker's processes but not py-spy, which then writes its profile."""
        assert self.proc is not None
        for pid in group_processes(self.pgid):
            if pid != self.proc.pid or not self.wrapped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                pid = self.worker_pid()
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)  # warm shutdown; py-spy then writes its file
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(grace_s)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)  # anything left in the group
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self._log is not None:
                self._log.close()


# -- the benchmark -----------------------------------------------------------------------------


@dataclass
class Bench:
    tasks: ModuleType  # bench_tasks
    env: dict[str, str]
    workdir: Path
    n: int
    concurrency: int
    timeout_s: float
    run_id: str = field(default_factory=lambda: f"bench-{os.getpid()}")
    _phases: Counter[str] = field(default_factory=Counter)

    @property
    def app(self) -> Any:
        return self.tasks.app

    def queue(self, phase: str) -> str:
        """A fresh, empty queue for one phase run."""
        self._phases[phase] += 1
        name = f"{self.run_id}-{phase}-{self._phases[phase]}"
        self.app.broker.purge(name)
        return name

    def worker(self, queue: str, wrapper: Sequence[str] = ()) -> WorkerProcess:
        return WorkerProcess(
            self.env,
            queue=queue,
            concurrency=self.concurrency,
            log_path=self.workdir / f"worker-{queue}.log",
            wrapper=wrapper,
        )

    def stats(self, queue: str) -> Any:
        return self.app.broker.queue_stats([queue])[0]

    def wait_for(
        self,
        what: str,
        done: Callable[[], bool],
        *,
        timeout_s: float,
        interval_s: float,
        worker: WorkerProcess | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if worker is not None:
                worker.check()
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not done within {timeout_s:g}s")
            time.sleep(interval_s)


def enqueue_delay(bench: Bench) -> float:
    """tasks/s for N ``noop.delay(i)`` calls in a loop."""
    queue = bench.queue("delay")
    bench.app.conf.task_default_queue = queue  # delay() takes no queue option
    try:
        for i in range(200):  # warm-up: connection, schema, code paths
            bench.tasks.noop.delay(i)
        bench.app.broker.purge(queue)
        delay = bench.tasks.noop.delay
        started = time.perf_counter()
        for i in range(bench.n):
            delay(i)
        elapsed = time.perf_counter() - started
        enqueued = bench.stats(queue).ready
        if enqueued != bench.n:
            raise BenchError(f"delay(): {bench.n} sent but {enqueued} ready in queue {queue}")
        return bench.n / elapsed
    finally:
        bench.app.broker.purge(queue)


def enqueue_map(bench: Bench) -> float:
    """tasks/s for one ``noop.map([(i,) ...])`` call (arguments built beforehand)."""
    queue = bench.queue("map")
    try:
        bench.tasks.noop.map([(i,) for i in range(100)], queue=queue)  # warm-up
        bench.app.broker.purge(queue)
        arguments = [(i,) for i in range(bench.n)]
        started = time.perf_counter()
        bench.tasks.noop.map(arguments, queue=queue)
        elapsed = time.perf_counter() - started
        enqueued = bench.stats(queue).ready
        if enqueued != bench.n:
            raise BenchError(f"map(): {bench.n} sent but {enqueued} ready in queue {queue}")
        return bench.n / elapsed
    finally:
        bench.app.broker.purge(queue)


@dataclass
class DrainRun:
    busy_rate: float  # N / (first task started .. last task finished)
    wall_rate: float  # N / (worker spawned .. queue empty and every result stored)
    startup_s: float  # worker spawned .. first message leased (polled)
    busy_source: str  # "results" or "queue polling"
    # Seconds after the worker was spawned (time.time() clocks, one machine):
    timeline: dict[str, float] = field(default_factory=dict)
    # utime+stime from /proc between first lease and queue empty, per role, ms per task:
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)
    pids: dict[int, str] = field(default_factory=dict)  # the worker's processes and their roles


def _wait_empty(
    bench: Bench, worker: WorkerProcess, queue: str
) -> tuple[float, float, dict[str, float], dict[int, str]]:
    """Poll the queue until it is empty.

    Returns (first lease seen, empty seen) as epoch seconds, the worker's CPU seconds
    per role between the two, and the role of each pid in the worker's group.
    """
    n = bench.n
    first_lease = 0.0
    before: dict[int, ProcStat] = {}
    deadline = time.monotonic() + STARTUP_TIMEOUT_S + bench.timeout_s
    while True:
        worker.check()
        s = bench.stats(queue)
        now = time.time()
        if not first_lease and (s.ready < n or s.in_flight):
            first_lease = now
            before = group_processes(worker.pgid)
        if s.ready + s.in_flight + s.delayed == 0:
            after = group_processes(worker.pgid)
            if s.dead:
                raise BenchError(f"drain on {queue}: {s.dead} message(s) dead-lettered (conveyor dlq list)")
            names = roles({p.pid: p.ppid for p in after.values()}, wrapped=worker.wrapped)
            return first_lease or now, now, _cpu_by_role(before, after, names), names
        if time.monotonic() > deadline:
            raise BenchError(
                f"drain of {n} tasks on {queue}: queue not empty within {bench.timeout_s:g}s "
                f"(+{STARTUP_TIMEOUT_S:g}s for start-up): {s}"
            )
        # Coarse once running: each poll is a COUNT over the backlog, on the same 2 cores.
        time.sleep(0.025 if first_lease else 0.01)


def _cpu_by_role(
    before: dict[int, ProcStat], after: dict[int, ProcStat], names: dict[int, str]
) -> dict[str, float]:
    cpu: dict[str, float] = defaultdict(float)
    for pid, stat in after.items():
        start = before.get(pid)
        used = stat.cpu_ticks + stat.child_ticks - (start.cpu_ticks + start.child_ticks if start else 0)
        cpu[names.get(pid, "other")] += used / CLK_TCK
    return dict(cpu)


def _wait_results(bench: Bench, worker: WorkerProcess, ids: list[str]) -> dict[str, Any]:
    """Every result record, once all are ready; raises unless all succeeded."""
    records: dict[str, Any] = {}

    def all_stored() -> bool:
        missing = [i for i in ids if i not in records or not records[i].ready]
        records.update(bench.app.backend.get_many(missing))
        return len(records) == len(ids) and all(r.ready for r in records.values())

    bench.wait_for("results", all_stored, timeout_s=bench.timeout_s, interval_s=0.02, worker=worker)
    bad = [r for r in records.values() if r.state != "SUCCESS"]
    if bad:
        raise BenchError(f"drain: {len(bad)} task(s) did not succeed, e.g. {bad[0]}")
    return records


def drain(bench: Bench, task: Any, *, wrapper: Sequence[str] = (), kill_when_empty: bool = False) -> DrainRun:
    """Queue N tasks, start a worker, time it until the queue is empty and results stored.

    ``kill_when_empty`` (profiling): SIGKILL the worker as soon as the queue is empty,
    so its profile covers the drain and not the idle time after; results are not awaited.
    """
    n = bench.n
    queue = bench.queue("drain-ignored" if task.ignore_result else "drain")
    try:
        ids = [r.id for r in task.map([(i,) for i in range(n)], queue=queue)]
        with bench.worker(queue, wrapper) as worker:
            first_lease, empty_at, cpu, pids = _wait_empty(bench, worker, queue)
            done_at = empty_at
            if kill_when_empty:
                worker.kill_worker()
            records = {} if task.ignore_result or kill_when_empty else _wait_results(bench, worker, ids)
            if records:
                done_at = time.time()
            spawned = worker.spawned_at
    finally:
        bench.app.broker.purge(queue)
    timeline = {"first_lease_seen": first_lease - spawned, "queue_empty_seen": empty_at - spawned}
    if records:
        first = min(r.started_at for r in records.values())
        last = max(r.finished_at for r in records.values())
        busy, source = last - first, "results"
        timeline.update(
            first_task_started=first - spawned,
            last_task_finished=last - spawned,
            results_seen=done_at - spawned,
        )
    else:
        busy, source = empty_at - first_lease, "queue polling"
    return DrainRun(
        busy_rate=n / max(busy, 1e-9),
        wall_rate=n / (done_at - spawned),
        startup_s=first_lease - spawned,
        busy_source=source,
        timeline={k: round(v, 4) for k, v in timeline.items()},
        cpu_ms_per_task={role: round(seconds / n * 1000, 4) for role, seconds in sorted(cpu.items())},
        pids=pids,
    )


def round_trips(bench: Bench, count: int, warmup: int) -> list[float]:
    """Milliseconds for each of ``count`` sequential ``add.delay(i, i).get()`` calls."""
    queue = bench.queue("latency")
    bench.app.conf.task_default_queue = queue
    add = bench.tasks.add
    samples = []
    try:
        with bench.worker(queue) as worker:
            for i in range(max(warmup, 1)):  # the first waits for the worker to come up
                timeout = STARTUP_TIMEOUT_S if i == 0 else 10
                try:
                    add.delay(i, i).get(timeout=timeout)
                except TimeoutError:
                    worker.check()
                    raise
            for i in range(count):
                started = time.perf_counter()
                value = add.delay(i, i).get(timeout=10)
                samples.append((time.perf_counter() - started) * 1000)
                if value != 2 * i:
                    raise BenchError(f"add({i}, {i}) returned {value!r}")
    finally:
        bench.app.broker.purge(queue)
    return samples


def idle_cpu(bench: Bench, seconds: float) -> dict[str, float]:
    """Percent of one core used by an idle worker over ``seconds``, per role (parent, children)."""
    queue = bench.queue("idle")
    bench.app.conf.task_default_queue = queue
    try:
        with bench.worker(queue) as worker:
            bench.tasks.add.delay(1, 1).get(timeout=STARTUP_TIMEOUT_S)  # up, children forked
            time.sleep(1.0)  # let start-up work finish
            worker.check()
            before, t0 = group_processes(worker.pgid), time.monotonic()
            time.sleep(seconds)
            worker.check()
            after, t1 = group_processes(worker.pgid), time.monotonic()
    finally:
        bench.app.broker.purge(queue)
    names = roles({p.pid: p.ppid for p in after.values()}, wrapped=False)
    return {role: cpu / (t1 - t0) * 100 for role, cpu in _cpu_by_role(before, after, names).items()}


# -- profiling -----------------------------------------------------------------------------------


def profile_producer(bench: Bench, outdir: Path) -> dict[str, str]:
    """cProfile of the delay() loop and of one map(); returns the top functions as text."""
    report = {}
    queue = bench.queue("profile-producer")
    bench.app.conf.task_default_queue = queue
    try:
        jobs: dict[str, Callable[[], object]] = {
            "delay": lambda: [bench.tasks.noop.delay(i) for i in range(bench.n)],
            "map": lambda: bench.tasks.noop.map([(i,) for i in range(bench.n)], queue=queue),
        }
        for name, job in jobs.items():
            profiler = cProfile.Profile()
            profiler.runcall(job)
            bench.app.broker.purge(queue)
            profiler.dump_stats(outdir / f"producer-{name}.prof")
            own, cumulative = io.StringIO(), io.StringIO()
            pstats.Stats(profiler, stream=own).sort_stats("tottime").print_stats(12)
            pstats.Stats(profiler, stream=cumulative).sort_stats("cumulative").print_stats("conveyor/", 14)
            report[name] = "\n".join(
                [
                    _trim_pstats(own.getvalue(), bench.n, "top by own time"),
                    _trim_pstats(cumulative.getvalue(), 0, "conveyor functions by cumulative time"),
                ]
            )
    finally:
        bench.app.broker.purge(queue)
    return report


def _trim_pstats(text: str, n: int, title: str) -> str:
    """pstats output without its preamble; with ``n``, a first line with µs per task."""
    lines = [line for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), len(lines))
    summary = next((line.split() for line in lines if "function calls" in line), [])
    total = float(summary[-2]) if len(summary) > 2 and summary[-1] == "seconds" else 0.0
    head = f"  {total / n * 1e6:.1f} µs per task under cProfile; {title}:" if n and total else f"  {title}:"
    return "\n".join([head, *lines[start:]])


def profile_worker(bench: Bench, outdir: Path, *, rate: int) -> dict[str, Any]:
    """One drain (results stored) with the worker under ``py-spy record --subprocesses``."""
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        raise BenchError("--profile needs py-spy: pip install py-spy")
    raw = outdir / "worker-drain.txt"
    raw.unlink(missing_ok=True)
    wrapper = [
        pyspy,
        "record",
        "--subprocesses",
        "--nolineno",
        "--format",
        "raw",
        "--rate",
        str(rate),
        "-o",
        str(raw),
        "--idle",  # every thread, all the time: waiting shows up too
        "--",
    ]
    run = drain(bench, bench.tasks.noop, wrapper=wrapper, kill_when_empty=True)
    if not raw.exists():
        raise BenchError(f"py-spy wrote no profile to {raw}; see the worker log in {bench.workdir}")
    return {
        "raw": str(raw),
        "rate": rate,
        "drain_rate_under_pyspy": run.busy_rate,
        "cpu_ms_per_task": run.cpu_ms_per_task,
        "processes": summarize_pyspy(raw, rate=rate, n=bench.n, roles=run.pids),
    }


def roles(processes: dict[int, int], *, wrapped: bool) -> dict[int, str]:
    """pid -> role, from pid -> ppid of the worker's process group.

    The group leader is the worker, or py-spy when ``wrapped`` (the worker is its child).
    """
    leader = next((pid for pid, ppid in processes.items() if ppid not in processes), None)
    parent = leader
    if wrapped:
        parent = next((pid for pid, ppid in processes.items() if ppid == leader), None)
    names = {}
    for pid, ppid in processes.items():
        if pid == parent:
            names[pid] = "worker parent"
        elif ppid == parent:
            names[pid] = "prefork children"
        else:
            names[pid] = "py-spy" if pid == leader else "other"
    return names


# Leaf frames where a sampled thread is blocked rather than running (py-spy shows the
# Python function that called the blocking C function: flock, select, a lock, a socket).
# A contended lock is waited for in _wait_for_file while a thread of the lock's own
# blocks in flock (WriteLock._run): only the caller's wait is counted as lock wait.
LOCK_WAIT_LEAVES = ("WriteLock._lock_file ",)
LOCK_WAIT_FRAMES = ("WriteLock._wait_for_file ",)
BLOCKED_LEAVES = (
    "WriteLock._run ",
    "Condition.wait ",
    "Event.wait ",
    "_PollLikeSelector.select ",
    "SoloPool.poll ",
    "_Listener.wait ",
    "wait (multiprocessing/connection.py)",
    "Thread.join ",
    "Popen.wait ",
)


def _category(frames: list[str]) -> str:
    leaf = frames[-1] if frames else ""
    if any(f.startswith("_find_and_load ") for f in frames):
        return "start-up (imports)"
    if leaf.startswith(LOCK_WAIT_LEAVES) or any(f.startswith(LOCK_WAIT_FRAMES) for f in frames):
        return "waiting for the write lock (flock)"
    if leaf.startswith(BLOCKED_LEAVES):
        return "blocked (select/condition/socket)"
    return "running (CPU, or inside sqlite3)"


def summarize_pyspy(raw: Path, *, rate: int, n: int, roles: dict[int, str]) -> list[dict[str, Any]]:
    """Per process: µs per task by thread and state, and the top running functions.

    py-spy's raw lines are ``process P:"cmd";[process C:"cmd";]frame;...;frame COUNT``:
    a forked child's stack comes under its parent's process frame. With ``--idle``
    every thread is sampled all the time, so samples / rate is wall time per thread.
    """
    per_task = 1e6 / rate / n  # µs per task for one sample
    states: dict[int, Counter[tuple[str, str]]] = defaultdict(Counter)
    own: dict[int, Counter[str]] = defaultdict(Counter)
    total: dict[int, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack.startswith("process ") or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        pid = 0
        while frames and frames[0].startswith("process "):
            pid = int(frames.pop(0).split(":", 1)[0].removeprefix("process "))
        frames = [_short(f) for f in frames]
        category = _category(frames)
        states[pid][(_thread_of(frames), category)] += count
        if category.startswith("running"):
            own[pid][frames[-1] if frames else "<no python frame>"] += count
            for frame in set(frames):
                if "conveyor/" in frame:  # not runpy, click, multiprocessing boilerplate
                    total[pid][frame] += count
    return [
        {
            "pid": pid,
            "role": roles.get(pid, "unknown"),
            "us_per_task_by_thread_and_state": [
                (f"{thread}: {category}", c * per_task) for (thread, category), c in states[pid].most_common()
            ],
            "running_us_per_task": sum(own[pid].values()) * per_task,
            "top_own_us_per_task": [(name, c * per_task) for name, c in own[pid].most_common(15)],
            "top_total_us_per_task": [
                (name, c * per_task)
                for name, c in total[pid].most_common(40)
                if c < 0.99 * max(total[pid].values())  # not the frames every stack has
            ][:20],
        }
        for pid in sorted(states)
    ]


def _thread_of(frames: list[str]) -> str:
    """The thread a stack belongs to: its run() target, or "main"."""
    for i, frame in enumerate(frames[:-1]):
        if frame.startswith("Thread.run "):
            return frames[i + 1].split(" (")[0]
    return "main"


def _short(frame: str) -> str:
    """'func (path/to/conveyor/worker/x.py)' -> 'func (conveyor/worker/x.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("/site-packages/", "/lib/python3", str(REPO) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


# -- running it ----------------------------------------------------------------------------------


def median_of(repeat: int, run: Callable[[], float]) -> tuple[float, list[float]]:
    runs = [run() for _ in range(repeat)]
    return statistics.median(runs), runs


def median_drain(repeat: int, run: Callable[[], DrainRun]) -> tuple[DrainRun, list[DrainRun]]:
    """Each figure is the median over the runs on its own; the timeline is the median run's."""
    runs = [run() for _ in range(repeat)]
    middle = sorted(runs, key=lambda r: r.busy_rate)[len(runs) // 2]
    return (
        DrainRun(
            busy_rate=statistics.median(r.busy_rate for r in runs),
            wall_rate=statistics.median(r.wall_rate for r in runs),
            startup_s=statistics.median(r.startup_s for r in runs),
            busy_source=runs[0].busy_source,
            timeline=middle.timeline,
            cpu_ms_per_task={
                role: statistics.median(r.cpu_ms_per_task.get(role, 0.0) for r in runs)
                for role in middle.cpu_ms_per_task
            },
        ),
        runs,
    )


def drain_metrics(label: str, task: Any, d: DrainRun, runs: list[DrainRun]) -> list[Metric]:
    cpu = d.cpu_ms_per_task
    split = ", ".join(f"{role} {ms:.3f}" for role, ms in cpu.items())
    stored = "" if task.ignore_result else " and every result stored"
    return [
        Metric(
            f"drain, {label}: busy",
            d.busy_rate,
            "/s",
            DRAIN_TARGET,
            note=f"first start .. last finish ({d.busy_source})",
            runs=[r.busy_rate for r in runs],
        ),
        Metric(
            f"drain, {label}: wall",
            d.wall_rate,
            "/s",
            note=f"worker spawn .. queue empty{stored}",
            runs=[r.wall_rate for r in runs],
        ),
        Metric(
            f"drain, {label}: worker start-up",
            d.startup_s,
            "s",
            note="spawn .. first message leased",
            runs=[r.startup_s for r in runs],
        ),
        *(
            [
                Metric(
                    f"drain, {label}: result lag",
                    (d.timeline["results_seen"] - d.timeline["last_task_finished"]) * 1000,
                    "ms",
                    note="last task finished .. its result readable (+-20 ms polling)",
                    runs=[
                        (r.timeline["results_seen"] - r.timeline["last_task_finished"]) * 1000 for r in runs
                    ],
                )
            ]
            if "results_seen" in d.timeline
            else []
        ),
        Metric(
            f"drain, {label}: worker CPU per task",
            sum(cpu.values()),
            "ms",
            note=f"utime+stime: {split}",
            runs=[sum(r.cpu_ms_per_task.values()) for r in runs],
        ),
    ]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 300 samples is the 297th)."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def measure(bench: Bench, args: argparse.Namespace, out: list[Metric], extra: dict[str, Any]) -> None:
    rep = args.repeat
    if not args.skip_enqueue:
        value, runs = median_of(rep, lambda: enqueue_delay(bench))
        out.append(Metric("enqueue, delay() one by one", value, "/s", DELAY_TARGET, runs=runs))
        value, runs = median_of(rep, lambda: enqueue_map(bench))
        out.append(Metric("enqueue, map() one round trip", value, "/s", MAP_TARGET, runs=runs))
    if not args.skip_drain:
        variants: list[tuple[str, Any]] = [
            ("results stored", bench.tasks.noop),
            ("ignore_result", bench.tasks.noop_ignored),
        ]
        for label, task in variants:
            d, drain_runs = median_drain(rep, functools.partial(drain, bench, task))
            out.extend(drain_metrics(label, task, d, drain_runs))
            extra.setdefault("drain", {})[label] = {
                "timeline_s": d.timeline,
                "cpu_ms_per_task": d.cpu_ms_per_task,
            }
    if not args.skip_latency:
        samples = sorted(round_trips(bench, args.latency_count, args.warmup))
        out.append(
            Metric(
                "round trip p50",
                statistics.median(samples),
                "ms",
                P50_TARGET,
                note=f"{len(samples)} x add.delay().get()",
            )
        )
        out.append(Metric("round trip p99", percentile(samples, 99), "ms"))
        extra["round_trip_ms"] = {
            "mean": statistics.fmean(samples),
            "max": samples[-1],
            "p90": percentile(samples, 90),
            "samples": len(samples),
        }
    if not args.skip_idle:
        by_role = idle_cpu(bench, args.idle_seconds)
        split = ", ".join(f"{role} {pct:.2f}" for role, pct in sorted(by_role.items()))
        out.append(
            Metric(
                "idle CPU, worker + children",
                sum(by_role.values()),
                "%",
                IDLE_TARGET,
                note=f"of one core over {args.idle_seconds:g}s: {split}",
            )
        )
    if args.profile:
        outdir = Path(args.profile)
        outdir.mkdir(parents=True, exist_ok=True)
        extra["profile"] = {
            "producer": profile_producer(bench, outdir),
            "worker": profile_worker(bench, outdir, rate=args.profile_rate),
        }


def print_table(metrics: list[Metric], header: str) -> None:
    print(header)
    rows = [("metric", "value", "target", "", "how")]
    for m in metrics:
        status = "" if m.ok is None else ("ok" if m.ok else "MISSED")
        rows.append((m.name, m.shown(), m.target.text if m.target else "-", status, m.note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}".rstrip()
        )


def print_profile(profile: dict[str, Any], n: int) -> None:
    print(f"\nProfile, producer side (cProfile, N={n}):")
    for name, text in profile["producer"].items():
        print(f"- {name}():\n{text}")
    worker = profile["worker"]
    cpu = ", ".join(f"{role} {ms * 1000:.0f} µs" for role, ms in worker["cpu_ms_per_task"].items())
    print(
        f"\nProfile, worker drain of N={n} tasks (results stored) under py-spy --idle at {worker['rate']} Hz: "
        f"{worker['drain_rate_under_pyspy']:,.0f} tasks/s while sampled (slower than unprofiled).\n"
        f"CPU per task from /proc while draining: {cpu}.\n"
        "Wall µs per task of each thread from spawn to queue empty (then SIGKILL), "
        f"helper threads' idle time left out; raw: {worker['raw']}"
    )
    indent = "\n" + " " * 21
    for p in worker["processes"]:
        print(f"- pid {p['pid']} ({p['role']}), running {p['running_us_per_task']:.0f} µs/task:")
        for title, key in (
            ("thread/state", "us_per_task_by_thread_and_state"),
            ("running, own", "top_own_us_per_task"),
            ("running, total", "top_total_us_per_task"),
        ):
            rows = [
                f"{us:7.1f} µs  {name}"
                for name, us in p[key]
                if us >= 0.5 and (name.startswith("main:") or "blocked" not in name)
            ]
            print(f"    {title + ':':<16} " + indent.join(rows))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", help="broker URL (default: a fresh sqlite:///<tmpdir>/bench.sqlite3)")
    p.add_argument("-n", type=int, default=10_000, help="tasks per throughput run (default 10000)")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per throughput figure, median shown (default 3)"
    )
    p.add_argument("-c", "--concurrency", type=int, default=2, help="worker -c (default 2)")
    p.add_argument("--latency-count", type=int, default=300, help="measured round trips (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured round trips first (default 20)")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU window (default 10)")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds a phase may take once the worker is up (default 120; start-up gets 60 more)",
    )
    p.add_argument("--skip-enqueue", action="store_true")
    p.add_argument("--skip-drain", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-idle", action="store_true")
    p.add_argument("--profile", metavar="DIR", help="also profile producer (cProfile) and worker (py-spy)")
    p.add_argument("--profile-rate", type=int, default=150, help="py-spy samples/s (default 150)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (worker logs, db)")
    args = p.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.latency_count < 1 or args.concurrency < 1:
        p.error("-n, --repeat, --latency-count and --concurrency must be at least 1")
    if args.broker and args.broker.split(":", 1)[0].lower() == "memory":
        p.error("memory:// lives in one process: the worker subprocess cannot see it; use sqlite:///...")
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def load_tasks(url: str) -> ModuleType:
    os.environ["CONVEYOR_BROKER_URL"] = url
    for path in (str(REPO), str(HERE)):
        if path not in sys.path:
            sys.path.insert(0, path)
    return importlib.import_module("bench_tasks")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with workdir(args.keep) as tmp:
        url = args.broker or f"sqlite:///{tmp}/bench.sqlite3"
        tasks = load_tasks(url)
        env = dict(
            os.environ,
            CONVEYOR_BROKER_URL=url,
            PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), str(REPO), os.environ.get("PYTHONPATH")])),
        )
        bench = Bench(
            tasks=tasks, env=env, workdir=tmp, n=args.n, concurrency=args.concurrency, timeout_s=args.timeout
        )
        metrics: list[Metric] = []
        extra: dict[str, Any] = {}
        from conveyor.exceptions import ConveyorError

        try:
            tasks.app.broker.queue_stats()  # a bad URL or a broker that is down: one line, now
            measure(bench, args, metrics, extra)
        except (BenchError, ConveyorError, TimeoutError, OSError) as exc:
            print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        finally:
            from conveyor.brokers.base import mask_url

            shown_url = mask_url(url)
            tasks.app.close()
    if args.json:
        print(
            json.dumps(
                {
                    "broker": shown_url,
                    "n": args.n,
                    "repeat": args.repeat,
                    "concurrency": args.concurrency,
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "metrics": [{**asdict(m), "ok": m.ok} for m in metrics],
                    **extra,
                },
                indent=2,
            )
        )
    else:
        print_table(
            metrics,
            f"broker {shown_url}   N={args.n}   median of {args.repeat}   "
            f"worker -c {args.concurrency} --pool prefork   "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
        )
        if "round_trip_ms" in extra:
            rt = extra["round_trip_ms"]
            print(f"round trip: mean {rt['mean']:.2f} ms, p90 {rt['p90']:.2f} ms, max {rt['max']:.2f} ms")
        for label, detail in extra.get("drain", {}).items():
            steps = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in detail["timeline_s"].items())
            print(f"drain timeline, {label} (s after worker spawn): {steps}")
        if "profile" in extra:
            print_profile(extra["profile"], args.n)
    missed = [m.name for m in metrics if m.ok is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
