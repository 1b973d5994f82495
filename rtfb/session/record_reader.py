"""Read a session record folder (format version 1, see ``docs/session_record.md``).

The record is append-only and every line is written with one ``write`` followed by
``fsync``, so the only damage a crash (even ``kill -9``) can leave is a last line without
its final newline: :func:`read_jsonl` ignores it. Everything else that does not follow the
format raises :class:`ValueError` (or :class:`FileNotFoundError` for a missing file) naming
the file, and the line where it applies.

This module depends only on the standard library and numpy, so the session runner, replay
and the report can all use it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "RECORD_FILES",
    "SessionRecord",
    "load_record",
    "read_jsonl",
]

FORMAT_VERSION = 1

#: Files every session record holds (``inputs.bin`` is read only when voxel data is needed).
RECORD_FILES = ("session.json", "inputs.jsonl", "volumes.jsonl", "events.jsonl",
                "messages.jsonl")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file of the session record.

    Parameters
    ----------
    path : str | pathlib.Path
        The file.

    Returns
    -------
    list of dict
        One object per complete line, in file order. A last line without its final newline
        (a write cut by a crash) is ignored, as are blank lines.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a complete line is not a JSON object (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Session record file not found: {path}")
    data = path.read_bytes()
    lines = data.split(b"\n")
    # After split, the last element is b"" when the file ends with a newline, otherwise it
    # is the cut last line: in both cases it is dropped.
    complete = lines[:-1]
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}:{number}: not a valid JSON line ({err}).") from None
        if not isinstance(obj, dict):
            raise ValueError(
                f"{path}:{number}: expected a JSON object, got {type(obj).__name__}."
            )
        records.append(obj)
    return records


def _read_session_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"Session record file not found: {path} (is {path.parent} a session folder "
            "written by `rtfb run`?)"
        )
    try:
        session = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(session, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(session).__name__}.")
    version = session.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported session record format_version {version!r} "
            f"(this rtfb reads version {FORMAT_VERSION})."
        )
    return session


@dataclass
class SessionRecord:
    """A session record read from disk.

    Attributes
    ----------
    path : pathlib.Path
        The session folder.
    session : dict
        The parsed ``session.json``.
    inputs : list of dict
        ``inputs.jsonl``: one entry per received volume, in the order received.
    volumes : list of dict
        ``volumes.jsonl``: one entry per processed volume.
    events : list of dict
        ``events.jsonl``: session events.
    messages : list of dict
        ``messages.jsonl``: every ZeroMQ message sent, ``{"topic", "message"}``.
    """

    path: Path
    session: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def inputs_bin(self) -> Path:
        """Path of ``inputs.bin`` (the voxel data of every received volume)."""
        return self.path / "inputs.bin"

    @property
    def maps_dir(self) -> Path:
        """Path of ``maps/`` (whole-brain maps of monitoring protocols; may not exist)."""
        return self.path / "maps"

    @property
    def session_id(self) -> str | None:
        """``session_id`` from ``session.json`` (None when absent)."""
        return self.session.get("session_id")

    def map_files(self) -> list[Path]:
        """NIfTI files in ``maps/``, sorted by name (empty when there is no ``maps/``)."""
        if not self.maps_dir.is_dir():
            return []
        return sorted(p for p in self.maps_dir.iterdir()
                      if p.is_file() and p.name.endswith((".nii", ".nii.gz")))

    def input_position(self, index: int) -> int:
        """Position in :attr:`inputs` of the last received volume with scanner ``index``.

        Raises
        ------
        KeyError
            If no received volume has that index.
        """
        for position in range(len(self.inputs) - 1, -1, -1):
            if self.inputs[position].get("index") == index:
                return position
        raise KeyError(f"No received volume with index {index} in {self.path}/inputs.jsonl.")

    def input_volume(self, i: int, *, verify: bool = False) -> np.ndarray:
        """Voxel data of the ``i``-th received volume, read from ``inputs.bin``.

        Parameters
        ----------
        i : int
            Position in :attr:`inputs` (the order received; negative counts from the end).
            Use :meth:`input_position` to look a volume up by its scanner index.
        verify : bool
            Check the data against the ``sha256`` recorded in ``inputs.jsonl``.

        Returns
        -------
        numpy.ndarray
            A float32 array of the recorded ``shape`` (a copy: the file is not kept open).

        Raises
        ------
        IndexError
            If there is no ``i``-th received volume.
        FileNotFoundError
            If ``inputs.bin`` is missing.
        ValueError
            If the entry is inconsistent (``nbytes`` vs ``shape``), ``inputs.bin`` is shorter
            than the entry says, or ``verify`` finds a checksum mismatch.
        """
        n = len(self.inputs)
        if not -n <= i < n:
            raise IndexError(f"Input volume {i} out of range: {n} volume(s) recorded in "
                             f"{self.path / 'inputs.jsonl'}.")
        entry = self.inputs[i]
        where = f"{self.path / 'inputs.jsonl'} entry {i % n}"
        try:
            offset = int(entry["offset"])
            nbytes = int(entry["nbytes"])
            shape = tuple(int(s) for s in entry["shape"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: needs integer 'offset', 'nbytes' and 'shape' "
                             f"({err!r}).") from None
        itemsize = np.dtype(np.float32).itemsize
        if nbytes != math.prod(shape) * itemsize or offset < 0:
            raise ValueError(f"{where}: nbytes={nbytes} does not match float32 shape {shape} "
                             f"(expected {math.prod(shape) * itemsize}), or offset < 0.")
        path = self.inputs_bin
        if not path.is_file():
            raise FileNotFoundError(f"Session record file not found: {path}")
        size = path.stat().st_size
        if offset + nbytes > size:
            raise ValueError(f"{path}: {size} bytes, too short for {where} "
                             f"(offset {offset} + nbytes {nbytes}).")
        if nbytes == 0:
            return np.zeros(shape, dtype=np.float32)
        mapped = np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=shape,
                           order="C")
        data = np.array(mapped, copy=True)
        del mapped  # unmaps the file
        if verify:
            expected = entry.get("sha256")
            actual = hashlib.sha256(data.tobytes(order="C")).hexdigest()
            if expected != actual:
                raise ValueError(f"{where}: sha256 mismatch in {path} "
                                 f"(recorded {expected}, data {actual}).")
        return data

    def mean_input(self) -> np.ndarray | None:
        """Voxel-wise mean of all received volumes (float32), or None when there are none.

        Volumes whose shape differs from the first one are skipped.
        """
        if not self.inputs:
            return None
        total = None
        count = 0
        for position in range(len(self.inputs)):
            volume = self.input_volume(position)
            if total is None:
                total = np.zeros(volume.shape, dtype=np.float64)
            elif volume.shape != total.shape:
                continue
            total += volume
            count += 1
        return (total / count).astype(np.float32)


def load_record(session_dir: str | Path) -> SessionRecord:
    """Load a session record folder.

    Parameters
    ----------
    session_dir : str | pathlib.Path
        The folder written by ``rtfb run``.

    Returns
    -------
    SessionRecord
        The parsed ``session.json`` and JSON-lines files (``inputs.bin`` and ``maps/`` are
        read on demand).

    Raises
    ------
    FileNotFoundError
        If the folder or one of :data:`RECORD_FILES` is missing (the message names it).
    ValueError
        If a file does not follow the format (the message names the file and line).
    """
    path = Path(session_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"Session folder not found: {path}")
    session = _read_session_json(path / "session.json")
    return SessionRecord(
        path=path,
        session=session,
        inputs=read_jsonl(path / "inputs.jsonl"),
        volumes=read_jsonl(path / "volumes.jsonl"),
        events=read_jsonl(path / "events.jsonl"),
        messages=read_jsonl(path / "messages.jsonl"),
    )
