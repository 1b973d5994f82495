"""Slices per volume of a classic single-slice series whose header does not say it.

Siemens XA interoperability exports, Siemens E11 and Philips classic files without private
tags carry no ImagesInAcquisition: :func:`rtfb.ingest.read.probe` gives them ``n_parts=0``.
The watcher then learns the count from the first volume of the series: that volume is
complete when a slice of a later volume arrives at a position the first volume already has
(slice positions repeating); its number of slices is the count for the whole series. The
first volume is therefore handed over when the second begins (one TR later); every later
volume as soon as its last slice is there.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

logger = logging.getLogger("rtfb.ingest")

__all__ = ["SliceCounts"]


class SliceCounts:
    """Learn slices per volume, per series, from the first complete volume."""

    def __init__(self) -> None:
        self._counts: dict[Hashable, int] = {}
        self._seen: dict[Hashable, dict[int, dict[Hashable, float | None]]] = {}

    def count(self, series: Hashable) -> int:
        """Learned slices per volume of ``series``; 0 while not known."""
        return self._counts.get(series, 0)

    def observe(self, series: Hashable, index: int, part: Hashable,
                position: float | None = None) -> int:
        """Note slice ``part`` of volume ``index`` at ``position`` (mm along the normal).

        Returns the slices per volume once known (0 before).
        """
        if series in self._counts:
            return self._counts[series]
        seen = self._seen.setdefault(series, {})
        seen.setdefault(index, {})[part] = position
        first = min(seen)
        if index == first:
            return 0
        positions = {round(p, 2) for p in seen[first].values() if p is not None}
        repeats = position is None or not positions or round(position, 2) in positions
        if index < first or not repeats:
            return 0
        n = len(seen[first])
        self._counts[series] = n
        del self._seen[series]
        logger.info("classic slice series: %d slices per volume, learned from volume %d "
                    "(positions repeat in volume %d)", n, first, index)
        return n
