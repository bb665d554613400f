"""``conveyor dlq``: dead letters made through the broker API, read and repaired by the CLI."""

from __future__ import annotations

import json
import sqlite3

from conveyor.brokers.sqlite import MESSAGES
from tests.cli.conftest import Project, assert_one_line_error, assert_usage_error, dead_letter_one


def _dead_ids(project: Project) -> list[str]:
    result = project.run("-A", "proj", "dlq", "list", "--json")
    assert result.code == 0, result
    return [entry["id"] for entry in json.loads(result.out)]


def test_list_and_show_a_dead_letter(project: Project) -> None:
    app = project.app()
    task_id = dead_letter_one(app, args=(1, "x"), queue="email")

    listed = project.run("-A", "proj", "dlq", "list")
    assert listed.code == 0, listed
    header, row = listed.out.splitlines()
    assert header.split() == ["ID", "TASK", "ID", "TASK", "QUEUE", "FAILED", "AT", "REASON"]
    entry_id = row.split()[0]
    assert row.split()[1:4] == [task_id, "proj.add", "email"]
    assert "exhausted retries: ConnectionError: smtp down" in row

    entries = json.loads(project.run("-A", "proj", "dlq", "list", "-Q", "email", "--json").out)
    assert [(e["id"], e["task_id"], e["body"]["args"]) for e in entries] == [(entry_id, task_id, [1, "x"])]
    assert project.run("-A", "proj", "dlq", "list", "-Q", "default", "--json").out.strip() == "[]"

    shown = project.run("-A", "proj", "dlq", "show", entry_id)
    assert shown.code == 0, shown
    assert f"task id:    {task_id}" in shown.out
    assert "reason:     exhausted retries: ConnectionError: smtp down" in shown.out
    assert '    "args": [\n      1,\n      "x"\n    ],' in shown.out  # pretty-printed body

    by_task_id = project.run("-A", "proj", "dlq", "show", task_id)
    assert by_task_id.code == 0 and by_task_id.out == shown.out, by_task_id

    assert_one_line_error(
        project.run("-A", "proj", "dlq", "show", "424242"), "no dead letter with id or task id '424242'"
    )


def test_show_prints_an_undecodable_body_raw(project: Project) -> None:
    app = project.app()
    app.broker.queue_stats()  # creates the schema
    with sqlite3.connect(project.root / "broker.sqlite3") as conn:
        conn.execute(
            f"INSERT INTO {MESSAGES} (queue, priority, attempts, body) VALUES (?, 0, 0, ?)",
            ("default", b"not json \xff at all"),
        )
    conn.close()
    delivery = app.broker.fetch(["default"], limit=1, lease_s=30, timeout_s=1)[0]
    app.broker.dead_letter(delivery, reason="undecodable message")
    (entry_id,) = _dead_ids(project)

    shown = project.run("-A", "proj", "dlq", "show", entry_id)
    assert shown.code == 0, shown
    assert "task:       ?" in shown.out
    assert "b'not json \\xff at all'" in shown.out


def test_replay_puts_dead_letters_back_on_their_queue(project: Project) -> None:
    app = project.app()
    dead_letter_one(app, queue="email")
    dead_letter_one(app, queue="default")
    default_id, email_id = _dead_ids(project)  # newest first

    one = project.run("-A", "proj", "dlq", "replay", email_id)
    assert one.code == 0 and one.out.strip() == "Replayed 1 dead letter(s).", one
    assert _dead_ids(project) == [default_id]
    assert app.broker.queue_stats(["email"])[0].ready == 1

    missing = project.run("-A", "proj", "dlq", "replay", email_id, default_id)
    assert_one_line_error(missing, "replayed 1 of 2: 1 not in the dead-letter queue")
    assert app.broker.queue_stats(["default"])[0].ready == 1

    dead_letter_one(app)
    everything = project.run("-A", "proj", "dlq", "replay", "--all")
    assert everything.code == 0 and "Replayed 1 dead letter(s)." in everything.out, everything

    by_task = dead_letter_one(app, queue="other")
    mixed = project.run("-A", "proj", "dlq", "replay", by_task, "no-such-task-id")
    assert_one_line_error(mixed, "replayed 1 of 2: 1 not in the dead-letter queue")
    assert app.broker.dead_letters() == []

    assert_usage_error(project.run("-A", "proj", "dlq", "replay"), "--all")
    assert_usage_error(project.run("-A", "proj", "dlq", "replay", "1", "--all"), "not both")


def test_purge_deletes_dead_letters_after_confirmation(project: Project) -> None:
    app = project.app()
    for _ in range(3):
        dead_letter_one(app)
    newest, middle, oldest = _dead_ids(project)

    refused = project.run("-A", "proj", "dlq", "purge", newest)
    assert refused.code == 1 and "pass -f/--force" in refused.error_lines[-1], refused
    assert len(_dead_ids(project)) == 3

    one = project.run("-A", "proj", "dlq", "purge", newest, input="y\n")
    assert one.code == 0 and one.out.strip() == "Purged 1 dead letter(s).", one
    assert _dead_ids(project) == [middle, oldest]
    by_task = project.run("-A", "proj", "dlq", "purge", app.broker.dead_letters()[0].task_id or "", "-f")
    assert by_task.code == 0 and by_task.out.strip() == "Purged 1 dead letter(s).", by_task
    assert _dead_ids(project) == [oldest]

    every = project.run("-A", "proj", "dlq", "purge", "--all", "-f")
    assert every.code == 0 and every.out.strip() == "Purged 1 dead letter(s).", every
    assert _dead_ids(project) == []
    empty = project.run("-A", "proj", "dlq", "list")
    assert empty.code == 0 and empty.out.startswith("No dead letters on sqlite:///"), empty
    # Nothing went back to a queue: purged, not replayed.
    assert app.broker.queue_stats(["default"])[0].ready == 0
