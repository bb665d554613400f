"""What storing a canvas's relations (conveyor/relations.py) costs a producer: chains
of three sent per second, with the relations stored and with them switched off,
alternating (medians of 4 runs of ``-n`` chains each), on SQLite and a private Redis.

    python bench/canvas_relations.py            # -n 400
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import conveyor.canvas as canvas  # noqa: E402
from conveyor import Conveyor  # noqa: E402


def measure(url: str, n: int) -> dict[str, str]:
    app = Conveyor("relbench", broker=url, set_as_current=False)
    add = app.task(name="relbench.add")(lambda x, y: x + y)
    real = canvas.canvas_records

    def run() -> float:
        started = time.perf_counter()
        for i in range(n):
            (add.s(i, i) | add.s(1) | add.s(2))()
        return n / (time.perf_counter() - started)

    run()
    rates: dict[str, list[float]] = {"with relations": [], "without": []}
    try:
        for rep in range(4):
            for mode in ["without", "with relations"][:: 1 if rep % 2 else -1]:
                off: Any = lambda app, node: []  # noqa: E731
                canvas.canvas_records = real if mode == "with relations" else off
                rates[mode].append(run())
    finally:
        canvas.canvas_records = real
        app.close()
    return {mode: f"{statistics.median(values):,.0f}/s" for mode, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("sqlite", measure(f"sqlite:///{tmp}/relbench.sqlite3", args.n))
        from tests.redis_server import RedisServer

        server = RedisServer(Path(tmp))
        server.start()
        try:
            print("redis ", measure(server.url, args.n))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
