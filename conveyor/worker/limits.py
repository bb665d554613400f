"""Soft time limits inside the running task, and the shared rate limiter's local side."""

from __future__ import annotations

import contextlib
import ctypes
import random
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.exceptions import SoftTimeLimitExceeded

if TYPE_CHECKING:
    from conveyor.brokers.base import Delivery


class TaskTerminated(BaseException):  # noqa: N818 - not an error of the task's: an order
    """Raised inside a running task by ``revoke(terminate=True)``.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` in task code
    does not swallow it; the task's ``finally`` blocks and context managers run.
    """


def _raise_soft_limit(signum: int, frame: object) -> None:
    raise SoftTimeLimitExceeded()


@contextlib.contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in the running code after ``seconds``.

    In a process's main thread (prefork children, solo) a SIGALRM timer interrupts
    even a blocking system call. In other threads (the threads pool) the exception is
    set asynchronously on the thread, which takes effect at the next bytecode: a task
    blocked inside C code sees it only when it returns to Python.
    """
    if not seconds or seconds <= 0:
        yield
        return
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGALRM, _raise_soft_limit)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    thread_id = threading.get_ident()
    done = threading.Event()

    def fire() -> None:
        if not done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread_id), ctypes.py_object(SoftTimeLimitExceeded)
            )

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        done.set()
        timer.cancel()


@dataclass
class _Held:
    due_at: float
    item: Delivery


class RateGate:
    """Decides, per fetched message of a rate-limited task, run now / hold / give back.

    The slots themselves live in the broker (``rate_limit_wait``) so a limit holds
    across every worker process. Locally, at most one message per task name waits in
    memory for its slot (and it does not count against prefetch), so a rate-limited
    task never fills the worker with messages it cannot run and never blocks other
    tasks. Any further message of that task goes back to the broker to be fetched
    again near its slot, with jitter so a backlog does not come back all at once.
    """

    HOLD_MAX_S = 1.0

    def __init__(self, rng: random.Random | None = None) -> None:
        self._held: dict[str, _Held] = {}
        self._rng = rng or random.Random()

    def holding(self, key: str) -> bool:
        return key in self._held

    def hold(self, key: str, item: Delivery, due_at: float) -> None:
        self._held[key] = _Held(due_at, item)

    def give_back_at(self, wait_s: float, interval_s: float, now: float) -> float:
        return now + max(wait_s, interval_s) + self._rng.uniform(0, interval_s)

    def due(self, now: float) -> list[tuple[str, Delivery]]:
        ready = [(key, h.item) for key, h in self._held.items() if h.due_at <= now]
        for key, _ in ready:
            del self._held[key]
        return ready

    def next_due(self) -> float | None:
        return min((h.due_at for h in self._held.values()), default=None)

    def drain(self) -> list[Delivery]:
        items = [h.item for h in self._held.values()]
        self._held.clear()
        return items

    def items(self) -> list[Delivery]:
        return [h.item for h in self._held.values()]
