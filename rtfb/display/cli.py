"""Command line of the display process (``rtfb display``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rtfb._utils.argtypes import Parser, integer, number, zmq_address
from rtfb.feedback.messages import DEFAULT_ADDRESS
from rtfb.feedback.signing import default_key_path

from .state import Snapshot

__all__ = ["add_arguments", "build_parser", "display_main", "format_snapshot", "run"]


DESCRIPTION = ("Show the neurofeedback to the participant: subscribe to the session's "
               "messages and draw the thermometer, cues and status screens (PsychoPy), "
               "or print the states without a screen (--headless). Esc closes the window.")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the display options to ``p`` (``rtfb display`` and ``python -m rtfb.display``)."""
    p.add_argument("--address", default=DEFAULT_ADDRESS, type=zmq_address,
                   help=f"publisher endpoint to connect to (default: {DEFAULT_ADDRESS})")
    p.add_argument("--fullscr", action="store_true", help="full screen (participant screen)")
    p.add_argument("--screen", type=integer(ge=0, le=64), default=0,
                   help="screen number for the window (default: 0)")
    p.add_argument("--size", type=integer(ge=16, le=16384), nargs=2, default=(800, 600),
                   metavar=("W", "H"),
                   help="window size in pixels when not full screen (default: 800 600)")
    p.add_argument("--headless", action="store_true",
                   help="no window: print one line per state change (no PsychoPy needed)")
    p.add_argument("--timeout", type=number(gt=0), default=None,
                   help="seconds without messages before 'Signal lost' (default: 3 TR, "
                        "or 5 s when the TR is unknown)")
    p.add_argument("--duration", type=number(gt=0), default=None,
                   help="stop after this many seconds (default: run until Esc / Ctrl-C)")
    p.add_argument("--exit-on-end", action="store_true",
                   help="stop when the session ends")
    p.add_argument("--key", metavar="FILE", default=None,
                   help="the session's feedback key file: only messages signed with it are "
                        "shown (default: the file rtfb run writes for --address, "
                        "~/.rtfb/keys/feedback-<address>.key)")
    return p


def key_file(args: argparse.Namespace) -> Path:
    """The key file the display verifies messages with (``--key`` or the default)."""
    return Path(args.key) if args.key else default_key_path(args.address)


def build_parser(prog: str = "rtfb display") -> argparse.ArgumentParser:
    """Return the argument parser of the display command."""
    return add_arguments(Parser(prog=prog, description=DESCRIPTION))


def format_snapshot(snap: Snapshot) -> str:
    """One line describing a state (``--headless`` output)."""
    parts = [f"{snap.mode:<11}"]
    if snap.volume_index is not None:
        parts.append(f"vol={snap.volume_index}")
    if snap.show_bar:
        parts.append("level=-" if snap.level is None else f"level={snap.level:.3f}")
        if snap.target is not None:
            parts.append(f"target={snap.target:.2f}")
    if snap.condition is not None:
        parts.append(f"block={snap.block_index}:{snap.condition}")
    if snap.cue:
        parts.append(f"cue={snap.cue!r}")
    if snap.flags:
        parts.append("flags=" + ",".join(snap.flags))
    return " ".join(parts)


def _run_headless(args) -> int:
    from .headless import HeadlessDisplay

    def show(snap: Snapshot) -> None:
        print(f"{time.strftime('%H:%M:%S')} {format_snapshot(snap)}", flush=True)

    display = HeadlessDisplay(args.address, timeout=args.timeout, max_records=1000,
                              on_snapshot=show, key=key_file(args))
    start = time.monotonic()
    with display:
        try:
            while args.duration is None or time.monotonic() - start < args.duration:
                snap = display.latest
                if args.exit_on_end and snap is not None and snap.mode == "end":
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass
    return 0


def display_main(argv: Sequence[str] | None = None) -> int:
    """Run the display command line; returns the exit status.

    Parameters
    ----------
    argv : sequence of str | None
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the display with parsed options (see :func:`add_arguments`); returns the status."""
    if args.headless:
        return _run_headless(args)
    from .psychopy_display import run_display

    try:
        run_display(args.address, fullscr=args.fullscr, screen=args.screen, size=args.size,
                    timeout=args.timeout, duration=args.duration,
                    exit_on_end=args.exit_on_end, key=key_file(args))
    except (ImportError, RuntimeError) as err:
        print(f"rtfb display: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(display_main())
