"""The web dashboard: ``create_app`` builds it, ``serve`` runs it (``conveyor dashboard``).

Needs the ``dashboard`` extra (``pip install conveyor-tasks[dashboard]``): Starlette,
uvicorn, Jinja2 and prometheus-client. Every template, stylesheet and script it
serves ships in this package; nothing is loaded from a CDN.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor.dashboard.auth import Auth
from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from conveyor.app import Conveyor

__all__ = ["Auth", "create_app", "is_loopback", "make_auth", "missing_requirements", "serve"]
log = logging.getLogger("conveyor.dashboard")
REQUIREMENTS = ("starlette", "uvicorn", "jinja2", "prometheus_client")


def missing_requirements() -> list[str]:
    """The dashboard extra's packages this environment lacks (none: it can be served)."""
    import importlib.util

    return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]


def make_auth(
    conveyor_app: Conveyor,
    auth: str | Iterable[str] | Auth | None = None,
    viewer_auth: str | Iterable[str] | None = None,
    auth_file: str | None = None,
) -> Auth:
    """The dashboard's users: the arguments, else the ``dashboard_*`` settings.

    ``auth`` holds admins and ``viewer_auth`` read-only users, each ``user:password``
    (or ``user:scrypt$...`` hash), comma-separated for several; ``auth_file`` names a
    file of hashed users (see ``conveyor.dashboard.passwords``).
    """
    if isinstance(auth, Auth):
        return auth
    conf = conveyor_app.conf
    admins = auth if auth is not None else conf.dashboard_auth
    viewers = viewer_auth if viewer_auth is not None else conf.dashboard_viewer_auth
    users_file = auth_file if auth_file is not None else conf.dashboard_auth_file
    users = Auth(
        admins,
        viewers,
        auth_file=users_file,
        secret_key=conf.dashboard_secret_key,
        session_max_age=float(conf.dashboard_session_max_age),
    )
    if users.enabled and not users.has_admin:
        raise ConfigurationError(
            "dashboard viewers need at least one admin too (--auth-file with an admin line, or --auth)"
        )
    return users


def create_app(
    conveyor_app: Conveyor,
    *,
    auth: str | Iterable[str] | Auth | None = None,
    viewer_auth: str | Iterable[str] | None = None,
    auth_file: str | None = None,
    refresh_ms: int | None = None,
    bind: str = "127.0.0.1",
    allowed_hosts: str | Iterable[str] | None = None,
) -> Starlette:
    """The dashboard as an ASGI app, to serve with any ASGI server or mount in another app.

    Args:
        bind: the address it is served on; its names are the ``Host`` names it
            answers to (for loopback: localhost, 127.0.0.1, [::1]).
        allowed_hosts: more names, added to the ``dashboard_allowed_hosts`` setting's;
            ``*.example.com`` allows the subdomains, ``*`` any name (when a proxy in
            front checks it). Any other Host gets a 400, which is what stops a
            DNS-rebinding page from using the dashboard.
    """
    from conveyor.dashboard.hosts import bound_hosts, split_hosts
    from conveyor.dashboard.web import build_starlette

    if refresh_ms is None:
        refresh_ms = int(1000 * float(conveyor_app.conf.dashboard_refresh_interval or 0))
    vouched = split_hosts(allowed_hosts) + split_hosts(conveyor_app.conf.dashboard_allowed_hosts)
    return build_starlette(
        conveyor_app,
        make_auth(conveyor_app, auth, viewer_auth, auth_file),
        refresh_ms=refresh_ms,
        allowed_hosts=bound_hosts(bind) + vouched,
        vouched_hosts=vouched,
    )


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    conveyor_app: Conveyor,
    *,
    host: str = "127.0.0.1",
    port: int = 5555,
    auth: str | Iterable[str] | Auth | None = None,
    viewer_auth: str | Iterable[str] | None = None,
    auth_file: str | None = None,
    allowed_hosts: str | Iterable[str] | None = None,
    log_level: str = "warning",
    **uvicorn_options: Any,
) -> None:
    """Run the dashboard until interrupted (blocking).

    It answers to ``host``'s names, ``allowed_hosts`` and the ``dashboard_allowed_hosts``
    setting's: see ``create_app``.

    Raises:
        ConfigurationError: ``host`` is reachable from other machines and no user is
            configured; an open dashboard can purge queues and revoke tasks.
    """
    users = make_auth(conveyor_app, auth, viewer_auth, auth_file)
    if not users.enabled and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without a login: "
            "pass --auth-file FILE (lines from `conveyor hash-password USER`; or set "
            "CONVEYOR_DASHBOARD_AUTH), or bind to 127.0.0.1"
        )
    import uvicorn

    app = create_app(conveyor_app, auth=users, bind=host, allowed_hosts=allowed_hosts)
    log.info("dashboard on http://%s:%d/", host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, **uvicorn_options)
