"""Django's database connections in the worker, handled as Django handles them in a web process.

Around a request Django calls ``close_old_connections()`` (``request_started`` and
``request_finished``); a worker has no requests, so without this a worker thread or
child keeps the connection its first task opened forever: ``CONN_MAX_AGE`` is never
applied, ``CONN_HEALTH_CHECKS`` never runs, and once the server drops the session
(a restart, a failover, an idle timeout) every later task fails with
"terminating connection" until the worker is restarted. So the same call runs
before and after each task, in the thread that runs it (``task_prerun`` and
``task_postrun``), but not for eager calls: those run inside the caller's request or
test transaction, whose connection is not the task's to close.

A forked child (a prefork pool's) inherits its parent's connections: the same
socket, shared by two processes, so their queries interleave on one server session.
Closing it in the child would send the server a Terminate message and end the
parent's session too, so the child first points the socket's file descriptor at
/dev/null, then closes the connection: the goodbye goes nowhere, the parent's
session lives on, and the child opens its own on first use. Celery's Django fixup
does the same with ``os.close`` on the descriptor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from conveyor import signals
from conveyor.task import current_request

log = logging.getLogger("conveyor.django")

_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Connect the task receivers and the fork hook, once per process."""
    global _installed
    with _install_lock:
        if _installed:
            return
        signals.task_prerun.connect(_close_old_connections, weak=False, dispatch_uid=__name__)
        signals.task_postrun.connect(_close_old_connections, weak=False, dispatch_uid=__name__)
        os.register_at_fork(after_in_child=forget_inherited_connections)
        _installed = True


def _close_old_connections(**kwargs: Any) -> None:
    request = current_request()
    if request is not None and request.is_eager:
        return
    from django.db import close_old_connections  # type: ignore[import-not-found,import-untyped,unused-ignore]

    close_old_connections()


def forget_inherited_connections() -> None:
    """In a forked child: drop this thread's connections without a word to the server."""
    from django.db import connections  # type: ignore[import-not-found,import-untyped,unused-ignore]

    for conn in connections.all(initialized_only=True):
        inner = conn.connection
        if inner is None:
            continue
        _silence(inner)
        try:
            conn.close()
        except Exception as exc:  # the driver complaining about the silenced socket
            log.debug("closing an inherited %s connection: %r", conn.alias, exc)
        conn.connection = None  # even if close() kept it (inside an atomic block)


def _silence(inner: Any) -> None:
    """Point the connection's socket descriptor at /dev/null (drivers without one: nothing)."""
    try:
        fd = inner.fileno()
    except Exception:  # SQLite has no socket; a broken driver object has none either
        return
    if not isinstance(fd, int) or fd < 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)
