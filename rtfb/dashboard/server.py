"""The dashboard's web server: Starlette app served by uvicorn in its own thread.

Routes (all JSON but the page and its static files):

- ``GET /`` the page; ``GET /static/...`` its script, styles and uPlot (shipped in the
  package, nothing is fetched from the internet);
- ``GET /api/status`` processed, index, block, latency_ms, value, fd, flags, paused, ...;
- ``GET /api/snapshot`` everything the page shows (info, per-volume rows, events);
- ``GET /api/stream`` server-sent events: a snapshot, then one patch per change;
- ``GET /api/slices`` mean EPI, ROI and change-map slices;
- ``POST /api/mark`` (``{"label": "needle in"}``), ``POST /api/pause``,
  ``POST /api/resume``, ``POST /api/stop``: operator controls. They need the session's
  token in an ``Authorization: Bearer TOKEN`` (or ``X-RTFB-Token``) header: 401 without
  it, 403 with a wrong one, 409 when no session runs (a recorded session).

The server binds the loopback interface unless another host is asked for explicitly, and
answers only requests whose ``Host`` is that address (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._utils.net import is_loopback
from .commands import CommandQueue, OperatorCommand
from .model import DashboardModel
from .slices import SliceSource

__all__ = ["DashboardServer", "build_app", "check_address"]

logger = logging.getLogger("rtfb.dashboard")

STATIC = Path(__file__).parent / "static"
_MAX_BODY = 4096
_CLIENT_QUEUE = 20000


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def check_address(host: str, port: int) -> int:
    """Check that the dashboard can serve on ``host:port``; returns the port.

    Raises
    ------
    ValueError
        Port out of range.
    OSError
        The address cannot be bound (in use, unknown interface).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"the port must be an integer in [0, 65535], got {port!r}.")
    _bind(host, port).close()
    return port


