"""The routes through httpx's ASGI transport, a real worker doing the tasks."""

import asyncio
from typing import Any

import httpx


def test_a_route_enqueues_and_another_awaits_the_result(api: Any) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://test"
        ) as client:
            queued = await client.post("/count", json={"text": "one two three"})
            assert queued.status_code == 202
            task_id = queued.json()["task_id"]
            done = await client.get(f"/tasks/{task_id}", params={"wait": 20})
            assert done.json() == {"state": "SUCCESS", "result": 3}
            assert (await client.get(f"/tasks/{task_id}")).json() == {"state": "SUCCESS"}

    asyncio.run(main())


def test_a_route_enqueues_and_awaits_within_the_request(api: Any) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://test"
        ) as client:
            shouted = await client.post("/shout", json={"text": "hi"}, params={"wait": 20})
            assert shouted.json() == {"shouted": "HI!"}
            refused = await client.post("/shout", json={"text": ""}, params={"wait": 20})
            assert (refused.status_code, refused.json()["detail"]) == (422, "nothing to shout")

    asyncio.run(main())
