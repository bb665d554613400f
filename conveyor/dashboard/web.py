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
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
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
    User,
    anonymous_nonce,
)
from conveyor.dashboard.data import DashboardData
from conveyor.dashboard.hosts import HostCheck
from conveyor.dashboard.metrics import make_registry, render
from conveyor.exceptions import ConveyorError
from conveyor.schedules import get_zone, show_time

if TYPE_CHECKING:
    from conveyor.app import Conveyor

HERE = Path(__file__).parent
FAILED_LOGIN_DELAY_S = 0.5
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


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _app_zone(conveyor_app: Conveyor) -> dt.tzinfo:
    try:
        return get_zone(conveyor_app.conf.timezone)
    except ValueError:  # a bad setting is the scheduler's error to report; show UTC here
        return dt.timezone.utc


def _time_filter(zone: dt.tzinfo) -> Callable[[Any], str]:
    """Jinja's ``ts``: times in the app's ``timezone``, each with its zone."""

    def fmt(value: Any) -> str:
        if value in (None, ""):
            return "—"
        try:
            return show_time(float(value), zone)
        except (TypeError, ValueError, OverflowError):
            return str(value)

    return fmt


def _fmt_seconds(value: Any) -> str:
    if value in (None, ""):
        return "—"
    seconds = float(value)
    # A no-break space: "12.5 ms" must never wrap between the number and its unit.
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.0f}\u00a0µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f}\u00a0ms"
    if seconds < 120:
        return f"{seconds:.2f}\u00a0s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}\u00a0min"
    return f"{seconds / 3600:.1f}\u00a0h"


def _fmt_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _state_class(state: Any) -> str:
    return "state-" + str(state or "unknown").lower()


