"""Starting the dashboard: with ``rtfb run --dashboard``, and ``rtfb dashboard SESSION_DIR``."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from pathlib import Path

from .._utils.net import is_loopback
from .commands import CommandQueue
from .model import DashboardModel
from .server import DashboardServer
from .slices import SliceSource
from .sources import LiveFeed, read_protocol_info, replay_record

__all__ = ["DEFAULT_PORT", "LiveDashboard", "add_dashboard_parser", "dashboard_command"]

#: port of ``--dashboard`` without a value
DEFAULT_PORT = 8765


class LiveDashboard:
    """The dashboard of a running session: subscriber + record reader + web server.

    Parameters
    ----------
    session_dir : path
        The session folder being recorded.
    address : str
        The session publisher's endpoint.
    commands : CommandQueue
        The session's operator command queue.
    port : int
        TCP port (0: a free one).
    host : str
        Interface (a non-loopback one is served only because it was asked for).
    roi : str | None
        ROI the slices are cut through.
    accepting : callable | None
        Returns False once the session no longer takes commands.
    key : bytes | None
        The session's feedback key (messages not signed with it are not shown).
    """

    def __init__(self, session_dir, address: str, commands: CommandQueue, *,
                 port: int = DEFAULT_PORT, host: str = "127.0.0.1", roi: str | None = None,
                 accepting: Callable[[], bool] | None = None, key: bytes | None = None):
        self.model = DashboardModel("live")
        self.feed = LiveFeed(address, session_dir, self.model, key=key)
        self.server = DashboardServer(self.model, host, port, commands=commands,
                                      slices=SliceSource(session_dir, roi),
                                      allow_remote=not is_loopback(host), accepting=accepting)

    def start(self) -> LiveDashboard:
        """Bind the port, start the subscriber and the server; returns ``self``."""
        self.server.start()
        self.feed.start()
        return self

    def stop(self) -> None:
        """Read the rest of the record, end the page's stream and the server."""
        self.feed.stop()
        self.model.mark_done()
        self.server.stop()


def add_dashboard_parser(sub) -> None:
    """Register ``rtfb dashboard``."""
    p = sub.add_parser("dashboard", help="show a recorded session in the operator dashboard",
                       description="Serve the operator dashboard of a recorded session "
                                   "(plots, events, slices; no controls) until Ctrl-C.")
    p.add_argument("session_dir", help="session folder (sessions/sub-..._ses-...)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface (default 127.0.0.1; another address exposes the page "
                        "to the network)")
    p.add_argument("--speed", type=float, default=0.0,
                   help="replay the volumes at TR/SPEED intervals (default 0: all at once)")
    p.set_defaults(func=dashboard_command, command_parser=p)


def dashboard_command(args: argparse.Namespace) -> int:
    """``rtfb dashboard SESSION_DIR``: serve a recorded session until Ctrl-C."""
    session_dir = Path(args.session_dir)
    if not (session_dir / "session.json").is_file():
        print(f"rtfb dashboard: {session_dir} is not a session record (no session.json); "
              "expected a folder written by 'rtfb run'.")
        return 2
    if args.speed < 0:
        print(f"rtfb dashboard: --speed must be >= 0, got {args.speed}.")
        return 2
    model = DashboardModel("review")
    info = read_protocol_info(session_dir)
    server = DashboardServer(model, args.host, args.port,
                             slices=SliceSource(session_dir, info.get("roi")),
                             allow_remote=not is_loopback(args.host))
    try:
        server.start()
    except (OSError, ValueError) as err:
        print(f"rtfb dashboard: cannot serve on {args.host}:{args.port}: {err}")
        return 2
    stop = threading.Event()
    feeder = threading.Thread(target=replay_record, args=(session_dir, model, args.speed, stop),
                              daemon=True)
    feeder.start()
    print(f"dashboard of {session_dir}: {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.stop()
    return 0
