"""The web server: an aiohttp application on its own thread and event loop.

Routes (docs/web.md has the full list): `/` the page, `/api/stream` server-sent events
(timeline points, alarms, status), `/api/status`, `/api/alarms`, `/clips/<name>` (FLAC) and
`/clips/<name>/spectrogram.png`, `/metrics` (Prometheus), and, when `web.commands_enabled`,
POST `/api/enrol/<start|commit|cancel|rollback>` and `/api/alarms/<event_id>/normal`.
Access and CSRF rules are `edge_monitor.web.auth`'s.

The loop thread only reads: the processing snapshot, the live feed, the clip directory.
Blocking work (an enrolment command waiting for the processing loop, a spectrogram, a
directory listing) runs in the loop's executor, never on the event loop and never on the
processing thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from edge_monitor.config.sections import WebSection
from edge_monitor.core.errors import ConfigError, EdgeMonitorError
from edge_monitor.enrolment.bank_store import EnrolmentBusyError
from edge_monitor.enrolment.control import validate_request
from edge_monitor.mqtt.topics import check_segment
from edge_monitor.pipeline.clip_store import CLIP_SUFFIX, ClipStore
from edge_monitor.pipeline.live import ScorePoint
from edge_monitor.web.auth import (
    COOKIE_NAME,
    CSRF_HEADER,
    SAFE_METHODS,
    Guard,
    origin_of,
    same_origin,
)
from edge_monitor.web.context import WebContext
from edge_monitor.web.metrics import exposition, metrics_registry
from edge_monitor.web.spectrogram import spectrogram_png

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
STREAM_TICK_S = 0.5  # how often a stream looks for new points
STATUS_EVERY_S = 1.0  # status (level meter, health, enrolment progress) per stream
KEEPALIVE_S = 15.0
ENROL_ACTIONS = ("start", "commit", "cancel", "rollback")
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
PUBLIC_PATHS = frozenset({"/login", "/static/style.css"})
CLIP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}" + re.escape(CLIP_SUFFIX))
CLIP_STAMP = "%Y%m%dT%H%M%S.%fZ"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes form POSTs send Origin: null
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(name: str) -> str:
    return resources.files("edge_monitor.web").joinpath("static", name).read_text("utf-8")


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _points(points: Mapping[str, list[ScorePoint]]) -> dict[str, list[list[float]]]:
    """Timeline points as [epoch s, score, threshold], compact for the wire."""
    return {m: [[round(p.at, 3), p.score, p.threshold] for p in ps] for m, ps in points.items()}


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def parse_clip_name(name: str) -> dict[str, Any] | None:
    """Start time, machine and event id from a clip file name (ClipStore's naming)."""
    stamp, _, rest = name.removesuffix(CLIP_SUFFIX).partition("_")
    machine, _, event_id = rest.rpartition("_")
    try:
        started = datetime.strptime(stamp, CLIP_STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    if not machine or not event_id:
        return None
    return {"event_id": event_id, "machine": machine, "clip": name, "earlier": True,
            "started_at": started.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


class WebServer:
    """Serves the web view for one daemon; `start()` binds (or raises), `stop()` closes."""

    def __init__(self, settings: WebSection, context: WebContext) -> None:
        self.settings = settings
        self.context = context
        self.guard = Guard(settings.token())
        self.registry = metrics_registry(context)
        self._origins = {origin_of(settings.base_url)}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closing = False

    # Thread control -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise EdgeMonitorError(f"the web server did not start within {START_TIMEOUT_S:g} s")
        if self._error is not None:
            s = self.settings
            raise ConfigError(
                f"web: cannot listen on {s.host}:{s.port} ({self._error}): free the port or "
                "set web.port / web.host"
            ) from self._error
        log.info("web view on %s (%s)", self.settings.base_url,
                 "token required" if self.guard.token else "loopback only, no token")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._closing = True
        future = asyncio.run_coroutine_threadsafe(self._close(), loop)
        try:
            future.result(STOP_TIMEOUT_S)
        except Exception:  # a slow client must not hold the daemon's shutdown
            log.warning("the web server did not close cleanly", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_S)
        self._loop = self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        except OSError as exc:
            self._error = exc
            self._ready.set()
            loop.run_until_complete(self._close())
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _open(self) -> None:
        app = web.Application(middlewares=[self._guard_middleware], client_max_size=64 * 1024)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=STOP_TIMEOUT_S / 2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # Access ---------------------------------------------------------------------------

    @web.middleware
    async def _guard_middleware(self, request: web.Request, handler: Handler
                                ) -> web.StreamResponse:
        guard = self.guard
        if not guard.host_allowed(request.headers.get("Host")):
            return _error(403, "this view answers only to loopback host names; to serve "
                          "others, set web.token_file and web.host")
        bearer = guard.bearer_ok(request.headers.get("Authorization"))
        authed = guard.token is None or bearer or guard.cookie_ok(
            request.cookies.get(COOKIE_NAME))
        if not authed and request.path not in PUBLIC_PATHS:
            if request.method == "GET" and request.path == "/":
                return _redirect("/login")
            return _error(401, "authentication required: send Authorization: Bearer <token> "
                          "or log in at /login", **{"WWW-Authenticate": "Bearer"})
        if request.method not in SAFE_METHODS and not bearer:
            origins = {*self._origins, f"{request.scheme}://{request.host}".lower()}
            cross = request.headers.get("Sec-Fetch-Site") == "cross-site"
            if cross or not same_origin(request.headers.get("Origin"), origins):
                return _error(403, "cross-origin request refused")
            if request.path != "/login" and not guard.csrf_ok(request.headers.get(CSRF_HEADER)):
                return _error(403, f"missing or wrong {CSRF_HEADER} header (CSRF check)")
        response = await handler(request)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    # Routes ---------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        get, post = app.router.add_get, app.router.add_post
        get("/", self._index)
        get("/login", self._login_page)
        post("/login", self._login)
        get("/static/{name}", self._static_file)
        get("/api/status", self._status)
        get("/api/alarms", self._alarms)
        get("/api/stream", self._stream)
        get("/clips/{name}", self._clip)
        get("/clips/{name}/spectrogram.png", self._spectrogram)
        if self.settings.metrics:
            get("/metrics", self._metrics)
        post("/api/enrol/{action}", self._enrol)
        post("/api/alarms/{event_id}/normal", self._alarm_normal)

    async def _index(self, request: web.Request) -> web.Response:
        page = _static("index.html").replace("__CSRF_TOKEN__", self.guard.csrf_token)
        page = page.replace("__DEVICE_ID__", self.context.device_id)
        return web.Response(text=page, content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _login_page(self, request: web.Request) -> web.Response:
        if self.guard.token is None:
            return _redirect("/")
        return web.Response(text=_static("login.html"), content_type="text/html")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        offered = form.get("token")
        if self.guard.token is None:
            return _redirect("/")
        if not isinstance(offered, str) or not self.guard.login_ok(offered):
            log.warning("web: failed login from %s", request.remote)
            return web.Response(status=401, content_type="text/html",
                                text=_static("login.html").replace("<!--error-->",
                                                                   "<p>Wrong token.</p>"))
        response = _redirect("/")
        response.set_cookie(COOKIE_NAME, self.guard.session_value, httponly=True,
                            samesite="Strict", path="/",
                            secure=self.settings.base_url.startswith("https:"))
        return response

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            return _error(404, "no such file")
        return web.Response(text=_static(name), content_type=STATIC_FILES[name])

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await self._status_body())

    async def _status_body(self) -> dict[str, Any]:
        ctx = self.context
        enrolment = None
        if ctx.enrol is not None:
            enrol = ctx.enrol
            enrolment = await asyncio.get_running_loop().run_in_executor(
                None, lambda: dict(enrol("enroll/status", {}, "web")))
        return {
            "device_id": ctx.device_id,
            "snapshot": ctx.snapshot(),
            "broker": ctx.broker(),
            "serving": ctx.serving(),
            "enrolment": enrolment,
            "commands_enabled": self.settings.commands_enabled,
            "feedback": self.settings.commands_enabled and ctx.feedback is not None,
            "clips": ctx.clip_dir() is not None,
        }

    async def _alarms(self, request: web.Request) -> web.Response:
        return web.json_response(await self._alarm_list())

    async def _alarm_list(self) -> list[dict[str, Any]]:
        """This run's alarms (newest first), then clips on disk from earlier runs."""
        alarms = self.context.live.alarms()
        for alarm in alarms:
            path = alarm.get("clip_path")
            alarm["clip"] = Path(path).name if path else None
        known = {a["clip"] for a in alarms if a.get("clip")}
        directory = self.context.clip_dir()
        if directory is not None and len(alarms) < self.settings.alarms_kept:
            stored = await asyncio.get_running_loop().run_in_executor(
                None, lambda: ClipStore(directory).clips())
            for clip in reversed(stored):
                parsed = parse_clip_name(clip.path.name)
                if parsed is not None and clip.path.name not in known:
                    alarms.append(parsed)
                if len(alarms) >= self.settings.alarms_kept:
                    break
        return alarms

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        live = self.context.live
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no", **SECURITY_HEADERS})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        seq, points = live.scores_since(0)
        alarm_version = live.alarm_version
        try:
            await response.write(_sse("hello", {
                "status": await self._status_body(), "points": _points(points),
                "alarms": await self._alarm_list()}))
            last_status = last_write = loop.time()
            while not self._closing:
                await asyncio.sleep(STREAM_TICK_S)
                now = loop.time()
                if live.seq != seq:
                    seq, points = live.scores_since(seq)
                    await response.write(_sse("scores", _points(points)))
                    last_write = now
                alarms_changed = live.alarm_version != alarm_version
                if alarms_changed:
                    alarm_version = live.alarm_version
                    await response.write(_sse("alarms", await self._alarm_list()))
                    last_write = now
                if alarms_changed or now - last_status >= STATUS_EVERY_S:
                    await response.write(_sse("status", await self._status_body()))
                    last_status = last_write = now
                if now - last_write >= KEEPALIVE_S:
                    await response.write(b": keep-alive\n\n")
                    last_write = now
        except ConnectionResetError:
            pass  # the browser went away
        return response

    def _clip_file(self, name: str) -> Path | None:
        """The clip called `name` inside the clip directory, or None (never a path outside)."""
        directory = self.context.clip_dir()
        if directory is None or not CLIP_NAME.fullmatch(name) or ".." in name:
            return None
        path = (directory / name).resolve()
        if path.parent != directory.resolve() or not path.is_file():
            return None
        return path

    async def _clip(self, request: web.Request) -> web.StreamResponse:
        path = self._clip_file(request.match_info["name"])
        if path is None:
            return _error(404, "no such clip")
        return web.FileResponse(path, headers={"Content-Type": "audio/flac",
                                               "Cache-Control": "private, max-age=3600"})

    async def _spectrogram(self, request: web.Request) -> web.Response:
        path = self._clip_file(request.match_info["name"])
        if path is None:
            return _error(404, "no such clip")
        try:
            png = await asyncio.get_running_loop().run_in_executor(None, spectrogram_png, path)
        except (OSError, RuntimeError) as exc:  # soundfile raises RuntimeError on bad FLAC
            return _error(500, f"cannot read {path.name}: {exc}")
        return web.Response(body=png, content_type="image/png",
                            headers={"Cache-Control": "private, max-age=3600"})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = exposition(self.registry)
        return web.Response(body=body, headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    # Commands -------------------------------------------------------------------------

    def _commands_refused(self) -> web.Response | None:
        if not self.settings.commands_enabled:
            return _error(403, "the web view is read-only: set web.commands_enabled: true")
        return None

    @staticmethod
    def _requester(request: web.Request) -> str:
        return f"web:{request.remote or 'unknown'}"

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json() if request.can_read_body else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgeMonitorError(f"the request body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise EdgeMonitorError("the request body must be a JSON object")
        return body

    async def _run_command(self, fn: Callable[[], Mapping[str, Any]]) -> web.Response:
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, fn)
        except EnrolmentBusyError as exc:
            return _error(409, str(exc))
        except EdgeMonitorError as exc:
            return _error(400 if exc.exit_code == 2 else 500, str(exc))
        return web.json_response({"ok": True, "result": dict(result)})

    async def _enrol(self, request: web.Request) -> web.Response:
        refused = self._commands_refused()
        if refused is not None:
            return refused
        action = request.match_info["action"]
        enrol = self.context.enrol
        if action not in ENROL_ACTIONS or enrol is None:
            return _error(404, f"unknown enrolment action {action!r}: use one of "
                          f"{', '.join(ENROL_ACTIONS)}")
        try:
            body = await self._json_body(request)
            name, args = validate_request({**body, "command": f"enroll/{action}"})
        except EdgeMonitorError as exc:
            return _error(400, str(exc))
        requester = self._requester(request)
        return await self._run_command(lambda: enrol(name, args, requester))

    async def _alarm_normal(self, request: web.Request) -> web.Response:
        refused = self._commands_refused()
        if refused is not None:
            return refused
        handler = self.context.feedback
        if handler is None:
            return _error(501, "alarm feedback is not available in this daemon")
        event_id = request.match_info["event_id"]
        alarm = self.context.live.alarm(event_id)
        if alarm is None:
            return _error(404, f"no alarm {event_id!r} in this daemon's list")
        try:
            machine = check_segment(str(alarm["machine"]), "machine")
        except EdgeMonitorError as exc:
            return _error(400, str(exc))
        requester = self._requester(request)
        return await self._run_command(lambda: handler(machine, event_id, requester))
