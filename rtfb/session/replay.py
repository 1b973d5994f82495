"""Replay a recorded session from its recorded inputs (``rtfb replay``).

:class:`RecordSource` hands the recorded volumes (and the recorded missing ones) to a new
:class:`~rtfb.session.runner.Session` in the original processing order, so every feedback
value and metric is reproduced bit for bit; :func:`load_recorded_protocol` loads the
session's protocol copy (also used by ``rtfb run --resume``).
"""

from __future__ import annotations

import json
import queue
from pathlib import Path

import numpy as np

from ..config import load_protocol
from ..ingest import Missing, Volume
from .record_reader import load_record
from .runner import Session

__all__ = ["RecordSource", "load_recorded_protocol", "replay_session"]


def load_recorded_protocol(session_dir):
    """The protocol copy of a session, with relative paths resolved as in the original."""
    session_dir = Path(session_dir)
    info = json.loads((session_dir / "session.json").read_text(encoding="utf-8"))
    base = info.get("protocol_dir")
    return load_protocol(session_dir / "protocol.toml",
                         base_dir=base if base and Path(base).is_dir() else None)


class RecordSource:
    """Yields a recorded session's processing sequence (for replay), like a live source."""

    #: the session ends as "finished" when the recording is exhausted
    complete_when_stopped = True

    def __init__(self, session_dir):
        self.record = load_record(session_dir)
        self._items = []
        inputs = {e["index"]: i for i, e in enumerate(self.record.inputs) if not e.get("late")}
        for entry in self.record.volumes:
            idx = entry["index"]
            if idx in inputs:
                e = self.record.inputs[inputs[idx]]
                self._items.append(Volume(self.record.input_volume(inputs[idx]),
                                          np.asarray(e["affine"]), idx,
                                          acquisition_time=e.get("acquisition_time"),
                                          tr=e.get("tr"), source=e.get("source", "")))
            else:
                self._items.append(Missing(idx, entry.get("missing_reason", "recorded missing")))
        self.running = True

    def get(self, timeout=None):
        """Next recorded item; ``queue.Empty`` at the end."""
        if not self._items:
            self.running = False
            raise queue.Empty
        return self._items.pop(0)


def replay_session(session_dir, out_dir, protocol=None) -> Path:
    """Re-run a recorded session from its recorded inputs into ``out_dir``.

    Every feedback value and metric equals the original bit for bit (processing depends
    only on the recorded inputs and their order). Nothing is published.
    """
    session_dir = Path(session_dir)
    protocol = protocol or load_recorded_protocol(session_dir)
    source = RecordSource(session_dir)
    session = Session(protocol, out_dir, rois_from=session_dir,
                      source_info={"kind": "replay", "of": str(session_dir)})
    session.replay_stale = {v["index"] for v in source.record.volumes
                            if "stale" in v.get("flags", ())}
    return session.run(source)
