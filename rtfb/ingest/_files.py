"""Helpers shared by the volume readers: file checks, names, error texts, warning capture.

Messages built here name a file by its base name only and never quote header contents, so
that no patient data reaches an exception or a log line.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..exceptions import IncompleteFileError, IngestError
from .names import shown_name

logger = logging.getLogger("rtfb.ingest")

# "<anything>_<NNNNN>.ext" or "<anything>-<NNNNN>.ext": the trailing volume counter of an
# export name, zero-padded to 3 digits or more (00001, 007) or of 4 digits or more. Shorter
# numbers are not counters: dcm2niix's "%s_%e_%z" names end in the sequence name
# ("..._epfid2d1_64": 64 is the matrix), and "run_2" is a run.
_NUMBERED = re.compile(r"^(?P<prefix>.*?)[_-](?P<number>0\d{2,}|[1-9]\d{3,})$")
#: Advice for formats rtfb cannot read: what works instead (dcm2niix is a Debian package).
CONVERT_ADVICE = ("convert the series with dcm2niix (dcm2niix -o OUT FOLDER) and read the NIfTI "
                  "with iter_volumes()")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'")


def file_name(path: str | os.PathLike) -> str:
    """Base name of ``path``, for messages.

    The name is also noted (:func:`rtfb.ingest.names.shown_name`), so that the rtfb loggers
    show a name that may identify a patient as its hash key; ``Volume.source`` is given the
    shown name (:func:`source_name`).
    """
    name = Path(path).name
    shown_name(name)
    return name


def source_name(name: str) -> str:
    """What ``Volume.source`` holds for a file named ``name`` (see :mod:`rtfb.ingest.names`)."""
    return shown_name(name)


def check_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path after checking that it is a non-empty regular file.

    Raises
    ------
    IngestError
        Missing, not a regular file, or empty (0 bytes).
    """
    path = Path(path)
    shown_name(path.name)  # noted for the log filter (rtfb.ingest.names)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IngestError(f"{file_name(path)}: no such file.") from None
    except OSError as err:
        raise IngestError(f"{file_name(path)}: cannot access the file ({err.strerror}).") from None
    if not path.is_file():
        raise IngestError(f"{file_name(path)}: not a regular file.")
    if size == 0:
        raise IngestError(f"{file_name(path)}: empty file (0 bytes).")
    return path


def read_head(path: Path, n_bytes: int = 1024) -> bytes:
    """First ``n_bytes`` bytes of a file (fewer if it is shorter)."""
    try:
        with open(path, "rb") as fobj:
            return fobj.read(n_bytes)
    except OSError as err:
        raise IngestError(f"{file_name(path)}: cannot read the file ({err.strerror}).") from None


def incomplete(name: str, what: str, expected: int, present: int) -> IncompleteFileError:
    """An IncompleteFileError saying how many bytes were expected and are present."""
    return IncompleteFileError(
        f"{name}: incomplete file: {what}: expected {expected} bytes, found {present} "
        f"({expected - present} missing)."
    )


def describe_error(err: BaseException) -> str:
    """Type and message of a third-party error, with quoted values blanked out.

    Library messages sometimes quote element values; quoted text is replaced by ``'...'``
    and the message is shortened, so that a header value cannot leak through.
    """
    text = _QUOTED.sub("'...'", " ".join(str(err).split()))
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextlib.contextmanager
def reading(name: str) -> Iterator[None]:
    """Turn any unexpected error raised while reading ``name`` into an IngestError.

    IngestError (and IncompleteFileError) pass through; anything else (a library error on an
    odd value, say) becomes ``IngestError`` with the blanked-out description of
    :func:`describe_error`, not chained, so its text cannot reach a log.
    """
    try:
        yield
    except IngestError:
        raise
    except Exception as err:  # noqa: BLE001 - the point: no bare library exception escapes
        raise IngestError(f"{name}: unreadable file ({describe_error(err)}).") from None


def _library_dirs() -> tuple[str, ...]:
    import nibabel
    import pydicom

    here = os.path.dirname(os.path.abspath(__file__)) + os.sep  # stacklevel may point here
    return (here,) + tuple(os.path.dirname(m.__file__) + os.sep for m in (pydicom, nibabel))


@contextlib.contextmanager
def captured_warnings(name: str) -> Iterator[None]:
    """Keep warnings of the third-party readers out of the logs (they may quote values).

    Warnings raised inside pydicom, nibabel or these readers while reading are dropped and
    logged at DEBUG by category only. ``warnings.catch_warnings`` is process-wide, so
    warnings that another thread raises meanwhile are caught too: those are re-emitted
    unchanged afterwards.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    dropped = []
    libraries = _library_dirs()
    for item in caught:
        if str(item.filename).startswith(libraries):
            dropped.append(item.category.__name__)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno,
                                   source=item.source)
    if dropped:
        logger.debug("%s: %d reader warning(s) suppressed (%s)", name, len(dropped),
                     ", ".join(sorted(set(dropped))))


def split_numbered_name(name: str, suffixes: tuple[str, ...]) -> tuple[str, int | None]:
    """Split ``"<prefix>_<NNNNN><suffix>"`` into ``(prefix, NNNNN)``.

    ``suffixes`` are the extensions to strip (case-insensitive, longest first). Names without
    a trailing volume counter (``_`` or ``-`` then 3+ digits zero-padded, or 4+ digits) give
    ``(stem, None)``: a short number (``_64``, ``_2``) is part of the name, not a counter.
    """
    stem = name
    for suffix in sorted(suffixes, key=len, reverse=True):
        if stem.lower().endswith(suffix):
            stem = stem[: len(stem) - len(suffix)]
            break
    match = _NUMBERED.match(stem)
    if match is None:
        return stem, None
    return match.group("prefix"), int(match.group("number"))


def short_hash(text: str, prefix: str) -> str:
    """Stable, non-reversible short key for ``text`` (12 hex digits after ``prefix``)."""
    return prefix + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:12]
