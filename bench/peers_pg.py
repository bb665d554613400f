"""The PostgreSQL group of bench/peers.py: Conveyor on PostgreSQL against Procrastinate.

    python3 bench/peers.py --group postgres            # N=10,000, 3 repeats
    python3 bench/peers.py --group postgres --quick    # N=2,000, 1 repeat

Systems: ``conveyor-postgres`` and ``procrastinate`` (the compared pair), and, for scale,
``conveyor-sqlite`` and ``conveyor-redis``. Each PostgreSQL system gets a fresh database
of its own on the machine's server (``--pg-url``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), created for the run and dropped after;
Procrastinate's schema is applied with its own ``schema --apply``. Everything else is
bench/peers.py's: the same no-op task calling ``common.mark_done()`` on one private Redis,
the same phases (enqueue one by one and in bulk, drain with two worker processes, RSS/PSS
of the workers, start to first task, round trip p50/p99), round by round.

Two more measurements, for the issue's idle-worker promises, with the workers started and
one task run:

- idle: over ``--idle-seconds`` (10) of nothing to do, the worker processes' CPU (user +
  system, all processes, % of one core) and the transactions their database committed
  (``pg_stat_database`` xact_commit + xact_rollback of the system's own database, read
  from another database so the reads do not count; PostgreSQL systems only);
- wake-up: ``--wakeups`` (20) sends to the idle workers, each after a pause; from just
  before the send to the task's ``mark_done`` time, p50 and max.

Rates are medians of ``--repeat`` runs. The table shows each system, then Procrastinate
divided by Conveyor on PostgreSQL as "x" (above 1.00x Conveyor is ahead).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peers
from peers import ROW, BenchError, Context, Outcome, Row, Runner

SYSTEMS = ["conveyor-postgres", "procrastinate", "conveyor-sqlite", "conveyor-redis"]
PAIR = ("conveyor-postgres", "procrastinate")  # the compared pair: Conveyor first
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
IDLE_SETTLE_S = 11.0


class SmallRow(Row):
    """A row whose values are small: two decimals (CPU %, transactions per second)."""

    def shown(self, value: float) -> str:
        return f"{value:.2f}"


EXTRA_ROWS = [
    SmallRow("idle_cpu", "idle workers, CPU", "% core", False),
    SmallRow("idle_tps", "idle workers, DB transactions", "/s", False),
    Row("wake_p50", "idle worker: send to task p50", "ms", False),
    Row("wake_max", "idle worker: send to task max", "ms", False),
]
ROW.update({row.key: row for row in EXTRA_ROWS})  # Runner.record() looks rows up there
ROWS = [row for row in peers.ROWS if row.key != "drain_wall"] + EXTRA_ROWS


# -- databases --------------------------------------------------------------------------------


def database_url(server_url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


@contextlib.contextmanager
def fresh_database(server_url: str, system: str) -> Iterator[str]:
    """A new database for one system's run, dropped (its sessions ended) afterwards."""
    import psycopg
    from psycopg import sql

    name = f"peers_{system.replace('-', '_')}_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def transactions(server_url: str, database: str) -> int:
    """Transactions ``database`` has committed or rolled back, read from ``server_url``'s."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (exited ones count nothing)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the runner -------------------------------------------------------------------------------


class PgRunner(Runner):
    """bench/peers.py's runner plus the idle and wake-up measurements."""

    def __init__(self, ctx: Context, system: str, peer: Any, *, database: str | None, args: Any) -> None:
        super().__init__(ctx, system, peer)
        self.database = database  # the system's own database, when it has one
        self.args = args

    def idle(self) -> dict[str, float]:
        redis = self.ctx.redis
        self.empty()

        def done() -> int:
            return int(redis.get("peers:done") or 0)

        def send_and_wait(count: int, timeout: float) -> None:
            self.peer.enqueue(1)
            deadline = time.monotonic() + timeout
            while done() < count:
                workers.check()
                if time.monotonic() > deadline:
                    raise BenchError(f"idle: task {count} not run within {timeout:g}s")
                time.sleep(0.0005)

        with self.workers("idle") as workers:
            send_and_wait(1, peers.START_TIMEOUT_S)  # the workers are up
            # Start-up settles, and PostgreSQL has flushed the statistics of sessions
            # that went idle (it does within 10 s): the window then counts only itself.
            time.sleep(IDLE_SETTLE_S)
            pids = [pid for proc in workers.procs for pid in peers.group_pids(proc.pid)]
            cpu0, tx0, t0 = cpu_seconds(pids), self._transactions(), time.monotonic()
            time.sleep(self.args.idle_seconds)
            cpu1, tx1, t1 = cpu_seconds(pids), self._transactions(), time.monotonic()
            samples = []
            for k in range(self.args.wakeups):
                time.sleep(0.3)  # idle again: blocked in its wait, not in a busy loop
                sent = time.time()
                send_and_wait(k + 2, 10.0)
                samples.append((float(redis.get("peers:last")) - sent) * 1000)
        self.empty()
        out = {
            "idle_cpu": 100 * (cpu1 - cpu0) / (t1 - t0),
            "wake_p50": statistics.median(samples),
            "wake_max": max(samples),
        }
        if self.database is not None:
            out["idle_tps"] = (tx1 - tx0) / (t1 - t0)
        return out

    def _transactions(self) -> int:
        if self.database is None:
            return 0
        return transactions(self.args.pg_url, self.database)


