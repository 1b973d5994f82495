"""Turns each preprocessed volume into the protocol's metric values (and whole-brain maps).

The value fed back is the *batch* metric applied to the window's data cleaned by one
consistent nuisance model: every sample of the window is cleaned with the current
(newest) nuisance estimate, not with the estimate that existed when it arrived. The engine
keeps the window of *uncleaned* samples (realigned, smoothed, masked) of the voxels it
needs, and their design rows, in ring buffers; each TR it cleans the whole window with the
preprocessor's current fit (:meth:`rtfb.preprocess.pipeline.Preprocessor.clean_rows`,
O(window x regressors x voxels)) and applies the batch metric of :mod:`rtfb.metrics`
(ALFF/fALFF, seed FC, ReHo, PSC) to it. Cleaning each sample once on arrival would mix
models: early in a run the fit of a few volumes removes most of a sample's variance, so
the first windows' ALFF was biased low and rose for minutes with a constant signal.

Only the needed voxels are kept for the fed-back value (ROI voxels; ROI plus its
neighbours for ReHo; seed and target for FC). Whole-brain maps keep the whole in-mask
window; the maps of a window (:func:`window_map`) are computed off the feedback path by
:class:`rtfb.session.maps.MapWriter`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..metrics import SlidingReHo, alff, falff, reho, seed_fc

MAP_KINDS = ("alff", "falff", "reho")


class _Window:
    """Ring buffer of the last ``n`` samples (rows) of ``width`` values, time order on read."""

    def __init__(self, n: int):
        self.n = n
        self.n_seen = 0
        self.buf = None

    def push(self, row) -> None:
        if self.buf is None:
            row = np.asarray(row, dtype=np.float64)
            self.buf = np.zeros((self.n, row.size))
        self.buf[self.n_seen % self.n] = row
        self.n_seen += 1

    def repeat(self) -> None:
        """Push the newest sample again (a missing volume)."""
        self.push(self.buf[(self.n_seen - 1) % self.n].copy())

    @property
    def full(self) -> bool:
        return self.n_seen >= self.n

    def ordered(self, columns=None) -> np.ndarray:
        """The window in time order (a new array; only ``columns`` when given)."""
        start = self.n_seen % self.n
        order = np.r_[start:self.n, 0:start]
        return self.buf[order] if columns is None else self.buf[np.ix_(order, columns)]


class MetricEngine:
    """Sliding-window metrics of one session, on windows cleaned by one consistent model.

    Parameters
    ----------
    kind : {"psc", "alff", "falff", "reho", "seed_fc", "roi_fc"}
        Primary metric fed back (``roi_fc``: Fisher z between the seed ROI's and the target
        ROI's mean series).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; every update takes an in-mask vector (C order).
    rois : dict of str -> ndarray of bool, shape (X, Y, Z)
        ROIs on the same grid.
    roi, seed, target : str | None
        ROI names used by the metric.
    window : int
        Sliding window in volumes (PSC: the number of volumes before the current one that
        form its moving baseline).
    tr : float
        Repetition time (s).
    band : tuple of float
        ALFF band (Hz).
    neighborhood : int
        ReHo neighbourhood.
    convention : {"rtfb", "dpabi"}
        ALFF / fALFF definition (exact incrementally in both).
    maps : sequence of str
        Whole-brain maps to provide (``"alff"``, ``"falff"``, ``"reho"``).
    subtract_roi : str | None
        ROI whose value of the metric is subtracted (ROI difference feedback); the values
        of both ROIs are returned too, as ``<kind>_<roi>``.
    cleaner : object with ``clean_rows(uncleaned, design_rows, signals)`` | None
        The session's :class:`~rtfb.preprocess.pipeline.Preprocessor`; ``None``: the
        vectors given to :meth:`partial_fit` are used as they are (already clean).
    """

    def __init__(self, kind, mask, rois, *, roi=None, seed=None, target=None, window=64,
                 tr=2.0, band=(0.01, 0.08), neighborhood=27, maps=(), cleaner=None,
                 subtract_roi=None, convention="rtfb"):
        self.kind = kind
        self.mask = np.asarray(mask, dtype=bool)
        self.window = int(window)
        self.tr = float(tr)
        self.band = tuple(band)
        self.convention = convention
        self.neighborhood = neighborhood
        self.cleaner = cleaner
        self.maps = tuple(maps)
        for m in self.maps:
            if m not in MAP_KINDS:
                raise ValueError(f"No map for metric kind {m!r}; expected one of {MAP_KINDS}.")
        index = np.full(self.mask.shape, -1, dtype=np.int64)
        index[self.mask] = np.arange(int(self.mask.sum()))

        def voxels(name):
            if name not in rois:
                raise ValueError(f"ROI {name!r} is not defined (known: {sorted(rois)}).")
            sel = rois[name] & self.mask
            if not sel.any():
                raise ValueError(f"ROI {name!r} has no voxel inside the brain mask.")
            return sel

        self.roi, self.subtract_roi = roi, subtract_roi
        if kind in ("psc", "alff", "falff", "reho"):
            self._parts = {"roi": voxels(roi)}
            if subtract_roi is not None:
                self._parts["subtract"] = voxels(subtract_roi)
            needed = np.logical_or.reduce(list(self._parts.values()))
            if kind == "reho":
                needed = ndimage.binary_dilation(needed, np.ones((3, 3, 3), bool)) & self.mask
        elif kind in ("seed_fc", "roi_fc"):
            seed_mask, target_mask = voxels(seed), voxels(target)
            needed = seed_mask | target_mask
            self._parts = {"seed": seed_mask, "target": target_mask}
        else:
            raise ValueError(f"Unknown metric kind {kind!r}.")
        own = needed
        if self.maps:  # whole-brain window: the primary reads its voxels from it
            needed = self.mask.copy()
        self._signals = index[needed]  # in-mask indices of the kept voxels
        self._own = np.flatnonzero(own[needed])  # kept columns the primary needs
        local = np.full(self.mask.shape, -1, dtype=np.int64)
        local[own] = np.arange(int(own.sum()))
        self._local = {name: local[m] for name, m in self._parts.items()}
        if kind == "reho":
            box = tuple(slice(int(a), int(b) + 1) for a, b in
                        zip(np.argwhere(own).min(0), np.argwhere(own).max(0), strict=True))
            self._box = box
            self._box_mask = own[box]
            self._box_local = local[box][self._box_mask]
            self._box_parts = {name: m[box][self._box_mask] for name, m in self._parts.items()}
        n = self.window + 1 if kind == "psc" else self.window
        self._data = _Window(n)
        self._rows = _Window(n)
        self._cache = self._cache_all = None

    # ----------------------------------------------------------------------- updates
    def partial_fit(self, data=None, design_row=None) -> dict:
        """Add one volume and return ``{name: value}`` (NaN until the window is full).

        Parameters
        ----------
        data : array-like, shape (n_mask_voxels,) | None
            The volume's in-mask vector *before* nuisance cleaning
            (``PreprocessResult.uncleaned``), or ``None`` for a missing volume: the
            previous volume (data and design row) is repeated, which keeps the time axis
            regular.
        design_row : array-like | None
            Its nuisance design row (``PreprocessResult.design_row``).
        """
        if data is None:
            if self._data.buf is None:
                return {}
            self._data.repeat()
            self._rows.repeat()
        else:
            self._data.push(np.asarray(data)[self._signals])
            self._rows.push(np.zeros(1) if design_row is None else design_row)
        self._cache = self._cache_all = None
        if not self._data.full:
            values = {self.kind: float("nan")}
            if self.kind == "psc":
                values["roi_mean"] = float("nan")
            return values
        return self._primary(self._clean())

    def _clean(self, everything: bool = False) -> np.ndarray:
        """The window (time x primary's voxels, or all kept) cleaned by the current fit."""
        cached = self._cache_all if everything else self._cache
        if cached is not None:
            return cached
        signals, columns = self._signals, None
        if not everything and self._own.size != signals.size:
            signals, columns = signals[self._own], self._own
        y = self._data.ordered(columns)
        if self.cleaner is None:
            out = y.copy()
        else:
            out = self.cleaner.clean_rows(y, self._rows.ordered(), signals)
        if everything:
            self._cache_all = out
        else:
            self._cache = out
        return out

    def _primary(self, clean: np.ndarray) -> dict:
        kind = self.kind
        if kind in ("seed_fc", "roi_fc"):
            seed = clean[:, self._local["seed"]].mean(axis=1)
            target = clean[:, self._local["target"]]
            if kind == "roi_fc":
                target = target.mean(axis=1)
            return {kind: float(np.mean(seed_fc(seed, target.T)))}
        values = self._roi_values(clean)
        if self.subtract_roi is None:
            return values
        sub = self._roi_values(clean, "subtract")[kind]
        return {kind: values[kind] - sub, f"{kind}_{self.roi}": values[kind],
                f"{kind}_{self.subtract_roi}": sub}

    def _roi_values(self, clean: np.ndarray, part: str = "roi") -> dict:
        kind = self.kind
        if kind == "psc":
            x = clean[:, self._local[part]].mean(axis=1)
            base = x[:-1].mean()
            value = float("nan") if base == 0 else float(100.0 * (x[-1] - base) / base)
            return {"psc": value, "roi_mean": float(x[-1])}
        if kind in ("alff", "falff"):
            fn = alff if kind == "alff" else falff
            return {kind: float(np.mean(fn(clean[:, self._local[part]].T, self.tr,
                                           self.band, convention=self.convention)))}
        data = np.zeros(self._box_mask.shape + (clean.shape[0],))
        data[self._box_mask] = clean[:, self._box_local].T
        w = reho(data, self._box_mask, self.neighborhood)[self._box_mask]
        return {"reho": float(np.mean(w[self._box_parts[part]]))}

    # -------------------------------------------------------------------------- maps
    def map_window(self) -> np.ndarray | None:
        """The whole in-mask window cleaned by the current fit (None during warm-up).

        Shape (window, n_mask_voxels); what :func:`window_map` takes. Cost
        O(window x regressors x voxels): the processing thread pays it, the maps
        themselves are computed elsewhere (:class:`rtfb.session.maps.MapWriter`).
        """
        if not self.maps:
            raise ValueError("no whole-brain maps are computed (maps=()).")
        if not self._data.full:
            return None
        return self._clean(everything=True)


def window_map(clean, mask, name: str, *, tr: float, band, neighborhood=27,
               convention: str = "rtfb") -> np.ndarray:
    """Whole-brain 3D map of one window (0 outside the mask).

    Parameters
    ----------
    clean : ndarray, shape (window, n_mask_voxels)
        The window (:meth:`MetricEngine.map_window`), columns in the mask's C order.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask.
    name : {"alff", "falff", "reho"}
        Map kind.
    tr, band, neighborhood, convention
        As for :class:`MetricEngine`.

    Returns
    -------
    numpy.ndarray, shape (X, Y, Z)
        :func:`rtfb.metrics.alff` / :func:`~rtfb.metrics.falff` / :func:`~rtfb.metrics.reho`
        of the window.
    """
    if name not in MAP_KINDS:
        raise ValueError(f"No map for metric kind {name!r}; expected one of {MAP_KINDS}.")
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape)
    if name == "reho":  # = reho() on the window; the numba rank updates are faster
        state = SlidingReHo(clean.shape[0], mask, neighborhood)
        for row in clean:
            state.partial_fit(row)
        out[mask] = state.reho_
        return out
    fn = alff if name == "alff" else falff
    out[mask] = fn(np.asarray(clean).T, tr, band, convention=convention)
    return out
