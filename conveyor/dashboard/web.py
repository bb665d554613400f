"""The Starlette application: pages, their JSON twins under ``/api/``, actions, ``/metrics``.

Every page is rendered on the server from the same dict its ``/api/`` endpoint
returns. A page's live part (``#live``) is re-fetched as an HTML fragment by
``static/dashboard.js`` (``?fragment=1``), so refreshing never reloads the page or
loses what the user typed in a filter box.

Actions are POSTs to ``/api/...``. From a browser they carry the session's CSRF
token (a hidden form field, or the ``X-CSRF-Token`` header for fetch) and, sent
as a plain form, answer with a redirect back to the page and a message; scripts
send JSON with basic auth and get JSON back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conveyor import __version__
from conveyor.brokers.base import mask_url
from conveyor.dashboard.auth import (
    ANONYMOUS_ADMIN,
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    Auth,
    BrokerSessions,
    User,
    anonymous_nonce,
    parse_basic,
)
from conveyor.dashboard.data import DashboardData
from conveyor.dashboard.filters import (
    app_zone,
    args_text,
    fmt_json,
    fmt_seconds,
    segment,
    state_class,
    time_filter,
)
from conveyor.dashboard.forms import (
    HTTPError,
    check_path_params,
    entry_ids,
    int_param,
    is_form_request,
    periodic_fields,
    read_body,
    safe_next,
    truthy,
    with_query,
)
from conveyor.dashboard.hosts import HostCheck
from conveyor.dashboard.metrics import make_registry, render
from conveyor.dashboard.outage import BrokerOutage
from conveyor.dashboard.throttle import LoginThrottle, retry_after_header
from conveyor.exceptions import BrokerError, ConveyorError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

HERE = Path(__file__).parent
log = logging.getLogger("conveyor.dashboard")
FAILED_LOGIN_DELAY_S = 0.5
LOGIN_MAX_BODY = 16 * 1024
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}
NAV = (
    ("overview", "/", "Overview"),
    ("tasks", "/tasks", "Tasks"),
    ("workers", "/workers", "Workers"),
    ("queues", "/queues", "Queues"),
    ("dlq", "/dlq", "Dead letters"),
    ("periodic", "/periodic", "Periodic"),
)


@dataclass(frozen=True, slots=True)
class Identity:
    user: User
    nonce: str  # CSRF binding; "" for basic auth, which needs no token
    via_basic: bool = False


class Throttled(Exception):
    """Too many failed logins from this address or for this user."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(wait_s)
        self.wait_s = wait_s


