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
