"""``call``, ``queues``, ``purge`` and ``result`` against a real SQLite broker file."""

from __future__ import annotations

import json
import time

from conveyor.backends.base import ResultRecord
from conveyor.message import decode
from tests.cli.conftest import Project


def _stats(project: Project, *args: str) -> dict[str, dict[str, int]]:
    result = project.run(*args, "queues", "--json")
    assert result.code == 0, result
    return {row.pop("queue"): row for row in json.loads(result.out)}


def test_call_prints_the_id_and_queues_shows_the_backlog(project: Project) -> None:
    first = project.run("-A", "proj", "call", "proj.add", "--args", "[1, 2]")
    assert first.code == 0, first
    task_id = first.out.strip()
    assert len(task_id) == 36 and first.err == ""
    project.run("-A", "proj", "call", "proj.add", "--kwargs", '{"x": 1, "y": 2}')
    delayed = project.run(
        "-A",
        "proj",
        "call",
        "proj.add",
        "-a",
        "[1, 2]",
        "-Q",
        "email",
        "--countdown",
        "600",
        "--priority",
        "9",
    )
    assert delayed.code == 0, delayed

    table = project.run("-A", "proj", "queues")
    assert table.code == 0, table
    lines = table.out.splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "IN", "FLIGHT", "DELAYED", "DEAD"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows == {"default": ["2", "0", "0", "0"], "email": ["0", "0", "1", "0"]}

    assert _stats(project, "-A", "proj") == {
        "default": {"ready": 2, "in_flight": 0, "delayed": 0, "dead": 0},
        "email": {"ready": 0, "in_flight": 0, "delayed": 1, "dead": 0},
    }
    # The message is what the API would have sent: arguments, queue, priority.
    deliveries = project.app().broker.fetch(["default"], limit=1, lease_s=30, timeout_s=1)
    sent = decode(deliveries[0].body)
    assert (sent.id, sent.task, sent.args) == (task_id, "proj.add", [1, 2])


def test_admin_commands_work_with_only_a_broker_url(project: Project) -> None:
    url = f"sqlite:///{project.root / 'elsewhere.sqlite3'}"
    sent = project.run("--broker", url, "call", "some.unimported.task", "--args", '["x"]', "-Q", "feeds")
    assert sent.code == 0, sent
    assert _stats(project, "--broker", url) == {
        "default": {"ready": 0, "in_flight": 0, "delayed": 0, "dead": 0},  # known: the default queue
        "feeds": {"ready": 1, "in_flight": 0, "delayed": 0, "dead": 0},
    }
    # Without -A or --broker: CONVEYOR_BROKER_URL, else ./conveyor.sqlite3.
    assert "feeds" in _stats(project, "-b", url)
    assert "feeds" in project.run("queues", env={"CONVEYOR_BROKER_URL": url}).out
    empty = project.run("queues")
    assert empty.code == 0 and "no message waiting or in flight on sqlite:///conveyor.sqlite3" in empty.out, (
        empty
    )
    # --broker overrides the app's own broker_url.
    assert "feeds" in _stats(project, "-A", "proj", "--broker", url)


