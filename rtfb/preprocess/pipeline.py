"""One object that cleans each volume in real time: realign -> FD -> smooth -> mask -> GLM."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._utils.checks import _check_option, check_finite_array, check_int
from ..ingest.volume import Volume
from .design import DriftModel, NuisanceDesign
from .fd import FramewiseDisplacement
from .masks import compute_brain_mask
from .nuisance import IncrementalGLM
from .realign import Realigner
from .smooth import Smoother


@dataclass(frozen=True)
class PreprocessResult:
    """What the preprocessor returns for one volume.

    ``data`` is a view of the preprocessor's output buffer (in-mask voxels, C order of
    ``mask_``): it is overwritten by the next volume, so copy it to keep it. ``uncleaned``
    is the same volume before nuisance regression (realigned, smoothed, masked), for
    :meth:`Preprocessor.run_residuals` (same caveat).
    """

    index: int
    data: np.ndarray
    uncleaned: np.ndarray
    motion: np.ndarray
    fd: float
    censored: bool
    flags: tuple[str, ...]
    design_row: np.ndarray | None = None


class Preprocessor:
    """Real-time preprocessing of each volume, with all state in preallocated buffers.

    Steps: rigid realignment to the reference volume (6 parameters, warm-started from
    the previous volume), framewise displacement with a censoring flag (volumes are
    flagged, never dropped), optional Gaussian smoothing, masking, and incremental
    nuisance regression (drift + motion parameters). The cleaned in-mask values are the
    GLM residuals plus the reference volume's values, so every voxel keeps its baseline
    intensity (needed for percent signal change) while drift and motion-related variance
    are removed.

    Parameters
    ----------
    realign : bool
        Realign volumes to the reference.
    interpolation : {"linear", "cubic"}
        Resampling of realigned volumes.
    smoothing_fwhm : float
        Gaussian smoothing in mm (0: none).
    drift : {"legendre", "polynomial", "cosine", "none"}
        Drift regressors.
    drift_order : int
        Order of the polynomial drift.
    motion_regressors : bool
        Regress out the 6 motion parameters.
    glm : {"cumulative", "sliding", "none"}
        Nuisance regression over the run so far, within the last ``window`` volumes, or none.
    window : int | None
        Window of the sliding GLM.
    n_expected : int | None
        Expected number of volumes (scales the drift regressors); default 1000.
    tr : float | None
        Repetition time (needed for cosine drift).
    fd_threshold : float
        FD (mm) above which a volume is flagged ``"motion"``.
    mask : array-like of bool | None
        Brain mask on the reference grid; default: computed from the reference volume.

    Attributes
    ----------
    mask_ : ndarray of bool, shape (X, Y, Z)
        Brain mask; output vectors hold its voxels in C order.
    reference_ : Volume
        The reference volume.
    n_seen_ : int
        Volumes processed.
    """

    def __init__(self, realign: bool = True, interpolation: str = "linear",
                 smoothing_fwhm: float = 0.0, drift: str = "legendre", drift_order: int = 2,
                 motion_regressors: bool = True, glm: str = "cumulative",
                 window: int | None = None, n_expected: int | None = None,
                 tr: float | None = None, fd_threshold: float = 0.5, mask=None):
        self.realign = realign
        self.interpolation = interpolation
        self.smoothing_fwhm = smoothing_fwhm
        self.drift = drift
        self.drift_order = drift_order
        self.motion_regressors = motion_regressors
        self.glm = glm
        self.window = window
        self.n_expected = n_expected
        self.tr = tr
        self.fd_threshold = fd_threshold
        self.mask = mask

    def fit(self, reference: Volume) -> Preprocessor:
        """Set up every step from the reference volume.

        Parameters
        ----------
        reference : Volume
            Reference volume (e.g. the run's first volume).

        Returns
        -------
        self
        """
        if not isinstance(reference, Volume):
            raise TypeError(f"reference must be a Volume, got {type(reference).__name__}.")
        _check_option("glm", self.glm, ("cumulative", "sliding", "none"))
        _check_option("drift", self.drift, ("legendre", "polynomial", "cosine", "none"))
        ref = check_finite_array(reference.data, "reference.data", ndim=3)
        self.reference_ = reference
        self.shape_ = ref.shape
        self.affine_ = np.asarray(reference.affine, dtype=np.float64)
        if self.mask is None:
            self.mask_ = compute_brain_mask(ref, self.affine_)
        else:
            mask = np.asarray(self.mask, dtype=bool)
            if mask.shape != ref.shape:
                raise ValueError(f"mask must have the reference's shape {ref.shape}, "
                                 f"got {mask.shape}.")
            self.mask_ = mask
        self._mask_index = np.flatnonzero(self.mask_.ravel())
        n_vox = self._mask_index.size
        if n_vox == 0:
            raise ValueError("The brain mask is empty: no voxel to process.")
        self._realigner = Realigner(interpolation=self.interpolation).fit(ref, self.affine_) \
            if self.realign else None
        self._fd = FramewiseDisplacement(threshold=self.fd_threshold)
        self._smoother = Smoother(self.smoothing_fwhm, self.affine_, dtype=np.float64) \
            if self.smoothing_fwhm else None
        self._design = None
        self._glm = None
        if self.glm != "none":
            n_expected = check_int(self.n_expected or 1000, "n_expected", minimum=1)
            drift = None if self.drift == "none" else DriftModel(
                n_expected, kind=self.drift, order=self.drift_order,
                tr=self.tr if self.drift == "cosine" else None)
            self._design = NuisanceDesign(drift=drift, motion=bool(self.motion_regressors))
            window = None
            if self.glm == "sliding":
                window = check_int(self.window, "window", minimum=2)
            self._glm = IncrementalGLM(mode=self.glm, window=window)
        self._realigned = np.empty(self.shape_)
        self._smoothed = np.empty(self.shape_)
        self._y = np.empty(n_vox)
        self._out = np.empty(n_vox)
        self._offset = ref.ravel()[self._mask_index].astype(np.float64)
        if self._smoother is not None:
            self._offset = self._smoother.transform(ref.astype(np.float64)).ravel()[
                self._mask_index].copy()
        self.n_seen_ = 0
        return self

    def run_residuals(self, uncleaned) -> np.ndarray:
        """Clean a whole run with the nuisance fit of all its volumes (offline use).

        In real time each volume is cleaned with the estimate available when it arrives,
        which early in a run (few volumes, many regressors) removes most of the signal.
        Offline, every volume is cleaned with the final estimate: the result equals
        ``Y - X @ lstsq(X, Y)`` on the run's design, plus the reference values.

        Parameters
        ----------
        uncleaned : array-like, shape (n_volumes, n_voxels)
            ``PreprocessResult.uncleaned`` of every volume seen, in order.

        Returns
        -------
        numpy.ndarray, shape (n_volumes, n_voxels)
        """
        uncleaned = check_finite_array(uncleaned, "uncleaned", ndim=2)
        if self._glm is None:
            return uncleaned.copy()
        return self._glm.residuals(uncleaned) + self._offset

    def clean_rows(self, uncleaned, design_rows, signals=None) -> np.ndarray:
        """Clean earlier volumes with the *current* nuisance estimate (one consistent model).

        Parameters
        ----------
        uncleaned : array-like, shape (n, n_selected)
            ``PreprocessResult.uncleaned`` of ``n`` volumes, restricted to ``signals``.
        design_rows : array-like, shape (n, n_regressors) | None
            Their ``PreprocessResult.design_row`` (ignored without a GLM).
        signals : array-like of int | None
            In-mask indices of the selected voxels (``None``: all).

        Returns
        -------
        numpy.ndarray, shape (n, n_selected)
            Residuals of the current fit plus the reference values (as ``data``); without
            a GLM, a copy of ``uncleaned``.
        """
        uncleaned = np.asarray(uncleaned, dtype=np.float64)
        if self._glm is None:
            return uncleaned.copy()
        offset = self._offset if signals is None else self._offset[np.asarray(signals)]
        return self._glm.clean(uncleaned, design_rows, signals) + offset

    def _check(self, volume: Volume) -> np.ndarray:
        if not hasattr(self, "reference_"):
            raise RuntimeError("Preprocessor is not fitted: call fit(reference) first.")
        if not isinstance(volume, Volume):
            raise TypeError(f"volume must be a Volume, got {type(volume).__name__}.")
        if volume.shape != self.shape_:
            raise ValueError(f"Volume {volume.index} ({volume.source!r}) has shape "
                             f"{volume.shape}; the reference has {self.shape_}.")
        if not np.allclose(volume.affine, self.affine_, atol=1e-3):
            raise ValueError(f"Volume {volume.index} ({volume.source!r}) has another affine "
                             "than the reference (different slice prescription?).")
        data = volume.data
        if not np.isfinite(data).all():
            raise ValueError(f"Volume {volume.index} ({volume.source!r}) contains NaN or "
                             "infinite values.")
        return data

    def transform(self, volume: Volume) -> PreprocessResult:
        """Clean one volume.

        Parameters
        ----------
        volume : Volume
            A volume on the reference's grid.

        Returns
        -------
        PreprocessResult

        Raises
        ------
        ValueError
            If the volume does not match the reference (shape, affine), contains NaN or
            cannot be realigned; the caller records it and treats the volume as missing.
        """
        data = self._check(volume)
        flags = []
        if self._realigner is not None:
            params = self._realigner.estimate(data)
            self._realigner.resample(data, out=self._realigned)
            if not self._realigner.converged_:
                flags.append("realign_not_converged")
        else:
            params = np.zeros(6)
            self._realigned[...] = data
        self._fd.partial_fit(params)
        censored = bool(self._fd.censored_)
        if censored:
            flags.append("motion")
        current = self._realigned
        if self._smoother is not None:
            current = self._smoother.transform(current, out=self._smoothed)
        np.take(current.ravel(), self._mask_index, out=self._y)
        row = None
        if self._glm is not None:
            row = self._design.row(volume.index, motion=params)
            self._glm.partial_fit(self._y, row)
            np.add(self._glm.cleaned_, self._offset, out=self._out)
            if self._glm.rank_deficient_:
                flags.append("glm_rank_deficient")
        else:
            self._out[:] = self._y
        self.n_seen_ += 1
        return PreprocessResult(index=volume.index, data=self._out, uncleaned=self._y,
                                motion=params.copy(),
                                fd=float(self._fd.fd_), censored=censored, flags=tuple(flags),
                                design_row=row)
