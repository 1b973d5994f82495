"""``type=`` converters for argparse options, checked when the command line is parsed.

Each converter raises :class:`argparse.ArgumentTypeError`, so argparse prints one line
(``argument --speed: expected a finite number > 0, got '-1'``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

__all__ = ["BIDS_LABEL", "Parser", "bids_label", "integer", "number", "port", "zmq_address"]

#: BIDS label: letters and digits only (no ``-``, ``_``, ``/``, ``.``)
BIDS_LABEL = r"[A-Za-z0-9]+"


def _bounds(gt, ge, le) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    return " and ".join(parts)


def number(*, gt: float | None = None, ge: float | None = None,
           le: float | None = None) -> Callable[[str], float]:
    """Converter to a finite float within the bounds (NaN and infinities refused)."""
    rule = _bounds(gt, ge, le)
    expected = "a finite number" + (f" {rule}" if rule else "")

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or (gt is not None and not value > gt) or \
                (ge is not None and not value >= ge) or (le is not None and not value <= le):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = "number"
    return convert


def integer(*, ge: int | None = None, le: int | None = None) -> Callable[[str], int]:
    """Converter to an int within ``[ge, le]``."""
    rule = _bounds(None, ge, le)
    expected = "an integer" + (f" {rule}" if rule else "")

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if (ge is not None and value < ge) or (le is not None and value > le):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = "integer"
    return convert


port = integer(ge=0, le=65535)
"""Converter to a TCP port (0 lets the system pick a free one)."""


def bids_label(text: str) -> str:
    """A BIDS label (``sub-<label>``): letters and digits only, at most 64 characters."""
    if not re.fullmatch(BIDS_LABEL, text) or len(text) > 64:
        raise argparse.ArgumentTypeError(
            f"expected a BIDS label (1 to 64 letters or digits, no '-', '_', '/' or '.'), "
            f"got {text!r}")
    return text


def zmq_address(text: str) -> str:
    """A ZeroMQ endpoint ``tcp://HOST:PORT``, ``ipc://PATH`` or ``inproc://NAME``."""
    scheme, sep, rest = text.partition("://")
    ok = bool(sep) and scheme in ("tcp", "ipc", "inproc") and bool(rest)
    if ok and scheme == "tcp":
        host, colon, port_text = rest.rpartition(":")
        ok = bool(colon and host and (port_text == "*" or (
            port_text.isdigit() and int(port_text) < 65536)))
    if not ok:
        raise argparse.ArgumentTypeError(
            f"expected a ZeroMQ address tcp://HOST:PORT (port 0..65535, 0 or * for a free "
            f"one), ipc://PATH or inproc://NAME, got {text!r}")
    return text


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose usage errors are one line.

    ``rtfb run: error: argument --speed: expected ... (see rtfb run --help)`` on stderr and
    exit status 2, instead of the usage block followed by the error. Subparsers created
    with ``add_subparsers().add_parser`` are of this class too.
    """

    def error(self, message: str):  # noqa: D102 (argparse API)
        from .text import escape_control

        self.exit(2, f"{self.prog}: error: {escape_control(message)} "
                     f"(see {self.prog} --help)\n")