# -- systems ----------------------------------------------------------------------------------


def make_peer(system: str, ctx: Context, stack: contextlib.ExitStack, args: Any) -> PgRunner:
    if str(peers.PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(peers.PEERS_DIR))
    os.environ["PEERS_REDIS_URL"] = ctx.redis_url  # read by common.py when first imported
    database = None
    if system == "conveyor-postgres":
        from conveyor_peer import ConveyorPeer

        url = stack.enter_context(fresh_database(args.pg_url, system))
        database = url.rsplit("/", 1)[1]
        peer: Any = ConveyorPeer("Conveyor PostgreSQL", url)
        peer.app.broker._db.migrate()  # the schema made ahead, as `conveyor migrate` does
    elif system == "procrastinate":
        dsn = stack.enter_context(fresh_database(args.pg_url, system))
        database = dsn.rsplit("/", 1)[1]
        os.environ["PEERS_PROCRASTINATE_DSN"] = dsn  # read by procrastinate_peer when imported
        from procrastinate_peer import ProcrastinatePeer

        peer = ProcrastinatePeer(dsn)
        peer.apply_schema()
    else:
        peer = peers.make_peer(system, ctx.redis_url, ctx.workdir)
    stack.callback(peer.close)
    return PgRunner(ctx, system, peer, database=database, args=args)


# -- the table --------------------------------------------------------------------------------


def table(outcomes: list[Outcome]) -> str:
    by_system = {o.system: o for o in outcomes}
    pair = [by_system.get(s) for s in PAIR]
    header = ["", *(o.system for o in outcomes)]
    compare = all(pair)
    if compare:
        header.append("conveyor-postgres vs procrastinate")
    lines = [header]
    for row in ROWS:
        cells = [f"{row.title} ({row.unit})"]
        for o in outcomes:
            error = next(
                (e for k, e in o.errors.items() if k == row.key or (k, row.key) in peers.FILLS), None
            )
            if row.key in o.values:
                cells.append(row.shown(o.values[row.key]) + (" ERR" if error else ""))
            else:
                cells.append("ERR" if error else "-")
        if compare:
            ours, theirs = (o.values.get(row.key) if o else None for o in pair)
            cells.append(ratio(row, ours, theirs))
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
    out.append(
        "x = Conveyor on PostgreSQL against Procrastinate (rates: Conveyor/Procrastinate; times, sizes,"
    )
    out.append("CPU and transactions: Procrastinate/Conveyor); above 1.00x Conveyor is ahead.")
    for o in outcomes:
        for key, error in o.errors.items():
            out.append(f"{o.system} {key}: {error}")
    return "\n".join(out)


