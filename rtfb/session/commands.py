"""``rtfb run``, ``rtfb replay`` and ``rtfb report``: argument handling and wiring."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._utils.argtypes import bids_label, integer, number, port, zmq_address
from ..exceptions import UsageError
from .preflight import check_run_arguments, new_feedback_key, tcp_key

if TYPE_CHECKING:  # the session stack is imported when a command runs, not for --help
    from rich.table import Table

    from .runner import SessionStatus

logger = logging.getLogger("rtfb.session")


def add_run_parser(sub) -> None:
    """Register ``rtfb run``."""
    p = sub.add_parser("run", help="run a neurofeedback/monitoring session from a protocol",
                       description="Run a session: scanner export folder, TCP stream or the "
                                   "built-in simulator -> preprocessing -> metrics -> "
                                   "feedback over ZeroMQ, recorded in a session folder.")
    p.add_argument("protocol", nargs="?", help="protocol TOML file (see protocols/)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--watch", metavar="DIR",
                     help="scanner export folder to watch; series folders created below it "
                          "after the start (GE p/e/s, Philips NNNN, per-series) are followed")
    src.add_argument("--tcp", metavar="PORT", type=port, help="receive volumes on this TCP port")
    src.add_argument("--simulate", action="store_true",
                     help="stream a synthetic subject (no scanner) and show a headless display")
    p.add_argument("--key", metavar="FILE", default=None,
                   help="--tcp: secret key file shared with the sender, created with a new "
                        "random key (mode 0600) if missing (default: "
                        "~/.rtfb/keys/tcp-ingest.key); frames without a valid tag are refused")
    p.add_argument("--listen", metavar="HOST", default="127.0.0.1",
                   help="--tcp: interface to listen on (default 127.0.0.1; another one, e.g. "
                        "0.0.0.0 for a sender on another computer, needs --key)")
    p.add_argument("--out", metavar="DIR", default="sessions",
                   help="parent folder of the session folder (default: ./sessions)")
    p.add_argument("--participant", default="anon", type=bids_label,
                   help="participant label: letters and digits only (BIDS label, no PHI)")
    p.add_argument("--resume", metavar="SESSION_DIR",
                   help="continue a session that stopped (crash, kill) from its record")
    p.add_argument("--speed", type=number(gt=0, le=1000), default=20.0,
                   help="--simulate: volumes come every TR/speed seconds (default 20)")
    p.add_argument("--shape", type=integer(ge=8, le=256), nargs=3, default=(40, 40, 24),
                   metavar=("X", "Y", "Z"),
                   help="--simulate: grid of the synthetic subject")
    p.add_argument("--participant-model", default="responder",
                   choices=("responder", "non-responder", "learner"),
                   help="--simulate: virtual participant whose target signal follows the "
                        "protocol's blocks (default: responder); its truth is copied into "
                        "the session folder (simulation/)")
    p.add_argument("--participant-run", type=integer(ge=1, le=1000), default=1, metavar="N",
                   help="--simulate: run number of the virtual participant (a learner "
                        "improves with it; default 1)")
    p.add_argument("--wait-display", type=number(gt=0), default=None, metavar="SECONDS",
                   help="--simulate: before the simulated scanner starts, wait up to SECONDS "
                        "for a participant display (rtfb display) to connect (default: no "
                        "wait; a display that joins late shows the current state at once)")
    p.add_argument("--zmq", metavar="ADDRESS", type=zmq_address,
                   help="override the protocol's ZeroMQ address")
    p.add_argument("--feedback-key", metavar="FILE", default=None,
                   help="file receiving this session's new feedback signing key, which "
                        "displays need (default: ~/.rtfb/keys/feedback-<address>.key, "
                        "where rtfb display --address looks for it)")
    p.add_argument("--idle-timeout", type=number(gt=0), default=None,
                   help="stop when no volume was accepted for this many seconds (counted "
                        "from the last accepted volume, or the start)")
    p.add_argument("--series", metavar="NUMBER|UID",
                   help="--watch: follow this series (SeriesNumber or SeriesInstanceUID), "
                        "including its files already in the folder")
    p.add_argument("--accept-existing", action="store_true",
                   help="--watch: use the files already in the folder at start (by default "
                        "they are an earlier series' leftovers: listed once and ignored)")
    p.add_argument("--quiet", action="store_true", help="no live terminal view")
    p.add_argument("--dashboard", nargs="?", type=int, const=8765, default=None, metavar="PORT",
                   help="serve the operator dashboard on http://127.0.0.1:PORT/ (default "
                        "8765; 0 picks a free port); its controls need the printed token")
    p.add_argument("--dashboard-host", default="127.0.0.1", metavar="HOST",
                   help="interface of the dashboard (default 127.0.0.1, this computer only)")
    p.set_defaults(func=run_command, command_parser=p)


def add_replay_parser(sub) -> None:
    """Register ``rtfb replay``."""
    p = sub.add_parser("replay", help="re-run a recorded session and check it bit for bit")
    p.add_argument("session_dir")
    p.add_argument("--out", metavar="DIR", help="folder of the replayed record "
                                                "(default: SESSION_DIR/replay-<time>)")
    p.set_defaults(func=replay_command, command_parser=p)


def add_report_parser(sub) -> None:
    """Register ``rtfb report``."""
    p = sub.add_parser("report", help="write an HTML report of a recorded session")
    p.add_argument("session_dir")
    p.add_argument("--out", metavar="FILE", help="output file (default SESSION_DIR/report.html)")
    p.set_defaults(func=report_command, command_parser=p)


def _status_table(status: SessionStatus, n_expected: int, metric: str = "metric") -> Table:
    from rich import box
    from rich.table import Table

    # short headers and folding: nothing is cut on an 80-column terminal
    table = Table(title="rtfb session", show_header=True, box=box.SIMPLE_HEAD)
    for col in ("volume", "block", metric, "shown", "FD mm", "lat. ms", "missing", "late"):
        table.add_column(col, overflow="fold")
    display = {None: "?", True: "connected", False: "NOT CONNECTED"}[status.display]
    table.caption = f"display: {display}   flags: " + (", ".join(status.flags) or "-")
    table.caption_justify = "left"

    def fmt(value, spec):
        return "-" if value is None else spec.format(value)

    table.add_row(f"{status.index + 1}/{n_expected}", status.block,
                  fmt(status.metric, "{:.4g}"), fmt(status.value, "{:.2f}"),
                  fmt(status.fd, "{:.2f}"),
                  fmt(status.latency_ms, "{:.1f}"), str(status.missing), str(status.late))
    return table


_SIM_PREFIX = "rtfb-simulate-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_simulations() -> None:
    """Remove the simulator folders of ``rtfb run --simulate`` processes that died (kill -9
    leaves no chance to clean up): each holds ``owner.pid``.
    """
    for folder in Path(tempfile.gettempdir()).glob(_SIM_PREFIX + "*"):
        try:
            pid = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _simulated_source(protocol, tmp: Path, speed: float, shape, stop: threading.Event,
                      first_index: int = 0, model: str = "responder", run: int = 1):
    from simulator import stream, write_subject
    from simulator.participant import ParticipantModel, make_participant

    from ..ingest import FolderWatcher

    tables = {"session": {"tr": protocol.session.tr, "volumes": protocol.session.volumes},
              "blocks": [{"condition": b.condition, "volumes": b.volumes,
                          "feedback": b.feedback} for b in protocol.blocks]}
    subject = make_participant(tables, ParticipantModel(kind=model, run=run),
                               shape=tuple(shape), motion=True, seed=0)
    write_subject(subject, tmp / "subject")
    export = tmp / "export"
    export.mkdir()
    player = threading.Thread(
        target=stream, args=(tmp / "subject", export),
        kwargs=dict(speed=speed, manifest=tmp / "manifest.json", stop_event=stop,
                    log=lambda _msg: None,
                    first_volume=min(first_index + 1, protocol.session.volumes)), daemon=True)
    watcher = FolderWatcher(export, gap_timeout=max(0.5, 3 * protocol.session.tr / speed),
                            first_index=first_index, tr=protocol.session.tr / speed)
    return watcher, player, tmp / "subject"


def run_command(args: argparse.Namespace) -> int:
    """``rtfb run``."""
    from rich.console import Console
    from rich.live import Live

    from ..config import load_protocol
    from ..feedback.publisher import FeedbackPublisher
    from ..ingest import TCPReceiver
    from ..ingest.layouts import SeriesFolderWatcher
    from .replay import load_recorded_protocol
    from .runner import Session, session_dir_name
    from .verify import verify_record

    console = Console()
    resume_dir = Path(args.resume) if args.resume else None
    first_index = 0
    if resume_dir is not None:
        try:  # same protocol, intact inputs
            record = verify_record(resume_dir, args.protocol)
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot resume {resume_dir}: {err}") from None
        try:
            protocol = load_recorded_protocol(resume_dir)
        except (FileNotFoundError, ValueError) as err:
            console.print(f"rtfb run: cannot resume {resume_dir}: {err}")
            return 2
        done = [v["index"] for v in record.volumes]
        done += [e["index"] for e in record.inputs if not e.get("late")]
        first_index = max(done) + 1 if done else 0
        source_info = record.session.get("source", {})
        if not (args.watch or args.tcp or args.simulate):
            if source_info.get("kind") == "simulate":  # a new simulator, never the dead one's
                args.simulate = True
                args.speed = source_info.get("speed", args.speed)
                args.shape = source_info.get("shape", args.shape)
            else:
                args.watch = source_info.get("directory")
                args.tcp = source_info.get("port")
    elif args.protocol is None:
        args.command_parser.error("give a PROTOCOL file (or --resume SESSION_DIR)")
    else:
        protocol = load_protocol(args.protocol)
    address = args.zmq or protocol.output.zmq_address
    check_run_arguments(args, address, resume=resume_dir is not None)
    if args.dashboard is not None:
        from ..dashboard.server import check_address

        try:
            args.dashboard = check_address(args.dashboard_host, args.dashboard)
        except (OSError, ValueError) as err:
            console.print(f"rtfb run: --dashboard {args.dashboard_host}:{args.dashboard}: {err}")
            return 2
    stop = threading.Event()
    tmp = None
    simulator_dir = None
    display = None
    player = None
    if args.simulate:
        _remove_dead_simulations()
        tmp = Path(tempfile.mkdtemp(prefix=_SIM_PREFIX))
        (tmp / "owner.pid").write_text(str(os.getpid()))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # ~130 MB: never left behind
        console.print(f"simulating a subject in {tmp} (TR {protocol.session.tr} s played at "
                      f"{args.speed}x; removed at the end)")
        if args.participant_run < 1:
            args.command_parser.error(f"--participant-run must be >= 1, got "
                                      f"{args.participant_run}")
        source, player, simulator_dir = _simulated_source(
            protocol, tmp, args.speed, args.shape, stop, first_index, args.participant_model,
            args.participant_run)
        source_info = {"kind": "simulate", "speed": args.speed, "shape": list(args.shape),
                       "seed": 0, "participant_model": args.participant_model,
                       "participant_run": args.participant_run}
    elif args.watch:
        source = SeriesFolderWatcher(args.watch, first_index=first_index, series=args.series,
                                     accept_existing=args.accept_existing
                                     or resume_dir is not None,
                                     tr=protocol.session.tr)
        source_info = {"kind": "watch", "directory": str(Path(args.watch).resolve())}
    elif args.tcp is not None:
        key, key_path = tcp_key(args)
        source = TCPReceiver(host=args.listen, port=args.tcp, key=key, first_index=first_index,
                             tr=protocol.session.tr)
        source_info = {"kind": "tcp", "port": args.tcp, "host": args.listen}
        console.print(f"receiving volumes on {args.listen}:{args.tcp}; senders sign their "
                      f"frames with the key file {key_path}")
    else:
        args.command_parser.error("choose a source: --watch DIR, --tcp PORT or --simulate")
    out_dir = resume_dir or Path(args.out) / session_dir_name(protocol.session.name,
                                                               args.participant)
    holder = {}
    session = Session(protocol, out_dir, source_info=source_info,
                      simulator_dir=simulator_dir, resume=resume_dir is not None)
    publisher = FeedbackPublisher(address, session_id=session.session_id,
                                  on_sent=session.record_message,
                                  on_display=session.record_display,
                                  key=new_feedback_key(args.feedback_key, address))
    session.publisher = publisher
    if simulator_dir is not None:  # the virtual participant's truth, for the report/tests
        shutil.copytree(simulator_dir, out_dir / "simulation", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("bold.nii.gz"))

    finished = threading.Event()  # not Thread.join(): an interrupted join() can return early

    def work():
        try:
            holder["dir"] = session.run(source, stop_event=stop, idle_timeout=args.idle_timeout)
        except BaseException as err:  # reported by the main thread
            holder["error"] = err
        finally:
            finished.set()

    Session.warm_up()
    dashboard = None
    # threads inherit this mask: Ctrl-C is handled by the main thread alone and never
    # interrupts the acquisition, processing or publishing threads mid-call
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    with publisher:
        if args.simulate:
            from ..display.headless import HeadlessDisplay

            display = HeadlessDisplay(publisher.endpoint, key=publisher.key)
            display.start()
        if args.dashboard is not None:
            dashboard = _start_dashboard(args, session, publisher.endpoint, finished, console)
        if args.wait_display is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # Ctrl-C ends the wait
            try:
                _wait_for_display(publisher, 1 + (display is not None), args.wait_display,
                                  console)
            except KeyboardInterrupt:
                console.print("stopped while waiting for a display (Ctrl-C)")
                stop.set()
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        source.start()
        if player is not None:
            player.start()
        worker = threading.Thread(target=work, name="rtfb-processing")
        worker.start()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            if args.quiet:
                while not finished.wait(0.2):
                    pass
            else:
                kind = protocol.metric.kind
                with Live(_status_table(session.status, protocol.session.volumes, kind),
                          console=console, refresh_per_second=8) as live:
                    while not finished.wait(0.125):
                        live.update(_status_table(session.status, protocol.session.volumes,
                                                  kind))
                    live.update(_status_table(session.status, protocol.session.volumes, kind))
                console.print()
        except KeyboardInterrupt:
            console.print("stopping after the current volume (Ctrl-C) ...")
            stop.set()
            finished.wait()
        finally:
            stop.set()
            source.stop()
            if display is not None:
                display.stop()
            if dashboard is not None:
                dashboard.stop()
    try:
        session.close()
    except OSError:
        pass
    if "error" in holder:
        console.print(f"[red]session failed:[/red] {holder['error']}")
        return 1
    s = session.status
    console.print(f"session folder: {holder['dir']}")
    console.print(f"session {session.end_reason}: {s.processed} volumes processed, "
                  f"{s.missing} missing, {s.late} late, {s.rejected} rejected, {s.stale} "
                  f"stale, {s.warnings} warnings")
    if display is not None:
        console.print(f"headless display received {len(display.messages)} messages")
    return 0


def _wait_for_display(publisher, n: int, timeout: float, console) -> bool:
    """``--wait-display``: wait for ``n`` participant displays (the built-in headless
    display counts as one; the dashboard does not); returns whether they came in time.
    """
    console.print(f"waiting up to {timeout:g} s for a display to connect to "
                  f"{publisher.endpoint} (rtfb display --address {publisher.endpoint})")
    if publisher.wait_for_displays(n, timeout):
        console.print("display connected: starting the simulated scanner")
        return True
    console.print(f"[yellow]no display connected within {timeout:g} s: starting anyway"
                  "[/yellow]")
    return False


def _start_dashboard(args, session, endpoint, finished, console):
    """Start the operator dashboard of ``rtfb run --dashboard`` (address checked before)."""
    from ..dashboard.cli import LiveDashboard

    m = session.protocol.metric
    dashboard = LiveDashboard(session.out_dir, endpoint, session.commands,
                              port=args.dashboard, host=args.dashboard_host,
                              roi=m.roi or m.target or m.seed,
                              accepting=lambda: not finished.is_set(),
                              key=getattr(session.publisher, "key", None)).start()
    token = dashboard.server.token
    console.print(f"dashboard: {dashboard.server.operator_url}", soft_wrap=True)
    console.print(f"operator token: {token}", soft_wrap=True)
    return dashboard


def replay_command(args: argparse.Namespace) -> int:
    """``rtfb replay``: re-run the record and compare feedback values bit for bit."""
    session_dir = Path(args.session_dir)
    out = Path(args.out) if args.out else session_dir / f"replay-{time.strftime('%Y%m%dT%H%M%S')}"
    from .record_reader import load_record
    from .replay import replay_session
    from .verify import verify_record

    verify_record(session_dir)  # names the first changed volume before anything runs
    replay_session(session_dir, out)
    original, replayed = load_record(session_dir), load_record(out)
    keys = ("index", "feedback", "feedback_value", "metrics", "motion", "fd", "flags")
    a = [{k: v.get(k) for k in keys} for v in original.volumes]
    b = [{k: v.get(k) for k in keys} for v in replayed.volumes]
    same = a == b
    print(f"replayed {len(b)} volumes into {out}: "
          f"{'identical to the original (bit for bit)' if same else 'DIFFERENT from the original'}")
    return 0 if same else 1


def report_command(args: argparse.Namespace) -> int:
    """``rtfb report``."""
    from .report import write_report

    path = write_report(args.session_dir, out=args.out)  # errors: one line, status 2 (cli)
    print(f"report written to {path}")
    return 0
