"""``conveyor periodic``: run-time schedules from the command line; config ones read-only."""

from __future__ import annotations

import json
import re

from tests.cli.conftest import Project, assert_one_line_error, assert_usage_error

WITH_CONFIG = """
import os
from conveyor import Conveyor, crontab

HERE = os.path.dirname(os.path.abspath(__file__))
app = Conveyor("cfg", broker="sqlite:///" + os.path.join(HERE, "broker.sqlite3"))
app.conf.beat_schedule = {
    "nightly": {"task": "cfg.cleanup", "schedule": crontab(minute=0, hour=2), "options": {"queue": "maint"}},
}
"""


def test_add_list_disable_enable_remove(project: Project) -> None:
    assert "No periodic tasks" in project.run("-A", "proj", "periodic", "list").out
    added = project.run(
        "-A",
        "proj",
        "periodic",
        "add",
        "poll",
        "proj.add",
        "--every",
        "30s",
        "--args",
        "[1, 2]",
        "-Q",
        "feeds",
    )
    assert added.code == 0, added
    assert "Added 'poll': proj.add every 30s" in added.out
    cron = project.run(
        "-A", "proj", "periodic", "add", "report", "proj.add", "--cron", "*/15 9-17 * * mon-fri"
    )
    assert cron.code == 0, cron
    table = project.run("-A", "proj", "periodic", "list")
    assert table.code == 0, table
    lines = table.out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "SOURCE", "TASK", "SCHEDULE"]
    assert lines[1].startswith("poll") and "every 30s" in lines[1] and "runtime" in lines[1]
    assert "*/15 9-17 * * mon-fri" in lines[2]

    entries = json.loads(project.run("-A", "proj", "periodic", "list", "--json").out)
    poll = entries[0]
    assert poll["args"] == [1, 2] and poll["options"] == {"queue": "feeds"} and poll["enabled"] is True
    assert poll["next_run_at"] and poll["last_run_at"] is None and poll["total_run_count"] == 0

    assert project.run("-A", "proj", "periodic", "disable", "poll").code == 0
    entries = json.loads(project.run("-A", "proj", "periodic", "list", "--json").out)
    assert entries[0]["enabled"] is False and entries[0]["next_run_at"] is None
    assert project.run("-A", "proj", "periodic", "enable", "poll").code == 0
    assert json.loads(project.run("-A", "proj", "periodic", "list", "--json").out)[0]["enabled"] is True

    assert project.run("-A", "proj", "periodic", "remove", "poll").code == 0
    names = [e["name"] for e in json.loads(project.run("-A", "proj", "periodic", "list", "--json").out)]
    assert names == ["report"]
    # The API sees what the CLI stored.
    assert project.app().periodic.get("report") is not None


def test_works_without_a_project_on_the_broker(project: Project) -> None:
    added = project.run("-b", project.broker_url, "periodic", "add", "p", "proj.add", "--every", "1m")
    assert added.code == 0, added
    assert "p" in project.run("-b", project.broker_url, "periodic", "list").out


def test_config_schedules_are_listed_read_only(project: Project) -> None:
    project.write("cfgproj.py", WITH_CONFIG)
    listed = project.run("-A", "cfgproj", "periodic", "list")
    assert listed.code == 0, listed
    assert "nightly" in listed.out and "config" in listed.out and "0 2 * * *" in listed.out
    for action in ("disable", "enable", "remove"):
        assert_one_line_error(project.run("-A", "cfgproj", "periodic", action, "nightly"), "read-only")
    assert_one_line_error(
        project.run("-A", "cfgproj", "periodic", "add", "nightly", "x.y", "--every", "1h"), "read-only"
    )


def test_bad_input_is_one_line(project: Project) -> None:
    assert_usage_error(project.run("periodic", "add", "x", "proj.add"), "exactly one of --every")
    assert_usage_error(
        project.run("periodic", "add", "x", "proj.add", "--every", "1m", "--cron", "* * * * *"), "exactly one"
    )
    assert_usage_error(project.run("periodic", "add", "x", "proj.add", "--every", "soon"), "--every")
    assert_usage_error(project.run("periodic", "add", "x", "proj.add", "--cron", "*/15 * * *"), "5 fields")
    assert_usage_error(
        project.run("periodic", "add", "x", "proj.add", "--cron", "61 * * * *"), "out of range"
    )
    assert_usage_error(
        project.run("periodic", "add", "x", "proj.add", "--every", "1m", "--args", "[1,"), "JSON"
    )
    assert_usage_error(
        project.run("periodic", "add", "x", "proj.add", "--every", "1m", "--kwargs", "[1]"), "JSON object"
    )
    assert_one_line_error(project.run("periodic", "disable", "nope"), "no periodic task named 'nope'")
    assert_one_line_error(project.run("periodic", "remove", "nope"), "no periodic task named 'nope'")


def test_bad_beat_schedule_is_one_line(project: Project) -> None:
    project.write(
        "badproj.py",
        """
        import os
        from conveyor import Conveyor
        app = Conveyor("bad", broker="sqlite:///" + os.path.join(os.path.dirname(__file__), "b.sqlite3"))
        app.conf.beat_schedule = {"x": {"task": "t", "schedule": 5, "options": {"queu": "q"}}}
        """,
    )
    assert_one_line_error(project.run("-A", "badproj", "periodic", "list"), "beat_schedule['x']", "queu")


def test_times_are_shown_in_the_apps_timezone_with_the_zone(project: Project) -> None:
    # Berlin in December is CET; the next 02:00 run is listed as 02:00:00 CET, as beat logs it.
    project.write("berlin.py", WITH_CONFIG + '\napp.conf.timezone = "Europe/Berlin"\n')
    listed = project.run("-A", "berlin", "periodic", "list")
    assert listed.code == 0, listed
    assert re.search(r"\d{4}-\d\d-\d\d 02:00:00 CES?T", listed.out), listed


def test_add_warns_on_stderr_when_the_app_has_no_such_task(project: Project) -> None:
    added = project.run("-A", "proj", "periodic", "add", "ghost", "proj.nope", "--every", "30s")
    assert added.code == 0, added
    assert "Added 'ghost'" in added.out
    assert len(added.error_lines) == 1, added
    assert added.error_lines[0].startswith("Warning: ") and "proj.nope" in added.err, added
    assert "dead-letter" in added.err
    known = project.run("-A", "proj", "periodic", "add", "real", "proj.add", "--every", "30s")
    assert known.code == 0 and known.err.strip() == "", known
