"""The result-store seam: where task outcomes are kept for AsyncResult to read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from conveyor.exceptions import ConfigurationError
from conveyor.states import READY_STATES

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """Everything stored about one task's outcome (DESIGN.md, "Results").

    ``result`` is the return value on SUCCESS; ``exception`` is
    ``serialization.exception_to_dict()`` output on FAILURE, RETRY and REVOKED.
    """

    task_id: str
    state: str
    task: str | None = None
    result: Any = None
    exception: Mapping[str, Any] | None = None
    traceback: str | None = None
    retries: int = 0
    worker: str | None = None
    queue: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    def with_changes(self, **changes: Any) -> ResultRecord:
        return replace(self, **changes)


class Reply(Generic[T]):
    """The answer of a write that may wait in a broker ``batch()``.

    SQLite and memory answer at once; Redis queues the write in the batch's
    MULTI/EXEC and sets the answer when the batch is sent. ``committed``: the write
    is committed on its own already (no batch around it, or another store's), so it
    stands even if the batch around it fails.
    """

    __slots__ = ("_ready", "_value", "committed")

    def __init__(self, *, committed: bool = False) -> None:
        self._ready = False
        self._value: Any = None
        self.committed = committed

    @classmethod
    def now(cls, value: T, *, committed: bool = True) -> Reply[T]:
        reply: Reply[T] = cls(committed=committed)
        reply.set(value)
        return reply

    @property
    def ready(self) -> bool:
        return self._ready

    def set(self, value: T) -> None:
        self._value, self._ready = value, True

    def get(self) -> T:
        if not self._ready:
            raise RuntimeError("a batched write's answer was asked for before its batch was sent")
        value: T = self._value
        return value


@runtime_checkable
class ResultBackend(Protocol):
    url: str

    def store(self, records: Sequence[ResultRecord]) -> None:
        """Save records (insert or replace), in one round trip."""

    def get(self, task_id: str) -> ResultRecord | None: ...

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultRecord]: ...

    def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        """Block until the task's record is ready (SUCCESS/FAILURE/REVOKED) or the timeout passes.

        Returns the latest record (ready or not), or None when there is none.
        """

    def forget(self, task_id: str) -> None: ...

    def count_chord_member(self, chord_id: str, task_id: str, *, size: int) -> Reply[bool]:
        """Count ``task_id`` as a finished member of the chord, once per task id.

        Answers True to exactly one call per chord, across every process: the one
        that counted the ``size``-th distinct member, which then sends the body. A
        member counted again (redelivered, retried) is not counted twice. Inside a
        broker ``batch()`` it joins the batch, so the count commits with the
        member's result and ack; the answer is known once the batch is sent.
        """

    def cleanup(self, *, now: float | None = None) -> int:
        """Delete records (and chord counts) older than result_expires; returns how many records."""

    def close(self) -> None: ...


class DisabledBackend:
    """``backend=False``: results are not kept; asking for one is a clear error."""

    url = "disabled://"

    def store(self, records: Sequence[ResultRecord]) -> None:
        return None

    def _refuse(self) -> ConfigurationError:
        return ConfigurationError(
            "results are disabled (backend=False): pass backend= to Conveyor() to keep them"
        )

    def get(self, task_id: str) -> ResultRecord | None:
        raise self._refuse()

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultRecord]:
        raise self._refuse()

    def wait(self, task_id: str, *, timeout_s: float | None, interval_s: float) -> ResultRecord | None:
        raise self._refuse()

    def forget(self, task_id: str) -> None:
        return None

    def count_chord_member(self, chord_id: str, task_id: str, *, size: int) -> Reply[bool]:
        raise self._refuse()

    def cleanup(self, *, now: float | None = None) -> int:
        return 0

    def close(self) -> None:
        return None


def backend_from_url(url: str, *, result_expires_s: float) -> ResultBackend:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteBackend

        return SQLiteBackend(url, result_expires_s=result_expires_s)
    if scheme == "memory":
        from conveyor.backends.memory import MemoryBackend

        return MemoryBackend(url, result_expires_s=result_expires_s)
    if scheme == "disabled":
        return DisabledBackend()
    if scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster"):
        from conveyor.backends.redis import RedisBackend

        return RedisBackend(url, result_expires_s=result_expires_s)
    if scheme in ("postgresql", "postgres"):
        from conveyor.backends.postgres import PostgresBackend

        return PostgresBackend(url, result_expires_s=result_expires_s)
    from conveyor.brokers.base import mask_url

    if scheme.startswith("db+"):
        scheme = scheme[3:].split("+", 1)[0]
        what = f"Conveyor cannot keep results in {scheme} ({mask_url(url)})"
    else:
        what = f"unknown result backend URL scheme {scheme!r} in {mask_url(url)}"
    raise ConfigurationError(
        f"{what}: use sqlite:///path.sqlite3, redis://host:6379/1, postgresql://user@host:5432/db, "
        "memory://, nothing (the broker's own store) or backend=False"
    )