class DashboardApp:
    """Holds the data source, auth and templates; its methods are the endpoints."""

    def __init__(self, conveyor_app: Conveyor, auth: Auth, *, refresh_ms: int = 2000) -> None:
        conf = conveyor_app.conf
        self.conveyor = conveyor_app
        self.auth = auth
        # Logout and password changes must reach every dashboard on the broker.
        auth.sessions = BrokerSessions(conveyor_app.broker)
        self.throttle = LoginThrottle(
            int(conf.dashboard_login_max_failures), float(conf.dashboard_login_window)
        )
        self.max_body = int(conf.dashboard_max_body_size)
        self.outage = BrokerOutage(conf.broker_url)
        self.data = DashboardData(conveyor_app)
        self.registry = make_registry(self.data)
        self.refresh_ms = refresh_ms
        self.env = Environment(
            loader=FileSystemLoader(str(HERE / "templates")),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            ts=time_filter(app_zone(conveyor_app)),
            secs=fmt_seconds,
            tojson_text=fmt_json,
            args_text=args_text,
            seg=segment,
            state_class=state_class,
        )
        self.env.globals.update(version=__version__, nav=NAV)

    # -- identity ---------------------------------------------------------------------
    async def identify(self, request: Request, *, allow_basic: bool) -> Identity | None:
        """Who sent the request (None: nobody we know).

        Raises:
            Throttled: basic auth from a locked-out address or for a locked-out user.
            BrokerError: the session store cannot be reached.
        """
        if not self.auth.enabled:
            return Identity(ANONYMOUS_ADMIN, anonymous_nonce())
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            session = await run_in_threadpool(self.auth.read_session, cookie)
            if session is not None:
                return Identity(session[0], session[1])
        credentials = parse_basic(request.headers.get("authorization")) if allow_basic else None
        if credentials is None:
            return None
        user = await self.check_password(request, *credentials, via="basic auth")
        return Identity(user, "", via_basic=True) if user is not None else None

    async def check_password(self, request: Request, name: str, password: str, *, via: str) -> User | None:
        """Check a login attempt against the failure limits, and count it.

        Raises:
            Throttled: too many recent failures from this address or for this name;
                the password is not even checked, so a guesser learns nothing.
        """
        client = request.client.host if request.client else "unknown"
        wait = self.throttle.retry_after(client, name)
        if wait is not None:
            # The password was not checked; the lockout itself was logged when it began,
            # and a line per refused try would bury the log under a guesser's traffic.
            log.debug("dashboard: login refused for user %r from %s (%s): locked out", name, client, via)
            raise Throttled(wait)
        # scrypt is slow on purpose: keep it off the event loop.
        user = await run_in_threadpool(self.auth.check, name, password)
        if user is None:
            self.throttle.failed(client, name)
            log.warning("dashboard: failed login for user %r from %s (%s)", name, client, via)
            locked = self.throttle.retry_after(client, name)
            if locked is not None:
                log.warning(
                    "dashboard: logins for user %r or from %s refused for %.0f s after %d failures",
                    name,
                    client,
                    locked,
                    self.throttle.max_failures,
                )
            return None
        self.throttle.succeeded(client, name)
        return user

    # -- rendering --------------------------------------------------------------------
    def render(
        self, request: Request, template: str, ident: Identity | None, status: int = 200, **ctx: Any
    ) -> Response:
        fragment = request.query_params.get("fragment") == "1"
        name = f"_{template}" if fragment else template
        html = self.env.get_template(name).render(
            request=request,
            user=ident.user if ident is not None else None,
            csrf=self.auth.csrf_token(ident.nonce) if ident is not None and ident.nonce else "",
            auth_enabled=self.auth.enabled,
            refresh_ms=self.refresh_ms,
            broker=mask_url(self.conveyor.conf.broker_url),
            msg=request.query_params.get("msg"),
            err=request.query_params.get("err"),
            path=request.url.path,
            query=request.url.query,
            **ctx,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def unavailable(
        self, request: Request, ident: Identity | None, exc: BrokerError, section: str
    ) -> Response:
        """The page's frame with the outage banner; its live part retries on its own."""
        message = self.outage.failed(exc)
        return self.render(request, "unavailable.html", ident, status=503, outage=message, active=section)

    def page(
        self, template: str, build: Callable[[Request], dict[str, Any] | None]
    ) -> Callable[[Request], Awaitable[Response]]:
        """An HTML endpoint: login required (when auth is on), then ``build`` in a thread."""
        section = template.split(".")[0]
        active = "tasks" if section == "task" else section

        async def endpoint(request: Request) -> Response:
            try:
                check_path_params(request)
            except HTTPError as exc:
                return PlainTextResponse(exc.message, status_code=exc.status, headers=SECURITY_HEADERS)
            ident: Identity | None = None
            try:
                ident = await self.identify(request, allow_basic=False)
                if ident is None:
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
                ctx = await run_in_threadpool(build, request)
            except HTTPError as exc:
                return self.render(request, "error.html", ident, status=exc.status, message=exc.message)
            except BrokerError as exc:
                return self.unavailable(request, ident, exc, active)
            self.outage.succeeded()
            if ctx is None:
                return self.render(request, "error.html", ident, status=404, message="Not found.")
            return self.render(request, template, ident, active=active, **ctx)

        return endpoint

    def api(
        self, build: Callable[[Request], dict[str, Any] | None]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                check_path_params(request)
                if await self.identify(request, allow_basic=True) is None:
                    return _unauthorized()
                ctx = await run_in_threadpool(build, request)
            except HTTPError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            except Throttled as exc:
                return _too_many(exc)
            except BrokerError as exc:
                return JSONResponse({"error": self.outage.failed(exc)}, status_code=503)
            self.outage.succeeded()
            if ctx is None:
                return JSONResponse({"error": "not found"}, status_code=404)
            return JSONResponse(ctx, headers={"cache-control": "no-store"})

        return endpoint

    def action(
        self, run: Callable[[Request, dict[str, Any]], str]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST that changes something: admin only, CSRF-checked, JSON or form.

        Who sent it is settled before its body is read, so an anonymous request costs
        no memory; the body is then read up to ``dashboard_max_body_size``.
        """

        async def endpoint(request: Request) -> Response:
            is_form = is_form_request(request)
            try:
                check_path_params(request)
                ident = await self.identify(request, allow_basic=True)
                if ident is None:
                    return _unauthorized()
                body = await read_body(request, self.max_body, is_form=is_form)
            except HTTPError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            except Throttled as exc:
                return _too_many(exc)
            except BrokerError as exc:
                return JSONResponse({"error": self.outage.failed(exc)}, status_code=503)
            back = safe_next(body.get("next"))

            def fail(status: int, message: str) -> Response:
                if is_form:
                    return RedirectResponse(with_query(back, err=message), status_code=303)
                return JSONResponse({"error": message}, status_code=status)

            refused = self.refuse_action(request, ident, body, is_form)
            if refused is not None:
                return refused
            try:
                message = await run_in_threadpool(run, request, body)
            except HTTPError as exc:
                return fail(exc.status, exc.message)
            except BrokerError as exc:
                return fail(503, self.outage.failed(exc))
            except LookupError as exc:
                return fail(404, str(exc).strip("'\""))
            except (ConveyorError, ValueError, TypeError) as exc:
                return fail(400, str(exc))
            self.outage.succeeded()
            if is_form:
                return RedirectResponse(with_query(back, msg=message), status_code=303)
            return JSONResponse({"ok": True, "message": message})

        return endpoint

    def refuse_action(
        self, request: Request, ident: Identity, body: dict[str, Any], is_form: bool
    ) -> Response | None:
        """The answer to an action this identity may not take (None: it may)."""
        if not ident.via_basic:
            token = request.headers.get(CSRF_HEADER) or body.get(CSRF_FIELD)
            if not self.auth.check_csrf(ident.nonce, token if isinstance(token, str) else None):
                return JSONResponse(
                    {"error": "missing or invalid CSRF token: reload the page and try again"},
                    status_code=403,
                )
        if not ident.user.is_admin:
            denied = f"{ident.user.name} is a viewer: only admins can do this"
            if is_form:
                return self.render(request, "error.html", ident, status=403, message=denied)
            return JSONResponse({"error": denied}, status_code=403)
        return None

    # -- login ------------------------------------------------------------------------
    def login_form(
        self, target: str, error: str | None, username: str, status: int, **headers: str
    ) -> Response:
        html = self.env.get_template("login.html").render(next=target, error=error, username=username)
        return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **headers})

    async def login_page(self, request: Request) -> Response:
        if not self.auth.enabled:
            return RedirectResponse("/", status_code=303)
        return self.login_form(safe_next(request.query_params.get("next")), None, "", 200)

    async def login(self, request: Request) -> Response:
        if not self.auth.enabled:
            return RedirectResponse("/", status_code=303)
        try:
            # Anyone may post here, so the cap is a login's size, not an action's.
            body = await read_body(request, min(self.max_body, LOGIN_MAX_BODY), is_form=True)
        except HTTPError as exc:
            return PlainTextResponse(exc.message, status_code=exc.status, headers=SECURITY_HEADERS)
        name, password = str(body.get("username", "")), str(body.get("password", ""))
        target = safe_next(body.get("next"))
        try:
            user = await self.check_password(request, name, password, via="login form")
            if user is None:
                # A pause per failed attempt slows a guesser on one connection; the
                # throttle stops one using many.
                await asyncio.sleep(FAILED_LOGIN_DELAY_S)
                return self.login_form(target, "Wrong user name or password.", name, 401)
            cookie = await run_in_threadpool(self.auth.make_session, user)
        except Throttled as exc:
            wait = retry_after_header(exc.wait_s)
            text = f"Too many failed logins: try again in {wait['retry-after']} s."
            return self.login_form(target, text, name, 429, **wait)
        except BrokerError as exc:
            return self.login_form(target, self.outage.failed(exc), name, 503)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(self.auth.session_max_age),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        try:
            ident = await self.identify(request, allow_basic=False)
            body = await read_body(request, self.max_body, is_form=True) if ident is not None else {}
            if ident is not None:
                if not self.auth.check_csrf(ident.nonce, body.get(CSRF_FIELD)):
                    return JSONResponse({"error": "missing or invalid CSRF token"}, status_code=403)
                await run_in_threadpool(self.auth.end_session, request.cookies.get(SESSION_COOKIE))
        except HTTPError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except BrokerError as exc:
            return JSONResponse({"error": self.outage.failed(exc)}, status_code=503)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def metrics(self, request: Request) -> Response:
        try:
            if await self.identify(request, allow_basic=True) is None:
                return _unauthorized()
            payload = await run_in_threadpool(render, self.registry)
        except Throttled as exc:
            return _too_many(exc)
        except BrokerError as exc:
            return PlainTextResponse(self.outage.failed(exc), status_code=503)
        self.outage.succeeded()
        return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- page data --------------------------------------------------------------------
    def overview_ctx(self, request: Request) -> dict[str, Any]:
        window = int_param(request, "window", 3600, 60, 7 * 86400)
        bucket = max(1, window // 60)
        return {"data": self.data.overview(window_s=window, bucket_s=bucket)}

    def tasks_ctx(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        return {
            "data": self.data.tasks(
                state=q.get("state") or None,
                name=q.get("name") or None,
                queue=q.get("queue") or None,
                worker=q.get("worker") or None,
                search=(q.get("search") or "").strip() or None,
                page=int_param(request, "page", 1, 1, 10**9),
                per_page=int_param(request, "per_page", 50, 1, 500),
            )
        }

    def task_ctx(self, request: Request) -> dict[str, Any] | None:
        task_id = request.path_params["task_id"]
        task = self.data.task(task_id)
        if task is None:
            # Not seen yet (events arrive within a second or so, a queued task has
            # none until a worker takes it): the page waits for it, live.
            task = self.data.unknown_task(task_id)
        return {"task": task}

    def workers_ctx(self, request: Request) -> dict[str, Any]:
        return {"data": self.data.workers()}

    def queues_ctx(self, request: Request) -> dict[str, Any]:
        return {"data": self.data.queues()}

    def dlq_ctx(self, request: Request) -> dict[str, Any]:
        return {
            "data": self.data.dead_letters(
                queue=request.query_params.get("queue") or None,
                page=int_param(request, "page", 1, 1, 10**9),
                per_page=int_param(request, "per_page", 50, 1, 500),
            )
        }

    def periodic_ctx(self, request: Request) -> dict[str, Any]:
        return {"data": self.data.periodic()}

    # -- actions ----------------------------------------------------------------------
    def do_revoke(self, request: Request, body: dict[str, Any]) -> str:
        task_id = request.path_params["task_id"]
        terminate = truthy(body.get("terminate"))
        self.data.revoke(task_id, terminate=terminate)
        return f"{'Terminating' if terminate else 'Revoked'} task {task_id}."

    def do_retry(self, request: Request, body: dict[str, Any]) -> str:
        new_id = self.data.retry_task(request.path_params["task_id"])
        return f"Sent again as task {new_id}."

    def do_forget_worker(self, request: Request, body: dict[str, Any]) -> str:
        name = request.path_params["name"]
        self.data.forget_worker(name)
        return f"Forgot worker {name}."

    def do_purge(self, request: Request, body: dict[str, Any]) -> str:
        queue = request.path_params["queue"]
        n = self.data.purge(queue)
        return f"Purged {n} message(s) from {queue}."

    def do_replay(self, request: Request, body: dict[str, Any]) -> str:
        ids = entry_ids(body)
        n = self.data.replay(ids)
        return f"Replayed {n} dead letter(s)."

    def do_delete(self, request: Request, body: dict[str, Any]) -> str:
        ids = entry_ids(body)
        n = self.data.delete_dead_letters(ids)
        return f"Deleted {n} dead letter(s)."

    def do_periodic_add(self, request: Request, body: dict[str, Any]) -> str:
        api = self.data.periodic_api()
        if api is None:
            raise HTTPError(501, "periodic tasks need the scheduler module (app.periodic)")
        name, task, schedule, args, kwargs, options = periodic_fields(body)
        problem = api.unknown_task(task)  # stored all the same: the workers' app may define it
        api.add(name, task, schedule, args=args, kwargs=kwargs, options=options, enabled=True)
        return f"Added periodic task {name}." + (f" Warning: {problem}" if problem else "")

    def do_periodic(self, request: Request, body: dict[str, Any]) -> str:
        api = self.data.periodic_api()
        if api is None:
            raise HTTPError(501, "periodic tasks need the scheduler module (app.periodic)")
        name, op = request.path_params["name"], request.path_params["op"]
        if op not in ("enable", "disable", "remove"):
            raise HTTPError(404, f"unknown periodic action {op!r}")
        if api.get(name) is None:
            raise HTTPError(404, f"no periodic task named {name!r}")
        getattr(api, op)(name)
        return (
            f"{op.capitalize()}d periodic task {name}."
            if op != "remove"
            else f"Removed periodic task {name}."
        )

    # -- routes -----------------------------------------------------------------------
    def routes(self) -> list[Any]:
        return [
            Route("/", self.page("overview.html", self.overview_ctx)),
            Route("/tasks", self.page("tasks.html", self.tasks_ctx)),
            Route("/tasks/{task_id}", self.page("task.html", self.task_ctx)),
            Route("/workers", self.page("workers.html", self.workers_ctx)),
            Route("/queues", self.page("queues.html", self.queues_ctx)),
            Route("/dlq", self.page("dlq.html", self.dlq_ctx)),
            Route("/periodic", self.page("periodic.html", self.periodic_ctx)),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/metrics", self.metrics),
            Route("/api/overview", self.api(lambda r: self.overview_ctx(r)["data"])),
            Route("/api/tasks", self.api(lambda r: self.tasks_ctx(r)["data"])),
            Route("/api/tasks/{task_id}", self.api(lambda r: self.data.task(r.path_params["task_id"]))),
            Route("/api/tasks/{task_id}/revoke", self.action(self.do_revoke), methods=["POST"]),
            Route("/api/tasks/{task_id}/retry", self.action(self.do_retry), methods=["POST"]),
            Route("/api/workers", self.api(lambda r: self.data.workers())),
            Route("/api/workers/{name}/forget", self.action(self.do_forget_worker), methods=["POST"]),
            Route("/api/queues", self.api(lambda r: self.data.queues())),
            Route("/api/queues/{queue}/purge", self.action(self.do_purge), methods=["POST"]),
            Route("/api/dlq", self.api(lambda r: self.dlq_ctx(r)["data"])),
            Route("/api/dlq/replay", self.action(self.do_replay), methods=["POST"]),
            Route("/api/dlq/delete", self.action(self.do_delete), methods=["POST"]),
            Route("/api/periodic", self.api(lambda r: self.data.periodic()), methods=["GET"]),
            Route("/api/periodic", self.action(self.do_periodic_add), methods=["POST"]),
            Route("/api/periodic/{name}/{op}", self.action(self.do_periodic), methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]


def _too_many(exc: Throttled) -> Response:
    return JSONResponse(
        {"error": "too many failed logins: try again later"},
        status_code=429,
        headers=retry_after_header(exc.wait_s),
    )


def _unauthorized() -> Response:
    # No WWW-Authenticate challenge on purpose: see auth.py (browsers must never cache
    # basic credentials for this origin).
    return JSONResponse(
        {"error": "login required: sign in at /login, or send HTTP basic auth"}, status_code=401
    )


def build_starlette(
    conveyor_app: Conveyor,
    auth: Auth,
    *,
    refresh_ms: int = 2000,
    allowed_hosts: Sequence[str] = ("*",),
    vouched_hosts: Sequence[str] = (),
) -> Starlette:
    dash = DashboardApp(conveyor_app, auth, refresh_ms=refresh_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Load the retained event history (up to events_max_count) before the first
        # visitor asks, so nobody waits the second it takes on a full log.
        threading.Thread(target=dash.data.warm_up, name="conveyor-dashboard-warm-up", daemon=True).start()
        yield

    host_check = Middleware(HostCheck, allowed=allowed_hosts, vouched=vouched_hosts)
    app = Starlette(routes=dash.routes(), lifespan=lifespan, middleware=[host_check])
    app.state.dashboard = dash
    app.state.started_at = time.time()
    return app
