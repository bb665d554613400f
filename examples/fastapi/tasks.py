"""The tasks a FastAPI app sends (see app.py).

The broker comes from ``CONVEYOR_BROKER_URL`` (``redis://...``, ``postgresql://...``),
or is ``conveyor.sqlite3`` in the current directory when it is unset.
"""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor("tasks")


@app.task
def word_count(text: str) -> int:
    return len(text.split())


@app.task
def shout(text: str) -> str:
    if not text:
        raise ValueError("nothing to shout")
    return text.upper() + "!"
