"""Text made safe for one-line messages and logs (control characters escaped)."""

from __future__ import annotations

import logging
import re

__all__ = ["SafeFormatter", "escape_control"]

# C0 controls (tab included), DEL and C1 controls; ESC starts ANSI sequences
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control(text: object) -> str:
    r"""Return ``str(text)`` with every control character written as an escape.

    Newlines become ``\n``, ANSI escape sequences ``\x1b[...``: a file name or a peer's
    header can neither start a fake log line nor recolour the terminal.

    Parameters
    ----------
    text : object
        Anything; converted with ``str``.

    Returns
    -------
    str
    """
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), str(text))


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that escapes control characters of the message.

    The traceback of ``exc_info`` (shown with ``--debug``) keeps its line breaks.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging API)
        """Format the record with its message's control characters escaped."""
        record.message = escape_control(record.message)
        return super().formatMessage(record)
