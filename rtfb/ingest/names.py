"""File names without patient data: what ingest shows of a scanner's file name.

Some exports name files after the patient (``DOE^JOHN.MR.<study>.0013.0001.<date>.IMA``), so a
file name is shown (in messages, logs, ``Volume.source`` and the session record) only when it
matches a known non-identifying export pattern; any other name is shown as ``file-<hash>``,
a short SHA-256 of the name (stable: the same file gives the same key).

Known patterns (case-insensitive, :data:`SAFE_NAME_PATTERNS`): Siemens real-time export
``NNN_NNNNNN_NNNNNN.dcm``; GE ``iNNNN.MRDC.N`` and ``ENNNNSNIN.MR``; Philips ``IM_NNNN``;
names of digits and separators only (up to 20 characters, an optional image extension):
``75739541``, ``2101_0001.dcm``, ``6_1.dcm``; volume files ``<word>_NNNNN.<ext>`` whose word is
one of vol, volume, func, bold, run, img, image, dyn, dynamic, dump (Philips real-time
``Dump-NNNN``), scan, rest, epi, mr, im, series, rt (what simulator and real-time exports write).

:class:`NameFilter` is a logging filter on the ``rtfb`` loggers: any file name that went
through :func:`shown_name` and does not match a pattern is replaced by its key in every log
line, whatever code logged it (a safety net for messages built from raw names).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading

__all__ = ["SAFE_NAME_PATTERNS", "NameFilter", "install_name_filter", "is_safe_name",
           "name_hash", "shown_name", "source_hash"]

_EXT = r"(?:\.(?:dcm|ima|img|mr|nii|nii\.gz|par|rec|json))?"
_WORDS = "vol|volume|func|bold|run|img|image|dyn|dynamic|dump|scan|rest|epi|mr|im|series|rt"
#: Name patterns of exports that carry no patient data (full match, case-insensitive).
SAFE_NAME_PATTERNS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"\d{3}_\d{6}_\d{6}\.dcm",  # Siemens real-time export
    r"i\d+\.MRDC\.\d+",  # GE
    r"E\d+S\d+I\d+\.(?:MR|DCM)",  # GE Signa
    r"IM_\d+" + _EXT,  # Philips
    r"[0-9][0-9._-]{0,19}" + _EXT,  # digits and separators only (not a UID: <= 20 chars)
    rf"(?:{_WORDS})[_-]?\d+" + _EXT,  # volume files: vol_00001.nii, func-0001.nii.gz
    r"[0-9]{1,6}_(?:\d+_)?(?:{_WORDS})[_-]?\d+" + _EXT,
))
_MAX_REMEMBERED = 200_000


def is_safe_name(name: str) -> bool:
    """Whether ``name`` matches one of :data:`SAFE_NAME_PATTERNS`."""
    return any(p.fullmatch(name) for p in SAFE_NAME_PATTERNS)


def name_hash(name: str) -> str:
    """``file-`` and 12 hex digits of the SHA-256 of ``name``."""
    return "file-" + hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:12]


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.unsafe: dict[str, str] = {}

    def shown(self, name: str) -> str:
        if is_safe_name(name):
            return name
        key = name_hash(name)
        with self._lock:
            if len(self.unsafe) >= _MAX_REMEMBERED:
                self.unsafe.clear()
            self.unsafe[name] = key
        return key


_REGISTRY = _Registry()


def shown_name(name: str) -> str:
    """``name`` if it matches a known non-identifying pattern, else its :func:`name_hash`.

    Names given here are remembered so that :class:`NameFilter` can blank them out of log
    lines built from the raw name.
    """
    return _REGISTRY.shown(str(name))


_TOKEN = re.compile(r"[^\s:,;()'\"\[\]<>]+")


_FILE_LIKE = re.compile(r"[.^0-9]")


def _redact(text: str) -> str:
    """Noted unsafe names in ``text`` replaced by their keys.

    Only tokens that look like file names (a dot, a caret or a digit in them) are looked up,
    so that a file called ``empty`` does not blank the word out of every message; such a
    name is still replaced where it is a whole argument of the log call.
    """
    unsafe = _REGISTRY.unsafe
    if not unsafe:
        return text

    def replace(match: re.Match) -> str:
        token = match.group(0)
        if _FILE_LIKE.search(token) is None:
            return token
        if token in unsafe:
            return unsafe[token]
        parts = token.split("/")
        if len(parts) > 1 and any(p in unsafe for p in parts):
            return "/".join(unsafe.get(p, p) for p in parts)
        return token

    return _TOKEN.sub(replace, text)


class NameFilter(logging.Filter):
    """Replace remembered unsafe file names in a log record by their keys."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        unsafe = _REGISTRY.unsafe
        if unsafe:
            if isinstance(record.args, tuple) and any(isinstance(a, str) and a in unsafe
                                                      for a in record.args):
                record.args = tuple(unsafe.get(a, a) if isinstance(a, str) else a
                                    for a in record.args)
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken record is logging's business
                return True
            redacted = _redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
            if record.exc_info and record.exc_text is None:
                formatted = logging.Formatter().formatException(record.exc_info)
                record.exc_text = _redact(formatted)
        return True


_FILTER = NameFilter()
_LOGGERS = ("rtfb", "rtfb.ingest", "rtfb.session", "rtfb.feedback", "rtfb.display",
            "rtfb.offline")


def install_name_filter() -> None:
    """Attach the filter to the rtfb loggers (idempotent; done when rtfb.ingest is imported)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def source_hash(source: str) -> str:
    """Hash key of the file a ``Volume.source`` came from.

    ``Volume.source`` is already the key for a name that is not shown; a shown (safe) name
    is hashed here, so that the session record holds a key for every volume.
    """
    source = str(source)
    if re.fullmatch(r"file-[0-9a-f]{12}", source):
        return source
    return name_hash(source)
