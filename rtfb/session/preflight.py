"""Checks of ``rtfb run``'s arguments made before anything starts (folders, ports).

A problem raises :class:`~rtfb.exceptions.UsageError` naming the option, the value and what
was expected, before a session folder is created or a simulated subject is generated.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._utils.net import check_port_free
from ..exceptions import UsageError

__all__ = ["check_feedback_address", "check_run_arguments"]


def check_feedback_address(address: str, option: str) -> None:
    """Refuse a ZeroMQ TCP address whose port another program holds."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return
    host, _, port = rest.rpartition(":")
    if port.isdigit():
        check_port_free(host, int(port), f"{option} {address}")


def check_run_arguments(args: argparse.Namespace, address: str, resume: bool) -> None:
    """Check the folders and ports of ``rtfb run`` (see the module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``rtfb run`` options.
    address : str
        Feedback publisher address in use (``--zmq`` or the protocol's).
    resume : bool
        Whether ``--resume`` continues an existing session.
    """
    if args.watch:
        watch = Path(args.watch)
        if not watch.is_dir():
            what = "is not a folder" if watch.exists() else "does not exist"
            raise UsageError(f"--watch {args.watch}: {what}; expected the scanner's export "
                             f"folder.")
    if not resume:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {args.out}: is a file; expected a folder for the "
                             f"session folders.")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--out {args.out}: cannot create the folder: "
                             f"{err.strerror or err}.") from None
    option = "--zmq" if args.zmq else "[output] zmq_address"
    check_feedback_address(address, option)
    if args.tcp is not None:
        check_port_free(getattr(args, "listen", None) or "127.0.0.1", args.tcp,
                        f"--tcp {args.tcp}")
