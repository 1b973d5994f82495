"""Slice timing checks shared by the readers (times in seconds from the first slice)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger("rtfb.ingest")

__all__ = ["checked_slice_timing"]

_DAY_S = 86400.0


def checked_slice_timing(times: Any, tr: float | None, name: str) -> list[float] | None:
    """Slice times in seconds from the first slice, normalised and checked; None if unknown.

    Times that wrap past midnight (a CSA or frame time of 86399.9 s next to 0.1 s, as CMRR
    multiband mosaics write them) are unwrapped to one continuous run and shifted so that the
    earliest slice is at 0, as dcm2niix does. All-zero times mean "not known" (None); times
    not within [0, TR) are dropped (None) with a log line, never passed on.
    """
    t = np.asarray(times, dtype=np.float64) % _DAY_S
    if t.size == 0 or not np.isfinite(t).all():
        return None
    if t.max() - t.min() > _DAY_S / 2:
        t = np.where(t > _DAY_S / 2, t - _DAY_S, t)
    t = t - t.min()
    if not np.any(t > 0):
        return None
    if tr is not None and t.max() >= tr:
        logger.info("%s: slice times span %.3f s, not within one TR (%.3f s): slice timing "
                    "recorded as unknown", name, float(t.max()), tr)
        return None
    return [round(float(x), 6) for x in t]
