"""Crash-safe session record writer (format: docs/session_record.md).

Every line is written with one ``write`` followed by ``flush``, so that a crash of the
process (even ``kill -9``) loses nothing already handed to the recorder, and the session
calls :meth:`SessionRecorder.request_sync` once per volume, when its feedback message is
sent: a background thread then fsyncs every file, so that a machine crash loses at most
the volumes in flight while the fsync stays off the processing and publishing threads; a
reader ignores a final line without its newline. The raw voxel data of every received volume go to
``inputs.bin`` before the volume is processed, so a session can always be replayed or
resumed from its record alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..ingest.names import source_hash
from ..ingest.volume import Volume

FORMAT_VERSION = 1


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars/arrays -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def dumps(value: Any) -> str:
    """One JSON line (floats round-trip exactly; NaN written as null)."""
    return json.dumps(_clean(value), separators=(",", ":"), allow_nan=False)


class _AppendFile:
    def __init__(self, path: Path, binary: bool = False):
        self.path = path
        self._fh = open(path, "ab" if binary else "a", encoding=None if binary else "utf-8")
        if not binary and self._fh.tell() > 0:
            self._repair_last_line()

    def _repair_last_line(self) -> None:
        """Drop a final line cut by a crash so the next line starts cleanly."""
        with open(self.path, "rb") as fh:
            data = fh.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            self._fh.close()
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
            self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, data) -> None:
        """Write and flush to the OS: the data survive a crash of the process."""
        self._fh.write(data)
        self._fh.flush()

    def sync(self) -> None:
        """fsync: the data survive a crash of the machine."""
        if not self._fh.closed:
            os.fsync(self._fh.fileno())

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        if not self._fh.closed:
            os.fsync(self._fh.fileno())
        self._fh.close()


class SessionRecorder:
    """Writes one session folder, append-only and flushed per volume.

    Parameters
    ----------
    directory : str | Path
        Session folder (created; may exist when resuming).
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "maps").mkdir(exist_ok=True)
        self._inputs_bin = _AppendFile(self.directory / "inputs.bin", binary=True)
        self._bin_size = self._check_bin_consistency()
        self._inputs = _AppendFile(self.directory / "inputs.jsonl")
        self._volumes = _AppendFile(self.directory / "volumes.jsonl")
        self._events = _AppendFile(self.directory / "events.jsonl")
        self._messages = _AppendFile(self.directory / "messages.jsonl")
        self._messages_lock = threading.Lock()  # written by the publisher's thread
        self._volumes_lock = threading.Lock()  # idem (lines of sent feedback)
        self._events_lock = threading.Lock()  # idem (display connected / lost)
        self._sync_wanted = threading.Event()
        self._sync_stop = False
        self._syncer: threading.Thread | None = None

    def _check_bin_consistency(self) -> int:
        """Size of inputs.bin covered by inputs.jsonl (bytes after it came from a crash)."""
        size = self._inputs_bin.tell()
        index_path = self.directory / "inputs.jsonl"
        covered = 0
        if index_path.exists():
            for line in index_path.read_bytes().split(b"\n"):
                if line.strip():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    covered = max(covered, entry["offset"] + entry["nbytes"])
        if size > covered:  # data written, index line lost in a crash: cut the orphan bytes
            self._inputs_bin.close()
            with open(self.directory / "inputs.bin", "r+b") as fh:
                fh.truncate(covered)
            self._inputs_bin = _AppendFile(self.directory / "inputs.bin", binary=True)
        return covered

    def write_session(self, info: dict, protocol_path=None) -> None:
        """Write ``session.json`` atomically (and copy the protocol file once)."""
        if protocol_path is not None and not (self.directory / "protocol.toml").exists():
            shutil.copyfile(protocol_path, self.directory / "protocol.toml")
        info = dict(info, format_version=FORMAT_VERSION, rtfb_version=__version__)
        tmp = self.directory / "session.json.tmp"
        tmp.write_text(json.dumps(_clean(info), indent=2), encoding="utf-8")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / "session.json")

    def write_input(self, volume: Volume, time_received: float, late: bool = False,
                    rejected: str | None = None) -> dict:
        """Append a received volume's data and its index line; returns the entry.

        ``rejected``: why the volume was not used (bad reference candidate, geometry
        that differs from the reference), recorded with it.
        """
        raw = np.ascontiguousarray(volume.data, dtype=np.float32).tobytes()
        entry = {
            "index": volume.index, "source": volume.source,
            "source_hash": source_hash(volume.source),
            "sha256": hashlib.sha256(raw).hexdigest(), "offset": self._bin_size,
            "nbytes": len(raw), "shape": list(volume.shape), "affine": volume.affine,
            "acquisition_time": volume.acquisition_time, "tr": volume.tr,
            "time_received": time_received, "late": late,
        }
        if rejected is not None:
            entry["rejected"] = rejected
        self._inputs_bin.write(raw)
        self._bin_size += len(raw)
        self._inputs.write(dumps(entry) + "\n")
        return entry

    def write_volume(self, entry: dict) -> None:
        """Append one processed volume's line (thread-safe: the publisher's thread writes
        the lines of the volumes it sent).
        """
        with self._volumes_lock:
            self._volumes.write(dumps(entry) + "\n")

    def write_event(self, kind: str, message: str, index: int | None = None, **extra) -> None:
        """Append a session event (start, block, missing, late, warning, error, resume, end)."""
        event = {"time": time.time(), "kind": kind, "message": message, **extra}
        if index is not None:
            event["index"] = index
        with self._events_lock:
            self._events.write(dumps(event) + "\n")

    def write_message(self, topic: str, message: dict) -> None:
        """Append one published ZeroMQ message exactly as sent (thread-safe)."""
        with self._messages_lock:
            self._messages.write(dumps({"topic": topic, "message": message}) + "\n")

    def sync(self) -> None:
        """Call os.fsync on every file (once per volume, after publishing)."""
        for f in (self._inputs_bin, self._inputs):
            f.sync()
        with self._events_lock:
            self._events.sync()
        with self._volumes_lock:
            self._volumes.sync()
        with self._messages_lock:
            self._messages.sync()

    def request_sync(self) -> None:
        """Ask a background thread to fsync every file soon (never blocks the caller:
        keeps the fsync off the latency path of the processing and publishing threads).
        """
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="rtfb-record-sync",
                                            daemon=True)
            self._syncer.start()
        self._sync_wanted.set()

    def _sync_loop(self) -> None:
        while not self._sync_stop:
            self._sync_wanted.wait(0.5)
            if self._sync_wanted.is_set():
                self._sync_wanted.clear()
                try:
                    self.sync()
                except (OSError, ValueError):  # closed meanwhile, or disk trouble
                    pass

    def close(self, messages: bool = True) -> None:
        """Close the files (``messages=False`` keeps messages.jsonl and volumes.jsonl open
        for the publisher's thread, see :meth:`close_volumes`).
        """
        for f in (self._inputs_bin, self._inputs, self._events):
            f.close()
        if messages:
            self.close_volumes()
            self.close_messages()

    def close_volumes(self) -> None:
        """Close volumes.jsonl (after the publisher has sent everything)."""
        self._sync_stop = True
        with self._volumes_lock:
            self._volumes.close()

    def close_messages(self) -> None:
        """Close messages.jsonl (after the publisher has sent everything)."""
        with self._messages_lock:
            self._messages.close()
