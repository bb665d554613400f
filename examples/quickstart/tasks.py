"""The quickstart project: two tasks on the zero-setup SQLite broker.

Start a worker in this folder:

    conveyor -A tasks worker -l info

and send work from a second terminal in the same folder:

    python -c "from tasks import add; print(add.delay(2, 3).get(timeout=10))"
"""

from __future__ import annotations

import time

from conveyor import Conveyor

# No broker URL: the broker and the results live in conveyor.sqlite3 in the current directory.
app = Conveyor("tasks")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=3, default_retry_delay=1)
def flaky_fetch(self, url: str) -> str:  # type: ignore[no-untyped-def]
    """Fails twice, then succeeds: watch the worker log the retries."""
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError(f"{url} did not answer"))
    time.sleep(0.1)
    return f"fetched {url} after {self.request.retries} retries"