class DashboardApp:
    """Holds the data source, auth and templates; its methods are the endpoints."""

    def __init__(self, conveyor_app: Conveyor, auth: Auth, *, refresh_ms: int = 2000) -> None:
        self.conveyor = conveyor_app
        self.auth = auth
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
            ts=_time_filter(_app_zone(conveyor_app)),
            secs=_fmt_seconds,
            tojson_text=_fmt_json,
            state_class=_state_class,
        )
        self.env.globals.update(version=__version__, nav=NAV)

    # -- identity ---------------------------------------------------------------------
    def identify(self, request: Request, *, allow_basic: bool) -> Identity | None:
        if not self.auth.enabled:
            return Identity(ANONYMOUS_ADMIN, anonymous_nonce())
        session = self.auth.read_session(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            return Identity(session[0], session[1])
        if allow_basic:
            user = self.auth.check_basic(request.headers.get("authorization"))
            if user is not None:
                return Identity(user, "", via_basic=True)
        return None

    # -- rendering --------------------------------------------------------------------
    def render(
        self, request: Request, template: str, ident: Identity, status: int = 200, **ctx: Any
    ) -> Response:
        fragment = request.query_params.get("fragment") == "1"
        name = f"_{template}" if fragment else template
        html = self.env.get_template(name).render(
            request=request,
            user=ident.user,
            csrf=self.auth.csrf_token(ident.nonce) if ident.nonce else "",
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

    def page(
        self, template: str, build: Callable[[Request], dict[str, Any] | None]
    ) -> Callable[[Request], Awaitable[Response]]:
        """An HTML endpoint: login required (when auth is on), then ``build`` in a thread."""

        async def endpoint(request: Request) -> Response:
            ident = self.identify(request, allow_basic=False)
            if ident is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
            try:
                ctx = await run_in_threadpool(build, request)
            except HTTPError as exc:
                return self.render(request, "error.html", ident, status=exc.status, message=exc.message)
            if ctx is None:
                return self.render(request, "error.html", ident, status=404, message="Not found.")
            section = template.split(".")[0]
            return self.render(
                request, template, ident, active="tasks" if section == "task" else section, **ctx
            )

        return endpoint

    def api(
        self, build: Callable[[Request], dict[str, Any] | None]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ident = self.identify(request, allow_basic=True)
            if ident is None:
                return _unauthorized()
            try:
                ctx = await run_in_threadpool(build, request)
            except HTTPError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            if ctx is None:
                return JSONResponse({"error": "not found"}, status_code=404)
            return JSONResponse(ctx, headers={"cache-control": "no-store"})

        return endpoint

    def action(
        self, run: Callable[[Request, dict[str, Any]], str]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST that changes something: admin only, CSRF-checked, JSON or form."""

        async def endpoint(request: Request) -> Response:
            is_form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
            try:
                body = await _read_body(request, is_form)
            except HTTPError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            ident = self.identify(request, allow_basic=True)
            back = _safe_next(body.get("next"))

            def fail(status: int, message: str) -> Response:
                if is_form and ident is not None:
                    return RedirectResponse(_with_query(back, err=message), status_code=303)
                return JSONResponse({"error": message}, status_code=status)

            if ident is None:
                return _unauthorized()
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
            try:
                message = await run_in_threadpool(run, request, body)
            except HTTPError as exc:
                return fail(exc.status, exc.message)
            except LookupError as exc:
                return fail(404, str(exc).strip("'\""))
            except (ConveyorError, ValueError, TypeError) as exc:
                return fail(400, str(exc))
            if is_form:
                return RedirectResponse(_with_query(back, msg=message), status_code=303)
            return JSONResponse({"ok": True, "message": message})

        return endpoint

    # -- login ------------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        if not self.auth.enabled:
            return RedirectResponse("/", status_code=303)
        html = self.env.get_template("login.html").render(
            next=_safe_next(request.query_params.get("next")), error=None, username=""
        )
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    async def login(self, request: Request) -> Response:
        if not self.auth.enabled:
            return RedirectResponse("/", status_code=303)
        body = await _read_body(request, True)
        name, password = str(body.get("username", "")), str(body.get("password", ""))
        target = _safe_next(body.get("next"))
        user = self.auth.check(name, password)
        if user is None:
            # A pause per failed attempt slows password guessing without blocking others.
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)
            html = self.env.get_template("login.html").render(
                next=target, error="Wrong user name or password.", username=name
            )
            return HTMLResponse(html, status_code=401, headers=SECURITY_HEADERS)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.auth.make_session(user),
            max_age=int(self.auth.session_max_age),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        body = await _read_body(request, True)
        ident = self.identify(request, allow_basic=False)
        if ident is not None and not self.auth.check_csrf(ident.nonce, body.get(CSRF_FIELD)):
            return JSONResponse({"error": "missing or invalid CSRF token"}, status_code=403)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def metrics(self, request: Request) -> Response:
        if self.identify(request, allow_basic=True) is None:
            return _unauthorized()
        payload = await run_in_threadpool(render, self.registry)
        return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- page data --------------------------------------------------------------------
    def overview_ctx(self, request: Request) -> dict[str, Any]:
        window = _int_param(request, "window", 3600, 60, 7 * 86400)
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
                page=_int_param(request, "page", 1, 1, 10**9),
                per_page=_int_param(request, "per_page", 50, 1, 500),
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
                page=_int_param(request, "page", 1, 1, 10**9),
                per_page=_int_param(request, "per_page", 50, 1, 500),
            )
        }

    def periodic_ctx(self, request: Request) -> dict[str, Any]:
        return {"data": self.data.periodic()}

    # -- actions ----------------------------------------------------------------------
    def do_revoke(self, request: Request, body: dict[str, Any]) -> str:
        task_id = request.path_params["task_id"]
        terminate = _truthy(body.get("terminate"))
        self.data.revoke(task_id, terminate=terminate)
        return f"{'Terminating' if terminate else 'Revoked'} task {task_id}."

    def do_retry(self, request: Request, body: dict[str, Any]) -> str:
        new_id = self.data.retry_task(request.path_params["task_id"])
        return f"Sent again as task {new_id}."

    def do_purge(self, request: Request, body: dict[str, Any]) -> str:
        queue = request.path_params["queue"]
        n = self.data.purge(queue)
        return f"Purged {n} message(s) from {queue}."

    def do_replay(self, request: Request, body: dict[str, Any]) -> str:
        ids = _ids(body)
        n = self.data.replay(ids)
        return f"Replayed {n} dead letter(s)."

    def do_delete(self, request: Request, body: dict[str, Any]) -> str:
        ids = _ids(body)
        n = self.data.delete_dead_letters(ids)
        return f"Deleted {n} dead letter(s)."

    def do_periodic_add(self, request: Request, body: dict[str, Any]) -> str:
        api = self.data.periodic_api()
        if api is None:
            raise HTTPError(501, "periodic tasks need the scheduler module (app.periodic)")
        name = str(body.get("name") or "").strip()
        task = str(body.get("task") or "").strip()
        if not name or not task:
            raise ValueError("a periodic task needs a name and a task")
        schedule = _parse_schedule(str(body.get("cron") or "").strip(), str(body.get("every") or "").strip())
        args = _json_field(body, "args", [])
        kwargs = _json_field(body, "kwargs", {})
        if not isinstance(args, list):
            raise ValueError("args must be a JSON array, e.g. [1, 2]")
        if not isinstance(kwargs, dict):
            raise ValueError('kwargs must be a JSON object, e.g. {"x": 1}')
        options = {"queue": str(body["queue"]).strip()} if str(body.get("queue") or "").strip() else None
        api.add(name, task, schedule, args=args, kwargs=kwargs, options=options, enabled=True)
        return f"Added periodic task {name}."

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


def _unauthorized() -> Response:
    # No WWW-Authenticate challenge on purpose: see auth.py (browsers must never cache
    # basic credentials for this origin).
    return JSONResponse(
        {"error": "login required: sign in at /login, or send HTTP basic auth"}, status_code=401
    )


async def _read_body(request: Request, is_form: bool) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    if is_form or request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        parsed = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
        return {k: (v if k == "ids" else v[-1]) for k, v in parsed.items()}
    try:
        data = json.loads(raw)
    except ValueError:
        raise HTTPError(400, "the request body is not JSON") from None
    return data if isinstance(data, dict) else {}


def _safe_next(value: Any) -> str:
    """A same-site path to go back to; anything else (``//evil``, a URL) becomes ``/``."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def _with_query(path: str, **params: str) -> str:
    base, _, query = path.partition("?")
    kept = {k: v[-1] for k, v in parse_qs(query).items() if k not in ("msg", "err")}
    kept.update(params)
    return f"{base}?{urlencode(kept)}"


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        return max(low, min(high, int(raw)))
    except ValueError:
        raise HTTPError(400, f"{name} must be a whole number, got {raw!r}") from None


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes", "on")


def _ids(body: Mapping[str, Any]) -> list[str] | None:
    if _truthy(body.get("all")):
        return None
    ids = body.get("ids")
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise ValueError("give the dead-letter ids to act on, or all=true")
    return list(dict.fromkeys(ids))


def _json_field(body: Mapping[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    if value in (None, ""):
        return default
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ValueError(f"{key} is not valid JSON: {value!r}") from None


def _parse_schedule(cron: str, every: str) -> Any:
    if bool(cron) == bool(every):
        raise ValueError('give either a cron expression ("*/15 * * * *") or an interval ("30s"), not both')
    from conveyor import schedules

    if cron:
        return schedules.crontab.from_string(cron)
    return schedules.parse_every(every)


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
