"""Sending tasks and reading results from a coroutine: ``adelay``, ``aapply_async``,
``aget``, ``astate``.

Connections belong to an event loop: each loop gets its own broker and result-store
clients per app, made on first use and closed when the loop shuts its async
generators down (``asyncio.run``, uvicorn: ``loop.shutdown_asyncgens()``), or
earlier by ``await conveyor.aio.aclose(app)`` (a FastAPI lifespan). A client is
never shared between loops: redis-py's and psycopg's async connections are bound to
the loop that opened them.

Sending does what the sync ``apply_async`` does, in the same order (``app.send`` and
``app.publish``): the message is built by ``Task.build_message`` (routing, eta and
countdown, priority, expires, serializer, link/link_error, unique keys), the publish
signals fire around the broker call, and a unique send claims its key first.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor.aio.base import AsyncBackend, AsyncBroker, async_backend, async_broker
from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import ResultRecord
    from conveyor.message import Message
    from conveyor.result import AsyncResult
    from conveyor.task import Task


@dataclass
class _Clients:
    broker_url: str
    backend_url: str | None  # None: results are disabled
    broker: AsyncBroker | None = None
    backend: AsyncBackend | None = None

    async def aclose(self) -> None:
        broker, backend = self.broker, self.backend
        self.broker = self.backend = None
        try:
            if backend is not None:
                await backend.aclose()
        finally:
            if broker is not None:
                await broker.aclose()


class _LoopClients:
    """One loop's clients, per app, and the async generator whose finalisation by
    ``shutdown_asyncgens`` closes them with the loop."""

    def __init__(self) -> None:
        self.apps: weakref.WeakKeyDictionary[Conveyor, _Clients] = weakref.WeakKeyDictionary()
        self.closer: AsyncIterator[None] | None = None

    async def aclose(self) -> None:
        for clients in list(self.apps.values()):
            await clients.aclose()
        self.apps.clear()


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()


async def _close_with_loop(owner: _LoopClients) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await owner.aclose()


async def _loop_clients() -> _LoopClients:
    loop = asyncio.get_running_loop()
    found = _loops.get(loop)
    if found is None:
        found = _loops[loop] = _LoopClients()
        closer = _close_with_loop(found)
        await closer.__anext__()  # first iterated here: the loop now finalises it at shutdown
        found.closer = closer
    return found


def _backend_url(app: Conveyor) -> str | None:
    url = app.conf.result_backend
    if url is False or (isinstance(url, str) and url.lower().startswith("disabled:")):
        return None
    return url if isinstance(url, str) and url else app.conf.broker_url


async def clients(app: Conveyor) -> _Clients:
    per_loop = await _loop_clients()
    found = per_loop.apps.get(app)
    broker_url, backend_url = app.conf.broker_url, _backend_url(app)
    if found is not None and (found.broker_url, found.backend_url) != (broker_url, backend_url):
        await found.aclose()  # the app was reconfigured (config_from_object): reconnect
        found = None
    if found is None:
        found = per_loop.apps[app] = _Clients(broker_url, backend_url)
    return found


async def broker(app: Conveyor) -> AsyncBroker:
    found = await clients(app)
    if found.broker is None:
        found.broker = async_broker(found.broker_url)
    return found.broker


async def backend(app: Conveyor) -> AsyncBackend:
    found = await clients(app)
    if found.backend_url is None:
        raise ConfigurationError(
            "results are disabled (backend=False): pass backend= to Conveyor() to keep them"
        )
    if found.backend is None:
        found.backend = async_backend(found.backend_url, result_expires_s=float(app.conf.result_expires or 0))
    return found.backend


async def aclose(app: Conveyor | None = None) -> None:
    """Close this event loop's connections (of ``app``, or of every app); the next
    call reconnects. For a FastAPI lifespan's shutdown, or a test's teardown."""
    per_loop = _loops.get(asyncio.get_running_loop())
    if per_loop is None:
        return
    if app is None:
        await per_loop.aclose()
        return
    found = per_loop.apps.pop(app, None)
    if found is not None:
        await found.aclose()


# -- sending ---------------------------------------------------------------------------
async def apply_async(
    task: Task[Any, Any],
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: dict[str, Any],
) -> AsyncResult[Any]:
    app = task.app
    if app.conf.task_always_eager:
        return task.apply(args, kwargs, task_id=options.get("task_id"))
    message = task.build_message(args, kwargs, **options)
    return app.AsyncResult(await send(app, message), task_name=task.name)


async def send(app: Conveyor, message: Message) -> str:
    """``Conveyor.send``: publish, unless the message is unique and its key is held;
    the id of the task that stands for it. Sent from a running task, it is stored as
    one of that task's children (conveyor/relations.py)."""
    sent = await _send(app, message)
    if message.parent_id is not None and sent == message.id:
        from conveyor.relations import arecord_sent

        await arecord_sent(app, [message])
    return sent


async def _send(app: Conveyor, message: Message) -> str:
    unique = message.headers.get("unique")
    if not unique:
        await publish(app, message)
        return message.id
    checked = app._checked(message)
    store = await broker(app)
    holder = await store.claim_lease(unique["name"], checked.id, unique["ttl"])
    if holder != checked.id:
        return holder
    try:
        await store.publish(checked)
    except BaseException:
        await store.release_lease(unique["name"], checked.id)  # not sent: nothing holds the key
        raise
    return checked.id


async def publish(app: Conveyor, message: Message) -> None:
    """``Conveyor.publish``: signals around the broker call, the message checked before any I/O."""
    from conveyor.app import _publish_signal

    observed = bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)
    if observed:
        _publish_signal(signals.before_task_publish, message)  # headers may still change here
    checked = app._checked(message)
    await (await broker(app)).publish(checked)
    if observed:
        _publish_signal(signals.after_task_publish, checked)


# -- results ---------------------------------------------------------------------------
async def get(app: Conveyor, task_id: str) -> ResultRecord | None:
    return await (await backend(app)).get(task_id)


async def wait(
    app: Conveyor, task_id: str, *, timeout_s: float | None, interval_s: float
) -> ResultRecord | None:
    return await (await backend(app)).wait(task_id, timeout_s=timeout_s, interval_s=interval_s)
