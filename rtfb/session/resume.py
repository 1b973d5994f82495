"""Resuming a session from its own record (``rtfb run --resume DIR``).

The recorded volumes are processed again silently, in their recorded order, which rebuilds
every incremental state (realignment reference, nuisance fit, metric windows, baseline,
schedules) bit for bit; volumes received but not processed before the crash are then
processed, and acquisition continues after the last recorded index.
"""

from __future__ import annotations

import time

import numpy as np

from ..ingest import Volume
from .reference import reference_problem

__all__ = ["ResumeMixin"]


class ResumeMixin:
    """The resume part of :class:`rtfb.session.runner.Session` (uses its state)."""

    def _rebuild_from_record(self) -> int:
        """Re-process the recorded volumes silently (resume); returns the next index."""
        rec = self.record_in
        done = {v["index"] for v in rec.volumes}
        # inputs that were processed, or received and not processed yet; not the late
        # ones, nor the rejected reference candidates (never processed)
        by_index = {e["index"]: i for i, e in enumerate(rec.inputs)
                    if not e.get("late") and not (e.get("rejected") and e["index"] not in done)}
        self._silent = True
        try:
            for entry in rec.volumes:
                idx = entry["index"]
                if idx in by_index:
                    self._received.add(idx)
                if idx not in by_index or rec.inputs[by_index[idx]].get("rejected"):
                    if self._state_ready:
                        reason = (rec.inputs[by_index[idx]]["rejected"] if idx in by_index
                                  else None)
                        self._process(None, idx, None, rejected=reason)
                    continue
                vol = self._recorded_volume(by_index[idx])
                if not self._state_ready:
                    self._setup(vol)
                self._process(vol, idx, None)
        finally:
            self._silent = False
        # inputs received but not processed before the crash: process them now
        for idx, pos in sorted(by_index.items()):
            if idx not in done:
                vol = self._recorded_volume(pos)
                self.handle_recorded(vol)
        indices = [v["index"] for v in rec.volumes] + [e["index"] for e in rec.inputs]
        return max(indices + [-1]) + 1

    def handle_recorded(self, vol: Volume) -> None:
        """Process a volume recorded before a crash but never processed (resume)."""
        now = time.time()
        if not self._state_ready:
            if reference_problem(vol, self.protocol) is not None:
                return
            try:
                self._setup(vol)
            except ValueError:  # reported when it was received
                return
        self._received.add(vol.index)
        problem = self._geometry.check(vol)
        self._process(None if problem else vol, vol.index, {"dequeued": now},
                      acquisition_time=vol.acquisition_time, rejected=problem)

    def _recorded_volume(self, pos: int) -> Volume:
        e = self.record_in.inputs[pos]
        return Volume(self.record_in.input_volume(pos), np.asarray(e["affine"]), e["index"],
                      acquisition_time=e.get("acquisition_time"), tr=e.get("tr"),
                      source=e.get("source", ""))