def ratio(row: Row, ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None:
        return "-"
    if row.higher_is_better:
        return f"{ours / theirs:.2f}x" if theirs > 0 else "-"
    if ours <= 0:
        return "ahead (0)" if theirs > 0 else "even (0)"
    return f"{theirs / ours:.2f}x"


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/peers.py --group postgres",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--group", choices=["postgres"], default="postgres")
    p.add_argument("-n", type=int, default=None, help="tasks per workload (default 10,000; --quick: 2,000)")
    p.add_argument(
        "--repeat", type=int, default=None, help="runs per rate, median shown (default 3; --quick: 1)"
    )
    p.add_argument("--quick", action="store_true", help="N=2,000 and 1 repeat")
    p.add_argument("--round-trips", type=int, default=300, help="sequential round trips (default 300)")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle window (default 10)")
    p.add_argument("--wakeups", type=int, default=20, help="sends to an idle worker (default 20)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"the server's URL (default {DEFAULT_PG_URL})")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for one drain (default 120)")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE ('-' for stdout)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the table")
    p.add_argument("--no-venv", action="store_true", help="run with this Python, not bench/.venv-peers")
    args = p.parse_args(argv)
    args.n = args.n or (2_000 if args.quick else 10_000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown or not chosen:
        p.error(f"unknown system(s): {', '.join(unknown)}" if unknown else "--systems names no system")
    if args.n < 2 or args.repeat < 1 or args.round_trips < 1 or args.wakeups < 1:
        p.error("-n must be at least 2, --repeat, --round-trips and --wakeups at least 1")
    args.systems = chosen
    return args


def measure_all(args: argparse.Namespace, ctx: Context) -> list[Outcome]:
    runners: list[PgRunner] = []
    outcomes: list[Outcome] = []
    with contextlib.ExitStack() as stack:
        for system in args.systems:
            try:
                runners.append(make_peer(system, ctx, stack, args))
            except Exception as exc:  # its column says why; the others still run
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                outcomes.append(Outcome(system, errors={"enqueue": error}))
                print(f"  [{system}] cannot run: {error}", file=sys.stderr, flush=True)
        for i in range(args.repeat):
            for runner in runners:
                runner.log(f"round {i + 1} of {args.repeat}")
                runner.one_round()
        for runner in runners:
            runner.log("round trips, idle")
            runner.record("rt_p50", runner.round_trip)
            runner.record("idle_cpu", runner.idle)
        outcomes += [runner.out for runner in runners]
    return sorted(outcomes, key=lambda o: args.systems.index(o.system))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.no_venv and not peers.in_peers_venv():
        python = peers.ensure_venv()
        os.execv(str(python), [str(python), str(Path(peers.__file__).resolve()), *argv])
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-peers-pg-"))
    started = time.time()
    revision = peers.conveyor_revision()
    peers.compile_sources(peers.REPO / "conveyor", peers.PEERS_DIR)
    with peers.private_redis(workdir) as (url, client):
        if not args.quiet:
            print(f"peers (postgres): N={args.n:,} repeat={args.repeat}, private Redis {url}, "
                  f"PostgreSQL {args.pg_url}, work dir {workdir}", file=sys.stderr, flush=True)  # fmt: skip
        ctx = Context(  # memory_n=0: no "Redis memory per message" phase in this group
            url, client, workdir, args.n, args.repeat, args.round_trips, args.timeout, not args.quiet, 0
        )
        outcomes = measure_all(args, ctx)
    server = server_version(args.pg_url)
    print()
    print(f"Conveyor on PostgreSQL vs Procrastinate, N={args.n:,} no-op tasks, 2 worker processes, "
          f"median of {args.repeat}, {args.round_trips} round trips; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {os.cpu_count()} CPUs, "
          f"PostgreSQL {server}, a fresh database per system")  # fmt: skip
    finished = peers.conveyor_revision()
    changed = "" if finished == revision else f" -> {finished} (CHANGED DURING THE RUN)"
    print(f"Conveyor from {peers.REPO} at {revision}{changed}")
    print(table(outcomes))
    print()
    for o in outcomes:
        if o.notes:
            print(f"{o.system}: {o.notes}; bulk: {o.bulk_api or 'none'}")
    if args.json:
        import json

        report = {
            "started_at": started,
            "argv": argv,
            "n": args.n,
            "repeat": args.repeat,
            "postgresql": server,
            "versions": peers.versions() | {"procrastinate": package_version("procrastinate")},
            "conveyor_revision": f"{revision}{changed}",
            "systems": [o.__dict__ for o in outcomes],
        }
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.keep or any(o.errors for o in outcomes):
        print(f"work directory kept (worker logs): {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def server_version(server_url: str) -> str:
    import psycopg

    with psycopg.connect(server_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def package_version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
