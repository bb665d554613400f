"""``inspect``, ``status`` and ``revoke`` without a running worker: errors and what is stored.

With real workers they are covered by tests/integration/test_monitoring.py.
"""

from __future__ import annotations

import json
import os
import re
import time

import orjson

from conveyor.monitor import WORKERS_NAMESPACE
from conveyor.monitor.control import load_revoked
from tests.cli.conftest import Project, assert_one_line_error, assert_usage_error


def test_inspect_with_no_worker_is_one_line_error(project: Project) -> None:
    started = time.monotonic()
    result = project.run("-A", "proj", "inspect", "ping", "--timeout", "0.2")
    assert_one_line_error(result, "no worker replied within 0.2s")
    assert time.monotonic() - started < 20


def test_inspect_usage_errors(project: Project) -> None:
    assert_usage_error(project.run("-A", "proj", "inspect", "everything"), "everything")
    assert_usage_error(project.run("-A", "proj", "inspect", "ping", "--timeout", "-1"), "-1")


def test_status_lists_heartbeats_and_fails_when_none_is_online(project: Project) -> None:
    assert_one_line_error(project.run("-A", "proj", "status"), "no worker online")
    app = project.app()
    now = time.time()
    record = {
        "hostname": "h",
        "pid": os.getpid(),
        "pool": "prefork",
        "concurrency": 2,
        "queues": ["default", "email"],
        "active": 1,
        "processed": 12,
        "failed": 1,
        "loadavg": [0.5, 0.25, 0.1],
        "started_at": now - 90,
        "sent_at": now,
        "interval": 60.0,
    }
    app.broker.kv_set(WORKERS_NAMESPACE, "w1@h", orjson.dumps(record))
    app.broker.kv_set(WORKERS_NAMESPACE, "gone@h", orjson.dumps({**record, "sent_at": now - 600}))
    result = project.run("-A", "proj", "status")
    assert result.code == 0, result
    assert result.out.splitlines() == [
        "w1@h: online, prefork x2, queues default,email, active 1, processed 12, failed 1, up 1m30s, load 0.5, 0.25, 0.1",
        "1 worker(s) online.",
    ]
    every = project.run("-A", "proj", "status", "--all")
    # Seconds pass between the record and the command on a loaded machine: 10m00s, 10m01s...
    assert re.search(r"^gone@h: OFFLINE \(last seen 10m\d\ds ago\)", every.out, re.M), every
    as_json = json.loads(project.run("-A", "proj", "status", "--json").out)
    assert [w["name"] for w in as_json] == ["w1@h"] and as_json[0]["online"] is True


def test_revoke_without_worker_is_remembered(project: Project) -> None:
    result = project.run("-A", "proj", "revoke", "id-1", "id-2", "--timeout", "0.2")
    assert result.code == 0, result
    assert result.out.splitlines() == [
        "Revoked id-1, id-2.",
        "No worker replied: it is dropped when a worker fetches it.",
    ]
    assert load_revoked(project.app()) == {"id-1", "id-2"}
    assert_usage_error(project.run("-A", "proj", "revoke"), "TASK_ID")
