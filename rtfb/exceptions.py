"""Exceptions raised by rtfb.

Bad parameters and malformed arrays raise the built-in :class:`ValueError` or
:class:`TypeError` (as numpy and scikit-learn do); the classes below mark failures
of the outside world (files, sockets, scanner) so callers can tell them apart.
"""


class RtfbError(Exception):
    """Base class of rtfb's own errors."""


class IngestError(RtfbError):
    """A volume could not be read (truncated, corrupt or unsupported file)."""


class IncompleteFileError(IngestError):
    """A file is still being written (its pixel data is shorter than its header says).

    The export-folder watcher retries such files until they complete or time out.
    """


class ProtocolError(RtfbError, ValueError):
    """A protocol file is invalid.

    The message names the file (``source``), the dotted key (``key``, e.g.
    ``feedback.direction`` or ``blocks[2].volumes``; ``None`` for errors of the whole
    file such as TOML syntax) and what was expected versus what was found (``reason``).
    """

    def __init__(self, source: str, key: str | None, reason: str):
        from ._utils.text import escape_control  # a key may hold any character

        self.source = source
        self.key = key
        self.reason = reason
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(escape_control(where + reason))

    def __reduce__(self):
        return type(self), (self.source, self.key, self.reason)


class UsageError(RtfbError, ValueError):
    """A command-line value or a path given on the command line is unusable.

    The message names the option (or argument), the value found and what was expected;
    the ``rtfb`` command prints it on one line and exits with status 2.
    """


class RecordError(RtfbError, ValueError):
    """A session record is incomplete, inconsistent or fails its checksums.

    The message names the file and the first bad entry (e.g. the volume whose data no
    longer matches its recorded SHA-256).
    """


class AuthenticationError(RtfbError):
    """A key file cannot be used, or a message or frame fails its authentication tag."""