def _json(data: Any, status: int = 200, headers: dict | None = None):
    from starlette.responses import Response

    body = json.dumps(data, allow_nan=False, default=_default, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store", **(headers or {})})


def _default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def build_app(model: DashboardModel, *, token: str | None = None,
              commands: CommandQueue | None = None, slices: SliceSource | None = None,
              allowed_hosts: list[str] | None = None,
              accepting: Callable[[], bool] | None = None):
    """The Starlette application of the dashboard.

    Parameters
    ----------
    model : DashboardModel
        What the page shows.
    token : str | None
        Operator token required by the ``POST /api/...`` controls (None: no controls).
    commands : CommandQueue | None
        Where controls go (the session's queue); None for a recorded session.
    slices : SliceSource | None
        Source of ``GET /api/slices``.
    allowed_hosts : list of str | None
        Accepted ``Host`` header names (default: 127.0.0.1, localhost).
    accepting : callable | None
        Returns False once the session no longer takes commands (409 then).
    """
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def status(request):
        return _json(model.status())

    async def snapshot(request):
        return _json(model.snapshot())

    def slices_view(request):  # sync: runs in the thread pool
        if slices is None:
            return _json({"n": 0})
        return _json(slices.payload())

    async def stream(request):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        overflow = threading.Event()

        def put(patch):
            if q.qsize() > _CLIENT_QUEUE:  # a stalled page: resynchronise it later
                overflow.set()
                return
            q.put_nowait(patch)

        def listener(patch):  # called from the feed threads
            loop.call_soon_threadsafe(put, patch)

        snap, unsubscribe = model.subscribe(listener)

        async def events():
            try:
                yield _sse(snap)
                while True:
                    try:
                        patch = await asyncio.wait_for(q.get(), 10.0)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if patch is None:
                        yield "event: end\ndata: {}\n\n"
                        return
                    if overflow.is_set():
                        overflow.clear()
                        while not q.empty():
                            q.get_nowait()
                        yield _sse(model.snapshot())
                        continue
                    yield _sse(patch)
            finally:
                unsubscribe()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    def _authorise(request):
        given = request.headers.get("x-rtfb-token")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            return _json({"error": "this control needs the operator token printed by "
                                   "'rtfb run' (Authorization: Bearer TOKEN)"}, 401,
                         {"WWW-Authenticate": 'Bearer realm="rtfb"'})
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return _json({"error": "wrong operator token"}, 403)
        if commands is None or (accepting is not None and not accepting()):
            return _json({"error": "no session is running: controls are not available"},
                         409)
        return None

    async def control(request):
        kind = request.path_params["kind"]
        if kind not in ("mark", "pause", "resume", "stop"):
            return _json({"error": f"unknown control {kind!r}"}, 404)
        refused = _authorise(request)
        if refused is not None:
            return refused
        body = await request.body()
        if len(body) > _MAX_BODY:
            return _json({"error": "request body too large"}, 413)
        label = ""
        if body.strip():
            try:
                data = json.loads(body)
            except ValueError:
                return _json({"error": "body must be JSON, e.g. {\"label\": \"needle in\"}"},
                             400)
            label = data.get("label", "") if isinstance(data, dict) else None
        try:
            cmd = commands.put(OperatorCommand(kind, label if label is not None else ""))
        except (TypeError, ValueError) as err:
            return _json({"error": str(err)}, 400)
        return _json({"accepted": True, "command": kind, "label": cmd.label, "id": cmd.id,
                      "time": time.time()}, 202)

    routes = [
        Route("/", index),
        Route("/api/status", status),
        Route("/api/snapshot", snapshot),
        Route("/api/stream", stream),
        Route("/api/slices", slices_view),
        Route("/api/{kind}", control, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost"]
    return Starlette(routes=routes,
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])


def _sse(data: dict[str, Any]) -> str:
    return "data: " + json.dumps(data, allow_nan=False, default=_default,
                                 separators=(",", ":")) + "\n\n"


class DashboardServer:
    """Serve the dashboard in a background thread (its own asyncio event loop).

    Parameters
    ----------
    model : DashboardModel
        What the page shows.
    host : str
        Interface to bind; a non-loopback address needs ``allow_remote=True``.
    port : int
        TCP port (0 picks a free one; see :attr:`url`).
    token : str | None
        Operator token for the controls; None generates one when ``commands`` is given.
    commands : CommandQueue | None
        The session's command queue (None: no controls, e.g. a recorded session).
    slices : SliceSource | None
        Source of the slice images.
    allow_remote : bool
        Allow a non-loopback ``host`` (anyone on the network could then see the page; the
        controls still need the token).
    accepting : callable | None
        Returns False once the session no longer takes commands.
    """

    def __init__(self, model: DashboardModel, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None, commands: CommandQueue | None = None,
                 slices: SliceSource | None = None, allow_remote: bool = False,
                 accepting: Callable[[], bool] | None = None):
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"refusing to serve the dashboard on {host!r}: it is not a "
                             "loopback address, so other computers could connect. Use "
                             "127.0.0.1, or ask for it explicitly (--dashboard-host).")
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"dashboard port must be an integer in [0, 65535], got {port!r}.")
        self.model = model
        self.host = host
        self.port = port
        self.commands = commands
        self.token = token if token is not None or commands is None \
            else secrets.token_urlsafe(18)
        self.slices = slices
        self.allow_remote = allow_remote
        self.accepting = accepting
        self._server = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        """The page's address (after :meth:`start`)."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    @property
    def operator_url(self) -> str:
        """The page's address with the token in the fragment (never sent to the server)."""
        return self.url + (f"#token={self.token}" if self.token else "")

    def start(self) -> DashboardServer:
        """Bind the port and start serving; returns ``self``.

        Raises
        ------
        OSError
            When the port cannot be bound (e.g. in use).
        """
        import uvicorn

        sock = _bind(self.host, self.port)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        allowed = ["127.0.0.1", "localhost"] if is_loopback(self.host) else ["*"]
        app = build_app(self.model, token=self.token, commands=self.commands,
                        slices=self.slices, allowed_hosts=allowed, accepting=self.accepting)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=1, ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="rtfb-dashboard-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started and self._thread.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise RuntimeError("the dashboard server did not start")
        logger.info("dashboard on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the event streams and the server thread."""
        self.model.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
