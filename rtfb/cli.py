"""The ``rtfb`` command.

Subcommands are registered in :func:`build_parser`, one ``_add_<name>`` function each,
which sets ``func`` (called with the parsed arguments, returns the exit status) and
``command_parser`` (the subparser, for usage errors). Commands: ``run``, ``replay``, ``report``
(``rtfb.session.commands``), ``display`` (``rtfb.display.cli``), ``dashboard``
(``rtfb.dashboard.cli``) and ``analyze`` (``rtfb.offline.run``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the ``rtfb`` argument parser with its subcommands.

    Returns
    -------
    argparse.ArgumentParser
        Parser whose parsed namespace has ``func`` set for a subcommand.
    """
    parser = argparse.ArgumentParser(
        prog="rtfb",
        description="Real-time fMRI neurofeedback with an offline resting-state analysis mode.",
    )
    parser.add_argument("--version", action="version", version=f"rtfb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    from .dashboard.cli import add_dashboard_parser
    from .offline.run import add_analyze_parser
    from .session.commands import add_replay_parser, add_report_parser, add_run_parser

    add_run_parser(sub)
    add_replay_parser(sub)
    add_report_parser(sub)
    _add_display(sub)
    add_dashboard_parser(sub)
    add_analyze_parser(sub)
    return parser


def _add_display(sub) -> None:
    p = sub.add_parser("display", help="participant display (PsychoPy window, or headless)",
                       add_help=False)
    p.add_argument("display_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: _run_display(args.display_args), command_parser=p)


def _run_display(argv) -> int:
    from .display.cli import display_main

    return int(display_main(argv) or 0)


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    return int(args.func(args))
