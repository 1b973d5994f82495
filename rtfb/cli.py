"""The ``rtfb`` command.

Subcommands are listed in :data:`COMMANDS`: each names the function that registers its
subparser (``add_<name>_parser(sub)``), which sets ``func`` (called with the parsed
arguments, returns the exit status) and ``command_parser`` (the subparser, for usage
errors). Only the command being run is imported (``rtfb display`` does not load the
analysis stack); the others are listed with their one-line help.

Errors: a bad protocol, option value or path prints ONE line naming the file, key or option,
the value and what was expected, and the command exits with status 2 (argparse usage errors
too); any other failure prints one line and exits with status 1. ``--debug`` (before or after
the subcommand) shows the traceback instead. Log lines go to stderr with control characters
(newlines, ANSI escapes in file names or peer data) escaped.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from ._utils.argtypes import Parser
from ._utils.text import SafeFormatter, escape_control
from .exceptions import RtfbError

#: exit status of bad input (protocol, option, path), as argparse uses for usage errors
EXIT_USAGE = 2
#: exit status of any other failure
EXIT_FAILURE = 1

#: subcommand -> (module, registering function, one-line help shown by ``rtfb --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("rtfb.session.commands", "add_run_parser",
            "run a neurofeedback/monitoring session from a protocol"),
    "replay": ("rtfb.session.commands", "add_replay_parser",
               "re-run a recorded session and check it bit for bit"),
    "report": ("rtfb.session.commands", "add_report_parser",
               "write an HTML report of a recorded session"),
    "display": ("rtfb.cli", "_add_display",
                "participant display (PsychoPy window, or headless)"),
    "dashboard": ("rtfb.dashboard.cli", "add_dashboard_parser",
                  "show a recorded session in the operator dashboard"),
    "analyze": ("rtfb.offline.commands", "add_analyze_parser",
                "offline maps of a BIDS cohort (Dask)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the ``rtfb`` argument parser with its subcommands.

    Parameters
    ----------
    command : str | None
        Register only this subcommand's options (the others are listed by name and help;
        ``""``: none); ``None`` registers every subcommand.

    Returns
    -------
    argparse.ArgumentParser
        Parser whose parsed namespace has ``func`` set for a subcommand.
    """
    parser = Parser(
        prog="rtfb",
        description="Real-time fMRI neurofeedback with an offline resting-state analysis mode.",
    )
    parser.add_argument("--version", action="version", version=f"rtfb {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, function, help_text) in COMMANDS.items():
        if command is None or command == name:
            getattr(importlib.import_module(module), function)(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    for name, subparser in sub.choices.items():
        # SUPPRESS: absent after the subcommand, the value given before it is kept
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show tracebacks and debug log lines")
        subparser.set_defaults(command=name)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (first argument not starting with ``-``), else ``""``."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else ""
    return ""


def _add_display(sub) -> None:
    from .display.cli import DESCRIPTION, add_arguments

    p = sub.add_parser("display", help="participant display (PsychoPy window, or headless)",
                       description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=_run_display, command_parser=p)


def _run_display(args: argparse.Namespace) -> int:
    from .display.cli import run

    return int(run(args) or 0)


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (as :data:`logging.lastResort` does)."""

    def __init__(self, level: int) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr


def _configure_logging(debug: bool) -> None:
    logger = logging.getLogger("rtfb")
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler(logging.WARNING)
        handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    if debug:
        logger.setLevel(logging.DEBUG)


def error_status(err: BaseException) -> tuple[int, str]:
    """Exit status and one-line message for an exception that ended a command.

    Bad input (:class:`~rtfb.exceptions.RtfbError` such as a protocol or usage error,
    ``ValueError``, ``TypeError``, an unreadable or missing path) gives status 2; any
    other exception status 1. Control characters of the message are escaped.
    """
    if isinstance(err, OSError) and not isinstance(err, ConnectionError):
        name = err.filename if err.filename is not None else None
        reason = err.strerror or str(err)
        text = f"{name}: {reason}" if name is not None else reason
        return EXIT_USAGE, escape_control(text)
    if type(err).__name__ == "ZMQError":  # e.g. the feedback address taken meanwhile
        return EXIT_USAGE, escape_control(f"ZeroMQ: {err}")
    if isinstance(err, (RtfbError, ValueError, TypeError)):
        return EXIT_USAGE, escape_control(err)
    if isinstance(err, RecursionError):
        return EXIT_USAGE, "input nested too deeply"
    return EXIT_FAILURE, escape_control(f"{type(err).__name__}: {err} "
                                        "(run with --debug to see the traceback)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rtfb`` command line.

    Parameters
    ----------
    argv : sequence of str | None
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0 on success).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    debug = bool(args.debug) or os.environ.get("RTFB_DEBUG", "") not in ("", "0")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    _configure_logging(debug)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"rtfb {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        status, text = error_status(err)
        print(f"rtfb {args.command}: error: {text}", file=sys.stderr)
        return status
