"""The indicators, their enrichments and the framework, in one SQLite file (INTEL_DB).

Every worker process opens its own connection; WAL and a busy timeout let the
`feeds`, `observables` and `default` workers write at the same time.
"""

import contextlib
import sqlite3
import time
from collections.abc import Iterator

from intel.config import database

SCHEMA = """
CREATE TABLE IF NOT EXISTS indicators (
    value TEXT PRIMARY KEY, kind TEXT NOT NULL, feed TEXT NOT NULL, first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS enrichments (
    value TEXT PRIMARY KEY REFERENCES indicators(value), score INTEGER NOT NULL, checked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_runs (
    feed TEXT NOT NULL, finished_at REAL NOT NULL, new INTEGER NOT NULL, malicious INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS techniques (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, tactic TEXT NOT NULL, synced_at REAL NOT NULL
);
"""


@contextlib.contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(database(), timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        with conn:  # one transaction: committed on success, rolled back on error
            yield conn
    finally:
        conn.close()


def add_indicators(feed: str, indicators: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Store the indicators not seen before; returns those (value, kind)."""
    new = []
    with connect() as conn:
        for value, kind in indicators:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO indicators (value, kind, feed, first_seen) VALUES (?, ?, ?, ?)",
                (value, kind, feed, time.time()),
            )
            if inserted.rowcount:
                new.append((value, kind))
    return new


def set_score(value: str, score: int) -> None:
    with connect() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO enrichments (value, score, checked_at) VALUES (?, ?, ?)",
            (value, score, time.time()),
        )


def record_feed_run(feed: str, new: int, malicious: int) -> None:
    with connect() as conn:
        conn.execute(
            "INSERT INTO feed_runs (feed, finished_at, new, malicious) VALUES (?, ?, ?, ?)",
            (feed, time.time(), new, malicious),
        )


def upsert_techniques(techniques: list[dict[str, str]]) -> None:
    now = time.time()
    with connect() as conn:
        conn.executemany(
            "INSERT INTO techniques (id, name, tactic, synced_at) VALUES (:id, :name, :tactic, :now) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, tactic = excluded.tactic, synced_at = :now",
            [{**t, "now": now} for t in techniques],
        )
