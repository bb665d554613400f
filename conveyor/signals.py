"""Signals with Celery's names, senders and keyword arguments.

Connect a receiver with the decorator or a call; it is called with ``sender`` and the
signal's keyword arguments (always accept ``**kwargs``: more may be added)::

    from conveyor import signals

    @signals.worker_process_init.connect
    def open_connections(**kwargs): ...

    @signals.task_failure.connect(sender="accounts.tasks.send_activation_email")
    def alert(sender=None, task_id=None, exception=None, **kwargs): ...

``sender=`` filters by identity, or, given a string, by the sender's task name (a
task's ``name``) or the string itself (a worker's host name). Receivers are held by
weak reference unless ``weak=False``; ``dispatch_uid`` makes connecting twice (a
module imported twice) connect once. A receiver that raises is logged with its
traceback and the others still run: a broken receiver never breaks a worker.

Sending costs one attribute check when nothing is connected, so unused signals are
free on the hot path (``if signal.receivers: signal.send(...)``).

Where each fires (the process Celery fires it in):

============================  ====================  =========================================
signal                        process               sender / keyword arguments
============================  ====================  =========================================
before_task_publish           the sender's          task name; body, exchange, routing_key,
                                                    headers, properties, declare, retry_policy
after_task_publish            the sender's          task name; body, exchange, routing_key, headers
task_received                 the consumer's        consumer; request
task_prerun                   where the task runs   task; task_id, task, args, kwargs
task_postrun                  where the task runs   task; task_id, task, args, kwargs, retval, state
task_success                  where the task runs   task; result
task_failure                  where the task runs   task; task_id, exception, args, kwargs,
                                                    traceback, einfo
task_retry                    where the task runs   task; request, reason, einfo
task_revoked                  the consumer's        task (or None); request, terminated,
                                                    signum, expired
task_rejected                 the consumer's        consumer; message (the Delivery), exc
task_unknown                  the consumer's        consumer; name, id, message, exc
worker_init                   worker main           None
worker_process_init           each prefork child    None (after fork, before the first task)
worker_process_shutdown       each prefork child    None; pid, exitcode
worker_ready                  worker main           the worker
worker_shutting_down          worker main           host name; sig, how, exitcode
worker_shutdown               worker main           the worker
beat_init                     beat                  the Beat
setup_logging                 worker, beat          None; loglevel, logfile, format, colorize
after_setup_logger            worker, beat          None; logger, loglevel, logfile, format,
                                                    colorize
after_setup_task_logger       worker, beat          None; same as after_setup_logger
============================  ====================  =========================================

"The consumer's" process is the worker's main process with the solo and threads
pools, and each prefork child with prefork: Conveyor's children fetch their own
messages (Celery's main process does), so a receiver there runs in the child. A
task terminated by ``revoke(terminate=True)`` is reported where it ended: by the
child that interrupted it (``signum`` SIGUSR2) or, when the supervisor had to kill
the child, by the supervisor (``signum`` SIGKILL).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = [
    "Signal",
    "after_setup_logger",
    "after_setup_task_logger",
    "after_task_publish",
    "beat_init",
    "before_task_publish",
    "setup_logging",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutdown",
    "worker_shutting_down",
]

log = logging.getLogger("conveyor.signals")

Receiver = Callable[..., Any]
_ANY = object()


def _ref(receiver: Receiver, weak: bool) -> Callable[[], Receiver | None]:
    if not weak:
        return lambda: receiver
    if hasattr(receiver, "__self__") and hasattr(receiver, "__func__"):
        return weakref.WeakMethod(receiver)
    return weakref.ref(receiver)


def _matches(wanted: Any, sender: Any) -> bool:
    if wanted is _ANY or wanted is sender:
        return True
    if isinstance(wanted, str):
        return wanted == sender or wanted == getattr(sender, "name", None)
    return False


class Signal:
    """A named hook: ``connect`` receivers, ``send`` calls each one that matches the sender."""

    def __init__(self, name: str, providing_args: Any = None) -> None:
        self.name = name
        # (key, sender filter, reference); key is dispatch_uid or the receiver's identity.
        self.receivers: list[tuple[Any, Any, Callable[[], Receiver | None]]] = []
        self._lock = threading.Lock()

    def connect(
        self,
        receiver: Receiver | None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Any = None,
    ) -> Any:
        """Connect ``receiver``; with no receiver, a decorator (``@sig.connect(sender=...)``)."""
        if receiver is None:

            def decorate(fn: Receiver) -> Receiver:
                self.connect(fn, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
                return fn

            return decorate
        if not callable(receiver):
            raise TypeError(f"signal {self.name}: a receiver must be callable, got {receiver!r}")
        key = dispatch_uid if dispatch_uid is not None else _identity(receiver)
        wanted = _ANY if sender is None else sender
        with self._lock:
            self._prune()
            if not any(k == key and s is wanted for k, s, _ in self.receivers):
                self.receivers.append((key, wanted, _ref(receiver, weak)))
        return receiver

    def disconnect(
        self, receiver: Receiver | None = None, *, sender: Any = None, dispatch_uid: Any = None
    ) -> bool:
        """Disconnect a receiver (or the one connected with ``dispatch_uid``); True if one was."""
        key = dispatch_uid if dispatch_uid is not None else _identity(receiver)
        wanted = _ANY if sender is None else sender
        with self._lock:
            before = len(self.receivers)
            self.receivers = [r for r in self.receivers if not (r[0] == key and r[1] is wanted)]
            return len(self.receivers) < before

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every live receiver whose filter matches ``sender``; returns (receiver, reply) pairs.

        A receiver that raises is logged and its reply is the exception; the rest still run.
        """
        if not self.receivers:
            return []
        replies: list[tuple[Receiver, Any]] = []
        for _key, wanted, ref in list(self.receivers):
            receiver = ref()
            if receiver is None or not _matches(wanted, sender):
                continue
            try:
                replies.append((receiver, receiver(signal=self, sender=sender, **named)))
            except Exception as exc:
                log.exception("signal %s: receiver %r raised %r; carrying on", self.name, receiver, exc)
                replies.append((receiver, exc))
        return replies

    send_robust = send

    def _prune(self) -> None:
        self.receivers = [r for r in self.receivers if r[2]() is not None]

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"


def _identity(receiver: Receiver | None) -> Any:
    if receiver is None:
        return None
    if hasattr(receiver, "__self__") and hasattr(receiver, "__func__"):
        return (id(receiver.__self__), id(receiver.__func__))
    return id(receiver)


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
worker_init = Signal("worker_init")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down")
worker_shutdown = Signal("worker_shutdown")
beat_init = Signal("beat_init")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
