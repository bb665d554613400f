"""Checked by mypy (--strict, in .ci/run), not run by pytest.

Each ``type: ignore`` below marks a call mypy must reject; with
``warn_unused_ignores`` (part of --strict) an ignore that stops being needed is
itself an error, so this file fails CI if Task loses its parameter typing.
"""

from __future__ import annotations

from conveyor import AsyncResult, Conveyor, Task, shared_task

app = Conveyor("typing", broker="memory://typing")


@app.task
def add(x: int, y: int) -> int:
    return x + y


ok: AsyncResult[int] = add.delay(1, 2)
value: int = add(1, 2)
add.delay(1, "x")  # type: ignore[arg-type]
add.delay(1)  # type: ignore[call-arg]
text: str = add(1, 2)  # type: ignore[assignment]


@shared_task
def mul(x: int, y: int) -> int:
    return x * y


@shared_task(bind=True, max_retries=3)
def bound(self: Task[..., str], user_id: int) -> str:
    return str(self.request.retries + user_id)


mul.delay(2, 3)
mul.delay("2", 3)  # type: ignore[arg-type]
bound.delay(1)

add.delay_on_commit(1, 2)
add.delay_on_commit(1, "x")  # type: ignore[arg-type]


async def from_a_coroutine() -> int:
    sent: AsyncResult[int] = await add.adelay(1, 2)
    await add.adelay(1, "x")  # type: ignore[arg-type]
    got: int = await sent.aget(timeout=1)
    wrong: str = await sent.aget(timeout=1)  # type: ignore[assignment]
    state: str = await sent.astate()
    return got + len(wrong) + len(state)
