"""Checks of ``rtfb run``'s arguments made before anything starts (folders, ports).

A problem raises :class:`~rtfb.exceptions.UsageError` naming the option, the value and what
was expected, before a session folder is created or a simulated subject is generated.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._utils.keys import default_key_dir, ensure_key, write_key
from .._utils.net import check_port_free, is_loopback
from ..exceptions import UsageError

__all__ = ["check_feedback_address", "check_run_arguments", "new_feedback_key", "tcp_key"]


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
    if getattr(args, "wait_display", None) is not None and not args.simulate:
        raise UsageError(f"--wait-display {args.wait_display:g}: only with --simulate (the "
                         f"scanner does not wait: start the display before the scan).")
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
        listen = getattr(args, "listen", None) or "127.0.0.1"
        if not is_loopback(listen) and not getattr(args, "key", None):
            raise UsageError(f"--listen {listen}: accepting senders from other computers "
                             f"needs --key FILE (the secret they sign their frames with).")
        check_port_free(listen, args.tcp, f"--tcp {args.tcp}")


def new_feedback_key(path: str | None, address: str) -> bytes:
    """Write a new random feedback key for this session; return it.

    Parameters
    ----------
    path : str | None
        ``--feedback-key`` (default: :func:`rtfb.feedback.signing.default_key_path` of
        ``address``, where ``rtfb display --address`` looks for it).
    address : str
        Feedback publisher address.
    """
    from ..feedback.signing import default_key_path

    target = Path(path) if path else default_key_path(address)
    try:
        return write_key(target)
    except OSError as err:
        option = "--feedback-key" if path else "feedback key file"
        raise UsageError(f"{option} {target}: cannot write: {err.strerror or err}.") from None


def tcp_key(args: argparse.Namespace) -> tuple[bytes, Path]:
    """The TCP ingest key (``--key``, or the default file), created if missing."""
    path = Path(args.key) if args.key else default_key_dir() / "tcp-ingest.key"
    key, _ = ensure_key(path)
    return key, path
