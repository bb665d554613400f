"""Chaos run and memory soak: do the delivery guarantees hold while workers and Redis die?

Chaos, per broker (a fresh SQLite file; a private, durable redis-server on a free port):

1. ``--tasks`` (5,000) ``acks_late`` tasks, each sleeping ``--task-ms`` (10) and then
   appending ``<n> <process group>`` to a runs file with ``O_APPEND``, published with
   ``--garbage`` (1,000) raw bodies interleaved: invalid bytes, JSON that is not a
   message, and a well-formed message for a task no worker knows. The garbage goes in
   through the broker's raw path (an INSERT into the SQLite messages table,
   ``RedisBroker.publish_raw``), as the contract tests' bad payloads do.
2. Two real ``conveyor worker -c 2 --pool prefork`` processes, each in its own process
   group. Every ``--kill-every`` seconds (2) one of them, in turn, is SIGKILLed with its
   whole group and a new one is started in its place, until every task has run.
3. On Redis, the server is SIGKILLed and started again on the same port
   (``--appendonly yes --appendfsync always``: nothing it acknowledged is lost) when a
   third and two thirds of the tasks have run (``--redis-restarts``, 2).
4. When every task has run and the queue is empty, it reads each task's result, the
   runs file, and the dead-letter queue through the broker's admin API.

The table: tasks lost (no run, or no SUCCESS result: must be 0), tasks that ran more
than once and the most runs of one task, against the bound of what the killed workers
could hold (prefetch x concurrency per kill, both workers per Redis restart), garbage
dead-lettered (must be all of it), SIGKILLs and how many replacements came up, wall time.

Soak, per broker: ``--soak`` (200,000) tasks through one worker (``-c 2`` prefork, no
kills); the resident memory (``VmRSS`` in ``/proc/<pid>/status``) of every process in
its group, sampled every second: start, peak, end, growth, and growth over the second
half of the run (warm-up excluded).

Run from the repository root, with Conveyor installed (``pip install -e '.[redis]'``):

    python bench/chaos.py --broker both              # chaos, then the soak; minutes
    python bench/chaos.py --broker sqlite --soak 0   # chaos only
    python bench/chaos.py --tasks 500 --garbage 100 --soak 20000   # a quick look

Exit status 1 when a task was lost, when the dead-letter queue does not hold exactly
the garbage, or when a phase did not finish within ``--timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from chaos_tasks import UNKNOWN, make_app  # noqa: E402

from conveyor.exceptions import ConveyorError  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

QUEUE = "default"
READY_TIMEOUT_S = 60.0


# -- the broker under test ---------------------------------------------------------------------


@dataclass
class Target:
    """One broker: its URL, how to put raw bytes on its queue, and (Redis) its server."""

    kind: str
    url: str
    directory: Path
    server: RedisServer | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, kind: str, directory: Path, *, durable: bool) -> Iterator[Target]:
        directory.mkdir(parents=True, exist_ok=True)
        if kind == "sqlite":
            yield cls(kind, f"sqlite:///{directory / 'broker.sqlite3'}", directory)
            return
        server = RedisServer(directory, durable=durable)
        server.start()
        try:
            yield cls(kind, server.url, directory, server)
        finally:
            server.stop()

    def inject(self, app: Any, bodies: Sequence[bytes]) -> None:
        """Queue bodies as they are, bypassing Message.encode(), as a corrupt producer would."""
        if self.server is not None:
            for body in bodies:
                app.broker.publish_raw(QUEUE, body)
            return
        from conveyor.brokers.sqlite import MESSAGES

        app.broker.queue_stats()  # creates the schema
        with contextlib.closing(sqlite3.connect(self.directory / "broker.sqlite3", timeout=30)) as conn:
            with conn:
                conn.executemany(
                    f"INSERT INTO {MESSAGES} (queue, priority, attempts, body) VALUES (?, 0, 0, ?)",
                    [(QUEUE, body) for body in bodies],
                )

    def restart(self, down_s: float) -> None:
        assert self.server is not None
        self.server.stop()  # SIGKILL: a crash, not a shutdown
        time.sleep(down_s)
        self.server.start(timeout=30)


def garbage_bodies(app: Any, count: int) -> dict[bytes, str]:
    """``count`` distinct bodies no worker can run, each with its kind."""
    kinds = ("invalid bytes", "JSON, not a message", "unknown task")
    bodies: dict[bytes, str] = {}
    for i in range(count):
        kind = kinds[i % 3]
        if kind == "invalid bytes":
            body = b"\xff\xfe\x00 garbage %d \x80" % i
        elif kind == "JSON, not a message":
            body = b'{"hello": "world", "n": %d}' % i
        else:
            body = app.build_message(UNKNOWN, [i]).encode()
        bodies[body] = kind
    return bodies


# -- workers -----------------------------------------------------------------------------------


@dataclass
class Worker:
    """One ``conveyor worker`` process, the leader of its own process group."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls,
        env: dict[str, str],
        workdir: Path,
        name: str,
        concurrency: int,
        prefetch: int,
        level: str = "info",
    ) -> Worker:
        log_path = workdir / f"worker-{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor.cli.main", "-A", "chaos_tasks", "worker",
                 "-c", str(concurrency), "--pool", "prefork", "--prefetch-multiplier", str(prefetch),
                 "-l", level, "-n", f"{name}@chaos"],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: killpg reaches the prefork children too
            )  # fmt: skip
        return cls(proc, log_path)

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def log(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def ready(self) -> bool:
        return b" ready." in self.log()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log().decode(errors="replace")[-3000:]
                raise BenchError(f"worker {self.log_path.name} did not start:\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class BenchError(Exception):
    """A phase could not run (a worker that never started, a phase past its timeout)."""


def worker_env(url: str, runs: Path, visibility_s: float) -> dict[str, str]:
    env = dict(
        os.environ,
        CONVEYOR_BROKER_URL=url,
        CHAOS_RUNS=str(runs),
        CHAOS_VISIBILITY=str(visibility_s),
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.pop("CONVEYOR_RESULT_BACKEND", None)
    return env


class RunLog:
    """The runs file, read as it grows: runs per task and per worker process group."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.per_task: Counter[int] = Counter()
        self.per_group: Counter[int] = Counter()
        self.lines = 0
        self._offset = 0
        self._partial = b""

    def poll(self) -> int:
        """Read what was appended; returns how many distinct tasks have run."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            task, group = line.split()
            self.per_task[int(task)] += 1
            self.per_group[int(group)] += 1
        self.lines += len(complete)
        return len(self.per_task)


def settled(app: Any) -> bool:
    """Nothing ready, leased or delayed: every message was acked or dead-lettered."""
    try:
        stats = app.broker.queue_stats([QUEUE])
    except ConveyorError:  # Redis is restarting; ask again
        return False
    return all(s.ready == 0 and s.in_flight == 0 and s.delayed == 0 for s in stats)


# -- chaos -------------------------------------------------------------------------------------


@dataclass
class ChaosReport:
    broker: str
    tasks: int
    garbage: int
    lost: int = 0
    no_result: int = 0
    ran_twice: int = 0
    max_runs: int = 0
    bound: int = 0
    dead_garbage: int = 0  # distinct garbage bodies found in the dead-letter queue
    dead_total: int = 0  # every entry there: a real task or a body twice would show here
    dead_by_kind: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    restarts_ready: int = 0
    restarts_ran_tasks: int = 0
    unexpected_exits: int = 0
    redis_restarts: int = 0
    tracebacks: int = 0
    wall_s: float = 0.0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.lost == 0 and self.dead_garbage == self.dead_total == self.garbage


@dataclass
class ChaosOptions:
    tasks: int = 5000
    garbage: int = 1000
    kill_every_s: float = 2.0
    max_kills: int | None = None
    task_s: float = 0.01
    visibility_s: float = 5.0
    redis_restarts: int = 2
    redis_down_s: float = 1.0
    concurrency: int = 2
    prefetch: int = 4
    timeout_s: float = 600.0


class Chaos:
    """One chaos run on one broker; ``run()`` returns its report."""

    def __init__(self, target: Target, workdir: Path, options: ChaosOptions) -> None:
        self.target = target
        self.workdir = workdir
        self.o = options
        self.runs = RunLog(workdir / "runs.log")
        self.env = worker_env(target.url, self.runs.path, options.visibility_s)
        self.app, self.record, _ = make_app(target.url)
        self.workers: list[Worker] = []
        self.replacements: list[Worker] = []
        self.spawned = 0
        self.report = ChaosReport(target.kind, options.tasks, options.garbage)

    def spawn(self, slot: int) -> Worker:
        self.spawned += 1
        return Worker.start(
            self.env, self.workdir, f"w{slot}-{self.spawned}", self.o.concurrency, self.o.prefetch
        )

    def publish(self) -> tuple[list[str], dict[bytes, str]]:
        """The tasks in ten slices, each followed by a tenth of the garbage."""
        garbage = garbage_bodies(self.app, self.o.garbage)
        bodies = list(garbage)
        ids: list[str] = []
        slices = 10
        for k in range(slices):
            numbers = range(k * self.o.tasks // slices, (k + 1) * self.o.tasks // slices)
            ids += [r.id for r in self.record.map([(n, self.o.task_s) for n in numbers])]
            self.target.inject(self.app, bodies[k * len(bodies) // slices : (k + 1) * len(bodies) // slices])
        return ids, garbage

    def run(self) -> ChaosReport:
        ids, garbage = self.publish()
        started = time.monotonic()
        try:
            self.workers = [self.spawn(0), self.spawn(1)]
            for worker in self.workers:
                worker.wait_ready()
            self.loop(started)
            self.report.wall_s = time.monotonic() - started
            for worker in self.workers:  # the last replacements must have come up too
                worker.wait_ready()
        finally:
            for worker in self.workers:
                worker.kill()
        self.tally(ids, garbage)
        return self.report

    def loop(self, started: float) -> None:
        o, report = self.o, self.report
        next_kill = time.monotonic() + o.kill_every_s
        restarts = o.redis_restarts if self.target.server is not None else 0
        while True:
            done = self.runs.poll()
            # With max_kills (the suite's short run) every kill happens even when the tasks
            # finish first, so the run always had the chaos it asked for.
            kills_left = done < o.tasks if o.max_kills is None else report.kills < o.max_kills
            if kills_left and time.monotonic() >= next_kill:
                self.kill_one()
                next_kill += o.kill_every_s
            if report.redis_restarts < restarts and done >= o.tasks * (report.redis_restarts + 1) / (
                restarts + 1
            ):
                self.target.restart(o.redis_down_s)
                report.redis_restarts += 1
            if done >= o.tasks and not kills_left and report.redis_restarts == restarts and settled(self.app):
                return
            if time.monotonic() > started + o.timeout_s:
                report.timed_out = True
                return
            for slot, worker in enumerate(self.workers):
                if worker.proc.poll() is not None:  # died without our SIGKILL: a defect
                    report.unexpected_exits += 1
                    self.workers[slot] = self.spawn(slot)
            time.sleep(0.05)

    def kill_one(self) -> None:
        """SIGKILL one worker's process group, in turn, and start a new worker in its place."""
        slot = self.report.kills % len(self.workers)
        self.workers[slot].kill()
        self.workers[slot] = self.spawn(slot)
        self.replacements.append(self.workers[slot])
        self.report.kills += 1

    def tally(self, ids: list[str], garbage: dict[bytes, str]) -> None:
        report, o = self.report, self.o
        self.runs.poll()
        records: dict[str, Any] = {}
        for i in range(0, len(ids), 500):
            records.update(self.app.backend.get_many(ids[i : i + 500]))
        never_ran = [n for n in range(o.tasks) if self.runs.per_task[n] == 0]
        no_success = {
            n for n, task_id in enumerate(ids) if getattr(records.get(task_id), "state", None) != "SUCCESS"
        }
        report.no_result = len(no_success)
        report.lost = len(set(never_ran) | no_success)
        report.ran_twice = sum(1 for c in self.runs.per_task.values() if c > 1)
        report.max_runs = max(self.runs.per_task.values(), default=0)
        # A killed worker can have run, unacknowledged, every message its processes held;
        # while Redis is away, both workers' leases may run out.
        report.bound = o.concurrency * o.prefetch * (report.kills + len(self.workers) * report.redis_restarts)
        found: set[bytes] = set()
        while page := self.app.broker.dead_letters(QUEUE, limit=500, offset=report.dead_total):
            found.update(entry.body for entry in page)
            report.dead_total += len(page)
        report.dead_by_kind = Counter(garbage[body] for body in found if body in garbage)
        report.dead_garbage = sum(report.dead_by_kind.values())
        report.restarts_ready = sum(1 for w in self.replacements if w.ready())
        report.restarts_ran_tasks = sum(1 for w in self.replacements if self.runs.per_group[w.pgid])
        logs = [p.read_bytes() for p in self.workdir.glob("worker-*.log")]
        report.tracebacks = sum(log.count(b"Traceback") for log in logs)
        self.app.close()


def run_chaos(kind: str, workdir: Path, options: ChaosOptions) -> ChaosReport:
    """The chaos run on a fresh ``kind`` broker ("sqlite" or "redis") in ``workdir``."""
    with Target.open(kind, workdir / "broker", durable=True) as target:
        return Chaos(target, workdir, options).run()


# -- soak --------------------------------------------------------------------------------------


def group_rss_kib(pgid: int) -> dict[int, tuple[int, int]]:
    """``{pid: (ppid, VmRSS in KiB)}`` of every live process in group ``pgid``."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            status = Path(f"/proc/{entry.name}/status").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        ppid, pgrp = (int(x) for x in stat.rsplit(")", 1)[1].split()[1:3])
        if pgrp != pgid:
            continue
        rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), None)
        if rss is not None:  # a zombie has no VmRSS
            found[int(entry.name)] = (ppid, int(rss))
    return found


@dataclass
class ProcessMemory:
    pid: int
    role: str
    samples: list[tuple[int, int]] = field(default_factory=list)  # (tasks done, KiB)

    def at_half(self, n: int) -> int:
        return next((kib for done, kib in self.samples if done >= n // 2), self.samples[-1][1])


@dataclass
class SoakReport:
    broker: str
    n: int
    ran: int = 0
    wall_s: float = 0.0
    seconds_sampled: int = 0
    processes: list[ProcessMemory] = field(default_factory=list)
    done_at: list[int] = field(default_factory=list)  # tasks run, at each sample
    disk_peak: int = 0  # bytes: the broker's files (SQLite: database, WAL, wal-index)
    wal_peak: int = 0  # bytes: SQLite's -wal file alone
    timed_out: bool = False

    def rate(self, part: slice) -> float:
        """Tasks per second over the samples in ``part``."""
        seen = self.done_at[part]
        return (seen[-1] - seen[0]) / (len(seen) - 1) if len(seen) > 1 else 0.0

    def sample(self, pgid: int, done: int, store: Path) -> None:
        for pid, (ppid, kib) in group_rss_kib(pgid).items():
            role = "supervisor" if pid == pgid else "child" if ppid == pgid else "other"
            found = next((m for m in self.processes if m.pid == pid), None)
            if found is None:
                found = ProcessMemory(pid, role)
                self.processes.append(found)
            found.samples.append((done, kib))
        self.done_at.append(done)
        sizes = {f.name: f.stat().st_size for f in store.iterdir() if f.is_file()}
        self.disk_peak = max(self.disk_peak, sum(sizes.values()))
        self.wal_peak = max(self.wal_peak, sizes.get("broker.sqlite3-wal", 0))
        self.seconds_sampled += 1


def run_soak(kind: str, workdir: Path, n: int, timeout_s: float) -> SoakReport:
    """``n`` tasks through one prefork worker, its processes' RSS sampled every second."""
    report = SoakReport(kind, n)
    with Target.open(kind, workdir / "broker", durable=False) as target:
        runs = RunLog(workdir / "runs.log")
        app, _, soak = make_app(target.url)
        for i in range(0, n, 10_000):
            soak.map([(k,) for k in range(i, min(n, i + 10_000))])
        env = worker_env(target.url, runs.path, 30.0)
        # At warning level (no line per task, as in production) there is no banner:
        # the first run says the worker is up.
        worker = Worker.start(env, workdir, "soak", 2, 4, level="warning")
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while runs.poll() == 0:
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(
                        f"soak worker did not start:\n{worker.log().decode(errors='replace')[-3000:]}"
                    )
                time.sleep(0.02)
            started = time.monotonic()
            tick = started
            while True:
                done = runs.poll()
                report.sample(worker.pgid, done, target.directory)
                if done >= n and settled(app):
                    break
                if worker.proc.poll() is not None:
                    raise BenchError(f"soak worker exited:\n{worker.log().decode(errors='replace')[-3000:]}")
                if time.monotonic() - started > timeout_s:
                    report.timed_out = True
                    break
                tick += 1.0
                time.sleep(max(0.0, tick - time.monotonic()))
            report.wall_s = time.monotonic() - started
        finally:
            worker.kill()
            app.close()
        report.ran = runs.lines
        report.processes.sort(key=lambda m: (m.role != "supervisor", m.pid))
    return report


# -- output ------------------------------------------------------------------------------------


def chaos_table(reports: list[ChaosReport], o: ChaosOptions) -> str:
    def row(label: str, cells: list[str]) -> str:
        return f"{label:<34}" + "".join(f"{c:>22}" for c in cells)

    kinds = ("invalid bytes", "JSON, not a message", "unknown task")
    lines = [
        f"chaos: {o.tasks:,} acks_late tasks ({o.task_s * 1000:g} ms each) + {o.garbage:,} garbage; "
        f"2 workers -c {o.concurrency} prefork, prefetch {o.prefetch}, visibility {o.visibility_s:g} s; "
        f"one SIGKILLed (process group) and restarted every {o.kill_every_s:g} s",
        row("", [r.broker for r in reports]),
        row("tasks lost (no run / no SUCCESS)", [f"{r.lost:,}" for r in reports]),
        row("tasks that ran twice or more", [f"{r.ran_twice:,} (bound {r.bound:,})" for r in reports]),
        row("max runs of one task", [str(r.max_runs) for r in reports]),
        row("garbage dead-lettered", [f"{r.dead_garbage:,}/{r.garbage:,}" for r in reports]),
        *(row(f"  {k}", [f"{r.dead_by_kind[k]:,}" for r in reports]) for k in kinds),
        row("dead-letter entries in all", [f"{r.dead_total:,}" for r in reports]),
        row("worker SIGKILLs", [str(r.kills) for r in reports]),
        row("restarts survived (came up ready)", [f"{r.restarts_ready}/{r.kills}" for r in reports]),
        row("  ...and then ran tasks", [f"{r.restarts_ran_tasks}/{r.kills}" for r in reports]),
        row("workers that died unasked", [str(r.unexpected_exits) for r in reports]),
        row(
            "Redis restarts (SIGKILL + start)",
            [str(r.redis_restarts) if r.broker == "redis" else "-" for r in reports],
        ),
        row("tracebacks in worker logs", [str(r.tracebacks) for r in reports]),
        row("wall time", [f"{r.wall_s:.1f} s" + (" (TIMED OUT)" if r.timed_out else "") for r in reports]),
        row("verdict", ["ok" if r.ok else "FAILED" for r in reports]),
    ]
    return "\n".join(lines)


def soak_table(reports: list[SoakReport]) -> str:
    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f} MiB"

    def signed(kib: int) -> str:
        return f"{kib / 1024:+.1f} MiB"

    header = f"{'broker':<8}{'process':<18}{'start':>11}{'peak':>11}{'end':>11}{'growth':>11}{'2nd half':>11}"
    lines = ["soak: one worker -c 2 prefork; VmRSS of each of its processes, sampled every second", header]
    for r in reports:
        for m in r.processes:
            start, end = m.samples[0][1], m.samples[-1][1]
            peak = max(kib for _, kib in m.samples)
            lines.append(
                f"{r.broker:<8}{m.role + ' ' + str(m.pid):<18}{mib(start):>11}{mib(peak):>11}{mib(end):>11}"
                f"{signed(end - start):>11}{signed(end - m.at_half(r.n)):>11}"
            )
        rate = r.ran / r.wall_s if r.wall_s else 0.0
        tenth = max(2, len(r.done_at) // 10)
        lines.append(
            f"{r.broker:<8}{r.ran:,}/{r.n:,} tasks ran in {r.wall_s:.1f} s ({rate:,.0f}/s; first tenth "
            f"{r.rate(slice(0, tenth)):,.0f}/s, last tenth {r.rate(slice(-tenth, None)):,.0f}/s), "
            f"{r.seconds_sampled} samples" + (" (TIMED OUT)" if r.timed_out else "")
        )
        if r.broker == "sqlite":
            wal = f" (WAL {r.wal_peak / 2**20:,.0f} MiB)" if r.wal_peak else ""
            lines.append(f"{'':<8}broker files on disk, peak: {r.disk_peak / 2**20:,.0f} MiB{wal}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--broker", choices=("sqlite", "redis", "both"), default="both")
    p.add_argument("--tasks", type=int, default=5000, help="acks_late tasks in the chaos run (5,000)")
    p.add_argument("--garbage", type=int, default=1000, help="raw garbage messages beside them (1,000)")
    p.add_argument("--kill-every", type=float, default=2.0, help="seconds between SIGKILLs (2)")
    p.add_argument("--soak", type=int, default=200_000, help="tasks in the soak; 0 skips it (200,000)")
    p.add_argument("--task-ms", type=float, default=10.0, help="each chaos task sleeps this long (10)")
    p.add_argument("--visibility", type=float, default=5.0, help="broker_visibility_timeout, s (5)")
    p.add_argument("--redis-restarts", type=int, default=2, help="Redis restarts mid-run (2)")
    p.add_argument("--redis-down", type=float, default=1.0, help="seconds Redis stays down (1)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on a phase after this (900 s)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, runs files)")
    args = p.parse_args(argv)
    if args.tasks < 1 or args.garbage < 0 or args.kill_every <= 0 or args.soak < 0:
        p.error("--tasks must be at least 1, --kill-every positive, --garbage and --soak not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = ["sqlite", "redis"] if args.broker == "both" else [args.broker]
    options = ChaosOptions(
        tasks=args.tasks,
        garbage=args.garbage,
        kill_every_s=args.kill_every,
        task_s=args.task_ms / 1000,
        visibility_s=args.visibility,
        redis_restarts=args.redis_restarts,
        redis_down_s=args.redis_down,
        timeout_s=args.timeout,
    )
    root = Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    try:
        chaos = [run_chaos(kind, root / f"chaos-{kind}", options) for kind in kinds]
        print(chaos_table(chaos, options), flush=True)
        if args.soak:
            soaks = [run_soak(kind, root / f"soak-{kind}", args.soak, args.timeout) for kind in kinds]
            print()
            print(soak_table(soaks))
    except (BenchError, ConveyorError, OSError) as exc:
        print(f"chaos run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    failed = [r.broker for r in chaos if not r.ok]
    if args.soak and any(s.timed_out for s in soaks):
        failed.append("soak")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
