"""``conveyor report``: what to paste into a bug report.

Versions (Conveyor, Python, the platform, the libraries it can use), every setting of
the app with secrets masked, and the broker and result store as this process reaches
them. Celery's ``celery report``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import sys
from typing import Any

import click

from conveyor import __version__
from conveyor.brokers.base import mask_url
from conveyor.cli.context import CliState, pass_state, shared_options

LIBRARIES = (
    "click", "croniter", "orjson", "redis", "hiredis", "starlette", "uvicorn", "jinja2",
    "prometheus-client", "django", "psycopg", "msgpack",
)  # fmt: skip
SECRET = re.compile(r"pass|secret|auth|token|key", re.I)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _shown(name: str, value: Any) -> str:
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if value and SECRET.search(name):
        return "********"
    return repr(value)


@click.command()
@shared_options(envvars=False)
@pass_state
def report(state: CliState) -> None:
    """Print versions, settings (secrets masked) and the broker seen, for bug reports."""
    app = state.get_app()
    lines = [
        f"conveyor:   {__version__}",
        f"python:     {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"platform:   {platform.platform()}",
        "libraries:  " + ", ".join(f"{lib} {_version(lib)}" for lib in LIBRARIES),
        f"app:        {app.main or '__main__'} ({len(app.tasks)} task(s) registered)",
        f"broker:     {mask_url(app.conf.broker_url)} ({_reach(app)})",
        f"results:    {mask_url(str(app.conf.result_backend or app.conf.broker_url))}",
        "settings:",
    ]
    settings = app.conf.as_dict()
    lines += [f"  {name} = {_shown(name, settings[name])}" for name in sorted(settings)]
    click.echo("\n".join(lines))


def _reach(app: Any) -> str:
    try:
        stats = app.broker.queue_stats()
    except Exception as exc:  # a report must print even when the broker is down
        return f"unreachable: {type(exc).__name__}: {exc}"
    return f"reachable, {len(stats)} queue(s) holding messages"
