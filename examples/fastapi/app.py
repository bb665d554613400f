"""A FastAPI app that sends Conveyor tasks from its async routes and awaits results,
without blocking the event loop or borrowing a thread pool.

Run a worker and the app in this folder (two terminals):

    conveyor -A tasks worker -l info
    uvicorn app:api

then:

    curl -X POST localhost:8000/count -H 'content-type: application/json' -d '{"text": "a b c"}'
    curl 'localhost:8000/tasks/<task id>?wait=5'
    curl -X POST 'localhost:8000/shout?wait=5' -H 'content-type: application/json' -d '{"text": "hi"}'
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from tasks import app as conveyor_app
from tasks import shout, word_count

import conveyor.aio
from conveyor.exceptions import TimeoutError as ResultTimeout


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    yield
    # The loop's Conveyor connections; asyncio.run would close them too, this is earlier.
    await conveyor.aio.aclose(conveyor_app)


api = FastAPI(lifespan=lifespan)


class Text(BaseModel):
    text: str


@api.post("/count", status_code=202)
async def count(body: Text) -> dict[str, str]:
    """Queue the work and answer at once; the client polls /tasks/{id}."""
    result = await word_count.adelay(body.text)
    return {"task_id": result.id}


@api.get("/tasks/{task_id}")
async def task_status(task_id: str, wait: float = 0.0) -> dict[str, Any]:
    """A task's state, and its result once done; ``wait`` seconds to wait for it."""
    result = conveyor_app.AsyncResult(task_id)
    if wait > 0:
        try:
            return {"state": "SUCCESS", "result": await result.aget(timeout=min(wait, 30.0))}
        except ResultTimeout:
            pass
        except Exception as exc:  # the task failed: its own exception, re-raised by aget
            return {"state": "FAILURE", "error": f"{type(exc).__name__}: {exc}"}
    return {"state": await result.astate()}


@api.post("/shout")
async def shout_now(body: Text, wait: float = 5.0) -> dict[str, str]:
    """Queue the work and await its result within the request."""
    result = await shout.adelay(body.text)
    try:
        return {"shouted": await result.aget(timeout=min(wait, 30.0))}
    except ResultTimeout:
        raise HTTPException(504, f"task {result.id} is not done yet: is a worker running?") from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
