"""Inspect and control workers over the broker: ``app.control``.

A command is one entry in log "control"; every worker's control thread waits on
that log with a blocking ``log_read`` (no polling loop) and, when the command is
for it and asks for a reply, appends one entry to log "replies" carrying the
request id. The caller reads "replies" from the id it saw before sending, until
the timeout or until every worker it expects has answered (the destinations it
named, else the workers whose heartbeats say they are online), so a ``ping`` of
two live workers returns as soon as both answered rather than after the timeout.

Revokes are also written to kv "revoked" (with a TTL), which a starting worker
loads: a task revoked while no worker was up is still dropped when one starts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from conveyor.exceptions import BrokerError
from conveyor.monitor import CONTROL_STREAM, REPLIES_STREAM, REVOKED_NAMESPACE

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.pools import Job

log = logging.getLogger("conveyor.worker")

CONTROL_MAXLEN = 1000
REPLIES_MAXLEN = 10_000
REVOKE_TTL_S = 3 * 3600.0  # as long as Celery remembers revokes
COMMAND_MAX_AGE_S = 60.0  # a command older than this when read is stale (a worker that was stuck)
TERMINATE_GRACE_S = 1.0  # revoke(terminate=True): interrupt, then SIGKILL after this

COMMANDS = (
    "ping",
    "registered",
    "active",
    "reserved",
    "scheduled",
    "stats",
    "revoke",
    "rate_limit",
    "shutdown",
    "add_consumer",
    "cancel_consumer",
    "pool_grow",
    "pool_shrink",
)


class ControlError(Exception):
    """A worker could not carry out a command (the reply carries the reason)."""


# --------------------------------------------------------------------------- client
class Control:
    """``app.control``: send commands to workers and gather their replies."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def inspect(self, timeout: float = 1.0, destination: Sequence[str] | str | None = None) -> Inspect:
        return Inspect(self, timeout=timeout, destination=_names(destination))

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        destination: Sequence[str] | str | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> dict[str, Any]:
        """Send ``command`` to every worker (or the named ones); with ``reply``, gather
        ``{worker name: payload}`` for up to ``timeout`` seconds. A worker that failed
        to carry out the command answers ``{"error": "..."}``."""
        if command not in COMMANDS:
            raise ValueError(f"unknown control command {command!r}: use one of {', '.join(COMMANDS)}")
        if timeout < 0:
            raise ValueError(f"timeout must be zero or more seconds, got {timeout}")
        names = _names(destination)
        broker = self.app.broker
        request_id = uuid.uuid4().hex
        after = broker.log_tail(REPLIES_STREAM) if reply else "0"
        body = {
            "id": request_id,
            "command": command,
            "arguments": arguments or {},
            "destination": names,
            "reply": reply,
            "ts": time.time(),
        }
        broker.log_append(CONTROL_STREAM, [orjson.dumps(body)], maxlen=CONTROL_MAXLEN)
        if not reply:
            return {}
        return self._gather(request_id, after, names, timeout)

    def _gather(self, request_id: str, after: str, names: list[str] | None, timeout: float) -> dict[str, Any]:
        from conveyor.monitor.workers import list_workers

        expected = set(names) if names else {w.name for w in list_workers(self.app) if w.online}
        replies: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        broker = self.app.broker
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            entries = broker.log_read(REPLIES_STREAM, after=after, limit=1000, timeout_s=remaining)
            for entry_id, raw in entries:
                after = entry_id
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(data, dict) or data.get("request") != request_id:
                    continue
                worker = str(data.get("worker"))
                replies[worker] = {"error": data["error"]} if "error" in data else data.get("ok")
            if expected and expected <= set(replies):
                break
        return replies

    # -- commands --------------------------------------------------------------------
    def ping(self, timeout: float = 1.0, destination: Sequence[str] | str | None = None) -> dict[str, Any]:
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout)

    def revoke(
        self,
        task_id: str | Sequence[str],
        terminate: bool = False,
        *,
        destination: Sequence[str] | str | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> dict[str, Any]:
        """Never run these tasks; with ``terminate``, also stop them where they run now.

        Remembered by every worker (and in the broker for ``REVOKE_TTL_S``, so a
        worker started later drops them too); a revoked task's result is REVOKED.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not ids or not all(isinstance(i, str) and i for i in ids):
            raise ValueError("revoke() needs one or more task ids")
        remember_revoked(self.app, ids, terminate=terminate)
        return self.broadcast(
            "revoke",
            {"ids": ids, "terminate": bool(terminate)},
            destination=destination,
            reply=reply,
            timeout=timeout,
        )

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        *,
        destination: Sequence[str] | str | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> dict[str, Any]:
        """Change a task's rate limit ("5/s", "10/m", a number per second, None = off)
        on running workers, until they restart."""
        from conveyor.retry import parse_rate

        parse_rate(rate_limit)  # a bad rate is the caller's error, here, not N workers'
        return self.broadcast(
            "rate_limit",
            {"task": task_name, "rate": rate_limit},
            destination=destination,
            reply=reply,
            timeout=timeout,
        )

    def shutdown(
        self, *, destination: Sequence[str] | str | None = None, reply: bool = False, timeout: float = 1.0
    ) -> dict[str, Any]:
        """Warm shutdown: workers stop taking tasks and finish the running ones."""
        return self.broadcast("shutdown", destination=destination, reply=reply, timeout=timeout)

    def add_consumer(
        self,
        queue: str,
        *,
        destination: Sequence[str] | str | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> dict[str, Any]:
        """Running workers also consume ``queue`` (every prefork child), until they restart."""
        return self._queue_command("add_consumer", queue, destination, reply, timeout)

    def cancel_consumer(
        self,
        queue: str,
        *,
        destination: Sequence[str] | str | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> dict[str, Any]:
        """Running workers stop consuming ``queue``: what they prefetched from it runs."""
        return self._queue_command("cancel_consumer", queue, destination, reply, timeout)

    def _queue_command(
        self, command: str, queue: str, destination: Sequence[str] | str | None, reply: bool, timeout: float
    ) -> dict[str, Any]:
        if not str(queue).strip():
            raise ValueError("a queue name is required")
        return self.broadcast(
            command, {"queue": str(queue).strip()}, destination=destination, reply=reply, timeout=timeout
        )

    def pool_grow(
        self,
        n: int = 1,
        *,
        destination: Sequence[str] | str | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> dict[str, Any]:
        """Start ``n`` more child processes in running prefork workers."""
        return self._pool_command("pool_grow", n, destination, reply, timeout)

    def pool_shrink(
        self,
        n: int = 1,
        *,
        destination: Sequence[str] | str | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> dict[str, Any]:
        """Stop ``n`` child processes of running prefork workers (each finishes its
        running task and gives back what it prefetched); at least one is kept."""
        return self._pool_command("pool_shrink", n, destination, reply, timeout)

    def _pool_command(
        self, command: str, n: int, destination: Sequence[str] | str | None, reply: bool, timeout: float
    ) -> dict[str, Any]:
        if int(n) < 1:
            raise ValueError(f"{command} takes a number of processes, 1 or more, got {n}")
        return self.broadcast(command, {"n": int(n)}, destination=destination, reply=reply, timeout=timeout)


class Inspect:
    """``app.control.inspect()``: each method returns ``{worker name: payload}``."""

    def __init__(self, control: Control, *, timeout: float, destination: list[str] | None) -> None:
        self.control = control
        self.timeout = timeout
        self.destination = destination

    def _ask(self, command: str) -> dict[str, Any]:
        return self.control.broadcast(command, destination=self.destination, reply=True, timeout=self.timeout)

    def ping(self) -> dict[str, Any]:
        return self._ask("ping")

    def registered(self) -> dict[str, Any]:
        return self._ask("registered")

    def active(self) -> dict[str, Any]:
        return self._ask("active")

    def reserved(self) -> dict[str, Any]:
        return self._ask("reserved")

    def scheduled(self) -> dict[str, Any]:
        return self._ask("scheduled")

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")


def _names(destination: Sequence[str] | str | None) -> list[str] | None:
    if destination is None:
        return None
    if isinstance(destination, str):
        destination = [d for d in destination.split(",") if d.strip()]
    names = [d.strip() for d in destination if d.strip()]
    return names or None


# --------------------------------------------------------------------------- revokes
def remember_revoked(app: Conveyor, ids: Sequence[str], *, terminate: bool = False) -> None:
    body = orjson.dumps({"ts": time.time(), "terminate": terminate})
    for task_id in ids:
        app.broker.kv_set(REVOKED_NAMESPACE, task_id, body, ttl_s=REVOKE_TTL_S)


def load_revoked(app: Conveyor) -> set[str]:
    """The ids revoked within ``REVOKE_TTL_S``, for a worker that starts now."""
    return set(app.broker.kv_items(REVOKED_NAMESPACE))


# --------------------------------------------------------------------------- worker side
class ControlTarget(Protocol):
    """What a worker exposes to its control thread (worker/main.py implements it)."""

    def active(self) -> list[dict[str, Any]]: ...

    def reserved(self) -> list[dict[str, Any]]: ...

    def scheduled(self) -> list[dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def revoke(self, ids: list[str], terminate: bool) -> list[str]:
        """Remember ``ids``; with ``terminate`` stop those running; returns the stopped ones."""

    def set_rate_limit(self, task_name: str, rate: str | float | None) -> None: ...

    def shutdown(self) -> None: ...

    def add_consumer(self, queue: str) -> list[str]:
        """Consume ``queue`` too; returns the queues consumed now."""

    def cancel_consumer(self, queue: str) -> list[str]:
        """Stop consuming ``queue``; returns the queues consumed now."""

    def pool_resize(self, delta: int) -> int:
        """Start (delta > 0) or stop child processes; returns the pool's size now."""


def describe_job(job: Job, *, pid: int | None = None) -> dict[str, Any]:
    """A running or reserved job as inspect shows it (arguments decoded from its message)."""
    from conveyor.exceptions import SerializationError
    from conveyor.message import decode

    info: dict[str, Any] = {
        "id": job.task_id,
        "name": job.task_name,
        "queue": job.delivery.queue,
        "acks_late": job.acks_late,
        "worker_pid": pid if pid is not None else os.getpid(),
    }
    if job.started_at:
        info["time_start"] = time.time() - (time.monotonic() - job.started_at)
    try:
        message = decode(job.delivery.body)
        info.update(args=message.args, kwargs=message.kwargs, retries=message.retries)
        if not job.task_id:
            info.update(id=message.id, name=message.task)
    except SerializationError:
        info.update(args=[], kwargs={})
    return info


class ControlListener:
    """The worker's control thread: reads log "control", runs commands, replies."""

    def __init__(
        self,
        app: Conveyor,
        name: str,
        target: ControlTarget,
        *,
        read_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.name = name
        self.target = target
        self.read_timeout_s = read_timeout_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._after = "0"

    def start(self) -> None:
        # Commands sent before this worker started are not for it; revokes among
        # them reach it through kv "revoked" instead.
        self._after = self.app.broker.log_tail(CONTROL_STREAM)
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.read_timeout_s + 1.0)

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                entries = self.app.broker.log_read(
                    CONTROL_STREAM, after=self._after, limit=100, timeout_s=self.read_timeout_s
                )
            except BrokerError as exc:
                if not failing:
                    log.warning("Cannot read control commands: %s (will keep trying)", exc)
                failing = True
                self._stop.wait(1.0)
                continue
            failing = False
            for entry_id, body in entries:
                self._after = entry_id
                self.process(body)

    def process(self, body: bytes) -> dict[str, Any] | None:
        """Run one command entry; returns the reply written (None when none was)."""
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(request, dict):
            return None
        destination = request.get("destination")
        if destination and self.name not in destination:
            return None
        sent = request.get("ts")
        if isinstance(sent, (int, float)) and self.clock() - sent > COMMAND_MAX_AGE_S:
            return None
        reply: dict[str, Any] = {"request": request.get("id"), "worker": self.name}
        try:
            reply["ok"] = self.dispatch(str(request.get("command")), request.get("arguments") or {})
        except (ControlError, ValueError, TypeError, KeyError) as exc:
            reply["error"] = str(exc) or type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - a bad command must never kill the control thread
            log.exception("Control command %r failed", request.get("command"))
            reply["error"] = f"{type(exc).__name__}: {exc}"
        if not request.get("reply"):
            return None
        try:
            self.app.broker.log_append(
                REPLIES_STREAM, [orjson.dumps(reply, default=str)], maxlen=REPLIES_MAXLEN
            )
        except BrokerError as exc:
            log.warning("Cannot send a control reply: %s", exc)
        return reply

    def dispatch(self, command: str, arguments: dict[str, Any]) -> Any:
        target = self.target
        if command == "ping":
            return "pong"
        if command == "registered":
            return sorted(self.app.tasks)
        if command == "active":
            return target.active()
        if command == "reserved":
            return target.reserved()
        if command == "scheduled":
            return target.scheduled()
        if command == "stats":
            return target.stats()
        if command == "revoke":
            ids = [str(i) for i in arguments.get("ids", [])]
            terminated = target.revoke(ids, bool(arguments.get("terminate")))
            log.warning(
                "Revoked %s%s", ", ".join(ids), f" (terminated {', '.join(terminated)})" if terminated else ""
            )
            return {"revoked": ids, "terminated": terminated}
        if command == "rate_limit":
            from conveyor.retry import parse_rate

            name = str(arguments["task"])
            rate = arguments.get("rate")
            if name not in self.app.tasks:
                raise ControlError(f"unknown task {name!r} on this worker")
            parse_rate(rate)
            target.set_rate_limit(name, rate)
            log.warning("Rate limit of %s set to %s", name, rate or "none")
            return {"task": name, "rate_limit": rate}
        if command == "shutdown":
            log.warning("Shutdown requested by a control command: warm shutdown")
            target.shutdown()
            return "shutting down"
        if command in ("add_consumer", "cancel_consumer"):
            return self._queues(command, str(arguments["queue"]))
        if command in ("pool_grow", "pool_shrink"):
            n = int(arguments.get("n", 1))
            if n < 1:
                raise ControlError(f"{command} takes 1 or more processes, got {n}")
            size = target.pool_resize(n if command == "pool_grow" else -n)
            log.warning(
                "Pool %s by %d: %d process(es)", "grown" if command == "pool_grow" else "shrunk", n, size
            )
            return {"concurrency": size}
        raise ControlError(f"unknown command {command!r}")

    def _queues(self, command: str, queue: str) -> dict[str, Any]:
        if command == "add_consumer":
            queues = self.target.add_consumer(queue)
            log.warning("Now consuming from queue %r", queue)
        else:
            queues = self.target.cancel_consumer(queue)
            log.warning("No longer consuming from queue %r", queue)
        return {"queues": queues}
