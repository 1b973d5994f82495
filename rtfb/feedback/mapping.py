"""Scaling of a metric value to the display value in [0, 1]."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .._utils.checks import _check_option, check_positive_number

__all__ = ["FeedbackMapper"]


class FeedbackMapper:
    """Map a metric value to a display value relative to a baseline.

    For a metric value ``m`` and a baseline ``b``:

    1. ``change="relative"``: ``c = (m - b) / |b|`` (absolute change ``m - b`` when
       ``b == 0``); ``change="difference"``: ``c = m - b`` (for metrics near 0 such as a
       Fisher z);
    2. ``c = -c`` when ``direction == "down"`` (the participant is trained to lower the
       metric, so a decrease fills the bar);
    3. ``c = c / scale``;
    4. ``v = 0.5 + 0.5 * c`` (no change -> half bar; a change of ``scale`` -> full bar);
    5. ``v`` clipped to ``clip``;
    6. exponential smoothing ``s = smoothing * v + (1 - smoothing) * s_previous``
       (``smoothing`` is the weight of the new value; 1 disables it; the first value is
       taken as is).

    Parameters
    ----------
    direction : {"up", "down"}
        Direction of regulation rewarded by a fuller bar.
    scale : float
        Change (a fraction of the baseline for ``"relative"``, metric units for
        ``"difference"``) mapped to a full (or empty) bar.
    clip : tuple of float
        ``(low, high)`` bounds of the display value, within [0, 1].
    smoothing : float
        Weight of the new value in (0, 1].
    target : float
        Level of the target line in [0, 1] (carried for the messages; not used in the
        mapping).
    change : {"relative", "difference"}
        How the metric is compared with the baseline.

    Attributes
    ----------
    baseline_ : float | None
        Baseline set by :meth:`set_baseline` (None before).
    value_ : float | None
        Last display value returned by :meth:`transform` (the smoothing state).

    Notes
    -----
    A non-finite metric value (NaN, e.g. during warm-up or for a censored volume) gives
    ``None`` and leaves the smoothing state untouched, so the next finite value is smoothed
    against the last shown one. Before a baseline exists, :meth:`transform` returns ``None``.
    """

    def __init__(self, direction: str = "up", scale: float = 1.0,
                 clip: tuple[float, float] = (0.0, 1.0), smoothing: float = 1.0,
                 target: float = 0.75, change: str = "relative"):
        self.direction = _check_option("direction", direction, ("up", "down"))
        self.change = _check_option("change", change, ("relative", "difference"))
        self.scale = check_positive_number(scale, "scale")
        try:
            low, high = (float(c) for c in clip)
        except (TypeError, ValueError) as err:
            raise ValueError(f"clip must be a pair (low, high) of numbers, got {clip!r}.") \
                from err
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"clip must satisfy 0 <= low < high <= 1, got {clip!r}.")
        self.clip = (low, high)
        self.smoothing = check_positive_number(smoothing, "smoothing")
        if self.smoothing > 1:
            raise ValueError(f"smoothing must be in (0, 1] (weight of the new value), "
                             f"got {smoothing!r}.")
        target = float(target) if _is_real(target) else target
        if not _is_real(target) or not 0.0 <= target <= 1.0:
            raise ValueError(f"target must be a number in [0, 1], got {target!r}.")
        self.target = target
        self.baseline_: float | None = None
        self.value_: float | None = None

    def set_baseline(self, value: Any) -> FeedbackMapper:
        """Set the baseline metric value.

        Parameters
        ----------
        value : float | array-like
            The baseline, or the metric values of the baseline period (their mean over the
            finite ones is used).

        Returns
        -------
        FeedbackMapper
            ``self``.
        """
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim > 1:
            raise ValueError(f"baseline must be a number or a 1D sequence, got shape "
                             f"{arr.shape}.")
        arr = np.atleast_1d(arr)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            raise ValueError(f"baseline has no finite value: {value!r}.")
        self.baseline_ = float(finite.mean())
        return self

    def reset(self) -> FeedbackMapper:
        """Forget the smoothing state (keeps the baseline); returns ``self``."""
        self.value_ = None
        return self

    def raw_value(self, metric_value: float) -> float | None:
        """Display value before smoothing (steps 1-5), or None (no baseline or NaN)."""
        if self.baseline_ is None:
            return None
        if not _is_real(metric_value):
            raise TypeError(f"metric_value must be a number, got {type(metric_value).__name__}.")
        m = float(metric_value)
        if not math.isfinite(m):
            return None
        b = self.baseline_
        if self.change == "relative" and b != 0:
            change = (m - b) / abs(b)
        else:
            change = m - b
        if self.direction == "down":
            change = -change
        v = 0.5 + 0.5 * (change / self.scale)
        return min(max(v, self.clip[0]), self.clip[1])

    def transform(self, metric_value: float) -> float | None:
        """Return the display value of one metric value (updates the smoothing state).

        Returns
        -------
        float | None
            The display value in ``clip``, or None before a baseline exists or when
            ``metric_value`` is not finite.
        """
        v = self.raw_value(metric_value)
        if v is None:
            return None
        if self.value_ is not None and self.smoothing < 1:
            v = self.smoothing * v + (1.0 - self.smoothing) * self.value_
        self.value_ = v
        return v

    def __repr__(self) -> str:
        return (f"FeedbackMapper(direction={self.direction!r}, scale={self.scale}, "
                f"clip={self.clip}, smoothing={self.smoothing}, target={self.target}, "
                f"change={self.change!r})")


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)
