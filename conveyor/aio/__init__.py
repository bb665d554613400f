"""The async client: send tasks and await results from a coroutine (FastAPI,
aiohttp, Django async views) without blocking the event loop or using a thread pool.

    result = await add.adelay(2, 3)          # or add.aapply_async((2, 3), countdown=10, ...)
    await result.aget(timeout=10)            # 5; re-raises the task's exception, TimeoutError
    await result.astate()                    # PENDING, STARTED, SUCCESS...

Each broker is reached with its own asyncio client (``base.py``); connections are
per event loop and closed with it, or by ``await conveyor.aio.aclose(app)``.
docs/async.md says what each broker does and what it costs.
"""

from __future__ import annotations

from conveyor.aio.client import aclose

__all__ = ["aclose"]
