"""Checks of a session record before it is resumed or replayed.

A resumed or replayed session must run the protocol it started with, on the very volumes it
received: :func:`verify_protocol` compares the protocol copy (and a protocol file given on
the command line) with the SHA-256 recorded in ``session.json``, :func:`verify_inputs` checks
every received volume in ``inputs.bin`` against its recorded SHA-256. Both raise
:class:`~rtfb.exceptions.RecordError` naming the file and the first bad entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..exceptions import RecordError
from .record_reader import SessionRecord, load_record

__all__ = ["verify_inputs", "verify_protocol", "verify_record"]


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise RecordError(f"{path}: cannot read: {err.strerror or err}.") from None


def verify_protocol(session_dir: str | os.PathLike,
                    given: str | os.PathLike | None = None) -> None:
    """Refuse a protocol copy (or a ``given`` protocol file) that differs from the original.

    Parameters
    ----------
    session_dir : path
        Session folder (``session.json`` holds ``protocol_sha256``).
    given : path | None
        A protocol file given on the command line with ``--resume``.
    """
    session_dir = Path(session_dir)
    try:
        info = json.loads((session_dir / "session.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RecordError(f"{session_dir / 'session.json'}: cannot read: {err}.") from None
    recorded = info.get("protocol_sha256") if isinstance(info, dict) else None
    copy = session_dir / "protocol.toml"
    if not recorded:
        raise RecordError(f"{session_dir / 'session.json'}: no protocol_sha256 recorded; "
                          f"cannot check that {copy} is the protocol the session started with.")
    actual = _sha256(copy)
    if actual != recorded:
        raise RecordError(f"{copy}: changed since the session started (sha256 {actual[:12]}... "
                          f"recorded {recorded[:12]}...): a session continues only with the "
                          f"protocol it started with; start a new session instead.")
    if given is not None and _sha256(Path(given)) != recorded:
        raise RecordError(f"{given}: differs from the protocol this session started with "
                          f"({copy}); leave PROTOCOL out to resume with the session's own, or "
                          f"start a new session.")


def verify_inputs(record: SessionRecord | str | os.PathLike) -> int:
    """Check every received volume of ``inputs.bin`` against its recorded SHA-256.

    Returns
    -------
    int
        Number of volumes checked.

    Raises
    ------
    RecordError
        Naming the first volume whose data is missing, truncated or changed.
    """
    if not isinstance(record, SessionRecord):
        record = load_record(record)
    for position, entry in enumerate(record.inputs):
        try:
            record.input_volume(position, verify=True)
        except (ValueError, OSError) as err:
            raise RecordError(f"{record.inputs_bin}: received volume {entry.get('index')} "
                              f"(entry {position} of inputs.jsonl) does not match its recorded "
                              f"checksum: {err}") from None
    return len(record.inputs)


def verify_record(session_dir: str | os.PathLike,
                  given: str | os.PathLike | None = None) -> SessionRecord:
    """:func:`verify_protocol` then :func:`verify_inputs`; returns the loaded record."""
    record = load_record(session_dir)  # "Session folder not found: ..." first
    verify_protocol(session_dir, given)
    verify_inputs(record)
    return record
