"""The command line's error contract (DESIGN.md, "Command line").

Exit 0 ok, 1 failure, 2 usage error; a failure is one ``Error:`` line naming what
went wrong, never a traceback; a broker URL's password is never printed.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import conveyor
from tests.cli.conftest import Project, Result, assert_one_line_error, assert_usage_error


def test_version(project: Project) -> None:
    result = project.run("--version")
    assert result.code == 0, result
    assert result.out.strip() == f"conveyor {conveyor.__version__}"


def test_unknown_command_is_a_usage_error(project: Project) -> None:
    assert_usage_error(project.run("-A", "proj", "frobnicate"), "No such command 'frobnicate'")


def test_missing_module_is_one_line(project: Project) -> None:
    assert_one_line_error(project.run("-A", "nosuchproject", "queues"), "'nosuchproject'", "PYTHONPATH")


def test_error_inside_the_project_module_names_module_and_error(project: Project) -> None:
    project.write(
        "broken.py",
        """
        from conveyor import Conveyor
        import not_installed_dependency
        app = Conveyor("broken")
        """,
    )
    assert_one_line_error(
        project.run("-A", "broken", "queues"),
        "cannot import 'broken'",
        "ModuleNotFoundError",
        "not_installed_dependency",
    )


def test_exception_and_syntax_error_in_the_project_module(project: Project) -> None:
    project.write("crashes.py", "raise RuntimeError('settings database unreachable\\nsecond line')\n")
    assert_one_line_error(
        project.run("-A", "crashes", "queues"), "RuntimeError", "settings database unreachable second line"
    )
    project.write("typo.py", "def broken(:\n    pass\n")
    assert_one_line_error(project.run("-A", "typo", "queues"), "cannot import 'typo'", "SyntaxError")


def test_traceback_flag_shows_the_traceback_for_bug_reports(project: Project) -> None:
    project.write("crashes.py", "raise RuntimeError('boom')\n")
    result = project.run("--traceback", "-A", "crashes", "queues")
    assert result.code == 1
    assert "Traceback" in result.err and "RuntimeError: boom" in result.err


def test_attribute_that_is_not_an_app(project: Project) -> None:
    assert_one_line_error(project.run("-A", "proj:add", "queues"), "proj:add is a Task, not a Conveyor app")
    assert_one_line_error(project.run("-A", "proj:nothing", "queues"), "no attribute 'nothing'")
    assert_usage_error(project.run("-A", "proj:", "queues"), "module:attribute")


def test_module_without_an_app(project: Project) -> None:
    project.write("plain.py", "x = 1\n")
    assert_one_line_error(project.run("-A", "plain", "queues"), "no Conveyor app in module 'plain'")


def test_app_found_by_attribute_scan_and_in_a_package_submodule(project: Project) -> None:
    project.write(
        "other.py",
        f"""
        from conveyor import Conveyor
        flask_app = object()
        my_queue_app = Conveyor("other", broker={project.broker_url!r})
        """,
    )
    # A Celery-style Django layout: `-A core` finds core/celery.py (README: keep the name).
    project.write("core/__init__.py", "")
    project.write(
        "core/celery.py",
        f"""
        from conveyor import Conveyor
        app = Conveyor("core", broker={project.broker_url!r})
        """,
    )
    project.app().send_task("proj.add", args=[1, 2], queue="scanned")
    for path in ("other", "other:my_queue_app", "core"):
        result = project.run("-A", path, "queues")
        assert result.code == 0, result
        assert "scanned" in result.out, result


def test_two_apps_in_one_module_must_be_named(project: Project) -> None:
    project.write(
        "twins.py",
        """
        from conveyor import Conveyor
        first = Conveyor("a", broker="memory://")
        second = Conveyor("b", broker="memory://")
        """,
    )
    assert_one_line_error(project.run("-A", "twins", "queues"), "first, second", "-A twins:NAME")


def test_worker_needs_the_app(project: Project) -> None:
    result = project.run("worker", "--pool", "solo")
    assert_usage_error(result, "needs the app that defines your tasks", "-A module", "CONVEYOR_APP")


def test_usage_errors_exit_2_and_name_the_option(project: Project) -> None:
    cases = {
        ("--args", "[1, 2"): "--args",
        ("--args", '{"x": 1}'): "must be a JSON array",
        ("--kwargs", "[1]"): "must be a JSON object",
        ("--kwargs", "{x: 1}"): "--kwargs",
        ("--priority", "10"): "--priority",
        ("--countdown", "-1"): "--countdown",
    }
    for (option, value), fragment in cases.items():
        assert_usage_error(project.run("-A", "proj", "call", "proj.add", option, value), fragment)
    assert project.run("-A", "proj", "worker", "--pool", "gevent").code == 2
    assert project.run("-A", "proj", "worker", "-c", "0").code == 2
    # Nothing was sent by any of the refused calls.
    assert project.app().broker.queue_stats() == []


def test_broker_password_is_never_printed(project: Project) -> None:
    url = "redis+foo://user:secret@broker.internal:6379/0"
    for args in (["--broker", url, "queues"], ["-A", "proj", "--broker", url, "dlq", "list"]):
        result = project.run(*args)
        line = assert_one_line_error(result, "unknown broker URL scheme", "user:***@broker.internal")
        assert "secret" not in result.out + result.err, line


def test_bad_setting_in_the_environment_is_one_line(project: Project) -> None:
    result = project.run("queues", env={"CONVEYOR_WORKER_CONCURRENCY": "lots"})
    assert_one_line_error(result, "CONVEYOR_WORKER_CONCURRENCY")


def test_app_from_environment_and_after_the_command(project: Project) -> None:
    project.app().send_task("proj.add", args=[1, 2])
    for args, env in ((["queues"], {"CONVEYOR_APP": "proj"}), (["queues", "-A", "proj"], {})):
        result = project.run(*args, env=env)
        assert result.code == 0, result
        assert "default" in result.out, result
    # A -A typed before the command wins over CONVEYOR_APP.
    result = project.run("-A", "proj", "queues", env={"CONVEYOR_APP": "nosuchproject"})
    assert result.code == 0, result


def test_a_broken_include_stops_the_worker_with_one_line(project: Project) -> None:
    project.write(
        "withinclude.py",
        f"""
        from conveyor import Conveyor
        app = Conveyor("w", broker={project.broker_url!r}, include=["tasks_broken"])
        """,
    )
    project.write("tasks_broken.py", "import os\nundefined_name\n")
    result = project.run("-A", "withinclude", "worker", "--pool", "solo")
    assert_one_line_error(result, "cannot import 'tasks_broken'", "NameError", "undefined_name")


def test_the_current_directory_is_searched_like_celery(project: Project, tmp_path_factory: Any) -> None:
    # An installed console script has its own directory, not the cwd, on sys.path.
    script = tmp_path_factory.mktemp("bin") / "conveyor_script.py"
    script.write_text("from conveyor.cli.main import main\nmain()\n")
    proc = subprocess.run(
        [sys.executable, str(script), "-A", "proj", "queues"],
        cwd=project.root,
        env=project.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def test_dashboard_without_its_extra_is_one_line_naming_the_extra(project: Project) -> None:
    # sys.modules[name] = None: the package looks uninstalled to import and find_spec alike.
    code = (
        "import sys; sys.modules['uvicorn'] = None; sys.argv[0] = 'conveyor'; "
        "from conveyor.cli.main import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "-A", "proj", "dashboard", "--port", "0"],
        cwd=project.root,
        env=project.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert_one_line_error(result, "uvicorn not installed", "pip install 'conveyor-tasks[dashboard]'")
    assert result.out == ""
