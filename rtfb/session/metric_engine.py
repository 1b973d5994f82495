"""Turns each preprocessed volume into the protocol's metric values (and live maps).

The primary metric is computed only where it is needed (ROI voxels, the ROI plus its
neighbours for ReHo, seed and target voxels for FC), unless whole-brain maps are asked for;
then whole-brain states are updated every volume and the ROI value is read off the map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..metrics import SlidingALFF, SlidingPSC, SlidingReHo, SlidingSeedFC

MAP_KINDS = ("alff", "falff", "reho")


def _state(kind: str, window: int, tr: float, band, neighborhood: int, mask3d,
           convention: str = "rtfb"):
    if kind in ("alff", "falff"):
        return SlidingALFF(window, tr, band, convention=convention)
    if kind == "reho":
        return SlidingReHo(window, mask3d, neighborhood)
    raise ValueError(f"No map state for metric kind {kind!r}; expected one of {MAP_KINDS}.")


def _read(state, kind: str) -> np.ndarray:
    return {"alff": lambda s: s.alff_, "falff": lambda s: s.falff_,
            "reho": lambda s: s.reho_}[kind](state)


class MetricEngine:
    """Sliding metric states of one session.

    Parameters
    ----------
    kind : {"psc", "alff", "falff", "reho", "seed_fc"}
        Primary metric fed back.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; every update takes the in-mask vector (C order).
    rois : dict of str -> ndarray of bool, shape (X, Y, Z)
        ROIs on the same grid.
    roi, seed, target : str | None
        ROI names used by the metric.
    window : int
        Sliding window in volumes.
    tr : float
        Repetition time (s).
    band : tuple of float
        ALFF band (Hz).
    neighborhood : int
        ReHo neighbourhood.
    convention : {"rtfb", "dpabi"}
        ALFF / fALFF definition (exact incrementally in both).
    maps : sequence of str
        Whole-brain maps to keep updated (``"alff"``, ``"falff"``, ``"reho"``).
    """

    def __init__(self, kind, mask, rois, *, roi=None, seed=None, target=None, window=64,
                 tr=2.0, band=(0.01, 0.08), neighborhood=27, maps=(), convention="rtfb"):
        self.kind = kind
        self.mask = np.asarray(mask, dtype=bool)
        self.window = window
        index = np.full(self.mask.shape, -1, dtype=np.int64)
        index[self.mask] = np.arange(int(self.mask.sum()))
        self._index = index

        def voxels(name):
            if name not in rois:
                raise ValueError(f"ROI {name!r} is not defined (known: {sorted(rois)}).")
            sel = rois[name] & self.mask
            if not sel.any():
                raise ValueError(f"ROI {name!r} has no voxel inside the brain mask.")
            return sel

        self.maps = {}
        for m in maps:
            self.maps[m] = _state(m, window, tr, band, neighborhood, self.mask, convention)
        if kind == "psc":
            self._roi_idx = index[voxels(roi)]
            self._primary = SlidingPSC(window)
        elif kind in MAP_KINDS:
            roi_mask = voxels(roi)
            if kind in self.maps:
                self._primary = None
                self._sub = None
                self._roi_idx = index[roi_mask]
            elif kind == "reho":
                sub = ndimage.binary_dilation(roi_mask, np.ones((3, 3, 3), bool)) & self.mask
                self._sub = index[sub]
                sub_index = np.full(self.mask.shape, -1, dtype=np.int64)
                sub_index[sub] = np.arange(int(sub.sum()))
                self._roi_idx = sub_index[roi_mask]
                self._primary = SlidingReHo(window, sub, neighborhood)
            else:
                self._sub = index[roi_mask]
                self._roi_idx = np.arange(self._sub.size)
                self._primary = SlidingALFF(window, tr, band, convention=convention)
        elif kind == "seed_fc":
            seed_mask, target_mask = voxels(seed), voxels(target)
            both = seed_mask | target_mask
            self._sub = index[both]
            sub_index = np.full(self.mask.shape, -1, dtype=np.int64)
            sub_index[both] = np.arange(int(both.sum()))
            self._roi_idx = sub_index[target_mask]
            self._primary = SlidingSeedFC(window, sub_index[seed_mask])
        else:
            raise ValueError(f"Unknown metric kind {kind!r}.")
        self._roi_buf = np.empty(1)

    def partial_fit(self, data: np.ndarray) -> dict:
        """Advance every state with one in-mask vector; return ``{name: value}``.

        Values are NaN until the window is full.
        """
        for state in self.maps.values():
            state.partial_fit(data)
        values = {}
        if self.kind == "psc":
            self._roi_buf[0] = data[self._roi_idx].mean()
            self._primary.partial_fit(self._roi_buf)
            values["psc"] = float(self._primary.psc_[0])
            values["roi_mean"] = float(self._roi_buf[0])
        elif self.kind == "seed_fc":
            self._primary.partial_fit(data[self._sub])
            values["seed_fc"] = float(np.mean(self._primary.z_[self._roi_idx]))
        elif self._primary is None:
            values[self.kind] = float(np.mean(_read(self.maps[self.kind], self.kind)[
                self._roi_idx]))
        else:
            self._primary.partial_fit(data[self._sub])
            values[self.kind] = float(np.mean(_read(self._primary, self.kind)[self._roi_idx]))
        for name, state in self.maps.items():
            if name != self.kind:
                values[f"{name}_brain_mean"] = float(np.mean(_read(state, name)))
        return values

    def current_map(self, name: str) -> np.ndarray:
        """Whole-brain 3D map of a monitored metric (0 outside the mask, NaN in warm-up)."""
        out = np.zeros(self.mask.shape)
        out[self.mask] = _read(self.maps[name], name)
        return out