def test_purge_asks_and_force_skips_the_question(project: Project) -> None:
    for queue in ("default", "default", "email"):
        project.run("-A", "proj", "call", "proj.add", "--args", "[1, 2]", "-Q", queue)

    refused = project.run("-A", "proj", "purge")  # stdin closed: nobody can answer
    assert refused.code == 1, refused
    assert refused.error_lines[0].startswith("Delete 3 waiting or delayed message(s) from every queue")
    assert refused.error_lines[1:] == [
        "Error: no confirmation (stdin is closed or empty): pass -f/--force to skip the question"
    ], refused
    said_no = project.run("-A", "proj", "purge", input="n\n")
    assert said_no.code == 1 and "nothing was changed" in said_no.err, said_no
    assert _stats(project, "-A", "proj")["default"]["ready"] == 2

    only_email = project.run("-A", "proj", "purge", "-Q", "email", input="y\n")
    assert only_email.code == 0, only_email
    assert "Delete 1 waiting or delayed message(s) from email" in only_email.err
    assert only_email.out.strip() == "Purged 1 message(s) from email."

    forced = project.run("-A", "proj", "purge", "-f")
    assert forced.code == 0 and forced.out.strip() == "Purged 2 message(s) from every queue.", forced
    zero = {"ready": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    assert _stats(project, "-A", "proj") == {"default": zero}


def test_result_of_an_unknown_id_is_pending(project: Project) -> None:
    result = project.run("-A", "proj", "result", "no-such-id")
    assert result.code == 0, result
    assert "PENDING" in result.out
    as_json = project.run("result", "no-such-id", "--json", "--broker", project.broker_url)
    assert json.loads(as_json.out) == {"id": "no-such-id", "state": "PENDING"}

    started = time.monotonic()
    waited = project.run("-A", "proj", "result", "no-such-id", "--wait", "0.3")
    assert time.monotonic() - started < 10
    assert waited.code == 1, waited
    assert waited.err.strip() == (
        "Error: task no-such-id is still PENDING after 0.3s: is a worker consuming its queue?"
    )


def test_result_shows_value_or_exception_and_traceback(project: Project) -> None:
    now = time.time()
    project.app().backend.store(
        [
            ResultRecord(
                "ok-id", "SUCCESS", task="proj.add", result={"sum": 3}, worker="w1", finished_at=now
            ),
            ResultRecord(
                "bad-id",
                "FAILURE",
                task="proj.fail",
                exception={"type": "ValueError", "module": "builtins", "message": "boom", "args": ["boom"]},
                traceback='Traceback (most recent call last):\n  File "proj.py", line 17\nValueError: boom\n',
                retries=2,
                finished_at=now,
            ),
        ]
    )
    ok = project.run("-A", "proj", "result", "ok-id", "--wait", "5")
    assert ok.code == 0, ok
    assert "SUCCESS" in ok.out and '{"sum": 3}' in ok.out and "w1" in ok.out

    bad = project.run("-A", "proj", "result", "bad-id")
    assert bad.code == 1, bad
    assert "FAILURE" in bad.out and "ValueError: boom" in bad.out
    assert 'File "proj.py", line 17' in bad.out  # the task's traceback, as data
    assert bad.err == ""

    record = json.loads(project.run("-A", "proj", "result", "bad-id", "--json").out)
    assert record["state"] == "FAILURE" and record["exception"]["type"] == "ValueError"
    assert record["retries"] == 2 and record["result"] is None


def test_queues_lists_every_known_queue_with_zeros_after_the_work_is_done(project: Project) -> None:
    project.write(
        "routed.py",
        """
        import os
        from conveyor import Conveyor

        HERE = os.path.dirname(os.path.abspath(__file__))
        app = Conveyor("routed", broker="sqlite:///" + os.path.join(HERE, "broker.sqlite3"))
        app.conf.task_routes = {"feeds.*": "feeds", "mail.*": {"queue": "email"}}
        app.conf.beat_schedule = {"sync": {"task": "x.sync", "schedule": 60, "options": {"queue": "nightly"}}}

        @app.task(name="routed.note", queue="notifications")
        def note():
            return 1
        """,
    )
    broker = project.app().broker
    project.run("-A", "routed", "call", "routed.note")
    [delivery] = broker.fetch(["notifications"], limit=1, lease_s=30, timeout_s=1)
    broker.ack([delivery])  # the work is done: nothing ready, nothing in flight
    table = project.run("-A", "routed", "queues")
    assert table.code == 0, table
    rows = {
        line.split()[0]: line.split()[1:]
        for line in table.out.splitlines()[1:]
        if line.strip() and not line.startswith("(")
    }
    assert rows == {
        q: ["0", "0", "0", "0"] for q in ("default", "email", "feeds", "nightly", "notifications")
    }
