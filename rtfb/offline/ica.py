"""Group spatial ICA (GIFT/MELODIC style) with dual-regression back-reconstruction.

Each subject's ``(n_time, n_voxels)`` matrix is centred in time (every voxel's mean removed)
and reduced in the temporal dimension by PCA to ``n_subject_components`` rows (the leading
right singular vectors scaled by their singular values). The reduced subjects are
concatenated along that dimension, reduced again by a group PCA to ``n_components`` rows, and
a spatial FastICA (scikit-learn; voxels are the samples) unmixes them into ``n_components``
maximally independent spatial maps, ``components_``. With ``n_components="auto"`` the number
of components is Minka's (2000) maximum-likelihood PCA dimension of the concatenated reduced
data (scikit-learn's ``PCA(n_components="mle")``), as MELODIC estimates it by a Laplace
approximation of the same model: too many components split a network into fragments, too
few merge networks. Each map is z-scored over voxels and its
sign chosen so that its heaviest tail is positive.

Subject-specific maps and time courses are obtained by dual regression (Beckmann et al. 2009):
the group maps are regressed on every volume of the subject (stage 1: time courses), the
variance-normalised time courses are regressed on every voxel's series (stage 2: maps).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import FastICA
from sklearn.utils.validation import check_is_fitted

from .._utils.checks import _check_option, _validate_type, check_finite_array, check_int

__all__ = ["GroupICA", "dual_regression"]


def _check_subjects(subjects, name: str = "subjects") -> list[np.ndarray]:
    if isinstance(subjects, np.ndarray) and subjects.ndim == 2:
        subjects = [subjects]
    _validate_type(subjects, (list, tuple, np.ndarray), name)
    if len(subjects) == 0:
        raise ValueError(f"{name} must hold at least one subject matrix.")
    out = [check_finite_array(x, f"{name}[{k}]", ndim=2) for k, x in enumerate(subjects)]
    n_voxels = {x.shape[1] for x in out}
    if len(n_voxels) != 1:
        raise ValueError(f"All subject matrices must have the same number of voxels "
                         f"(columns), got {sorted(n_voxels)}.")
    return out


def _pca_rows(x: np.ndarray, n: int) -> np.ndarray:
    """Leading ``n`` principal components of the rows of ``x`` as ``S_k V_k^T``, (n, cols)."""
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    return s[:n, None] * vt[:n]


def _mle_dimension(stacked: np.ndarray) -> int:
    """Minka's MLE of the PCA dimension of the rows of ``stacked`` (voxels are samples)."""
    from sklearn.decomposition import PCA

    n_rows, n_voxels = stacked.shape
    if n_voxels <= n_rows:
        raise ValueError(f'n_components="auto" needs more voxels ({n_voxels}) than reduced '
                         f"rows ({n_rows} = subjects x subject components); give "
                         "n_components or a smaller n_subject_components.")
    pca = PCA(n_components="mle", svd_solver="full").fit(stacked.T)
    return int(min(max(pca.n_components_, 2), n_rows - 1))


def dual_regression(subject: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dual regression of one subject on group spatial maps.

    Parameters
    ----------
    subject : numpy.ndarray, shape (n_time, n_voxels)
        Subject data.
    maps : numpy.ndarray, shape (n_components, n_voxels)
        Group spatial maps.

    Returns
    -------
    timecourses : numpy.ndarray, shape (n_time, n_components)
        Stage-1 time courses (least squares of each centred volume on the maps).
    subject_maps : numpy.ndarray, shape (n_components, n_voxels)
        Stage-2 maps: least squares of each centred voxel series on the time courses
        normalised to unit variance (so maps are in the data's units per SD of the time
        course).
    """
    x = subject - subject.mean(axis=0, keepdims=True)
    # Stage 1: x (T, V) ~ tc (T, K) @ maps (K, V), with the maps centred over voxels.
    m = maps - maps.mean(axis=1, keepdims=True)
    x_spatial = x - x.mean(axis=1, keepdims=True)
    tc = np.linalg.lstsq(m.T, x_spatial.T, rcond=None)[0].T
    tc = tc - tc.mean(axis=0, keepdims=True)
    sd = tc.std(axis=0)
    sd[sd == 0] = 1.0
    tc_n = tc / sd
    # Stage 2: x (T, V) ~ tc_n (T, K) @ subject_maps (K, V).
    subject_maps = np.linalg.lstsq(tc_n, x, rcond=None)[0]
    return tc, subject_maps


class GroupICA(TransformerMixin, BaseEstimator):
    """Group spatial ICA by temporal concatenation, with dual-regression subject maps.

    Parameters
    ----------
    n_components : int | "auto"
        Number of independent spatial components (and of group PCA components), or
        ``"auto"``: Minka's MLE of the dimension (at least 2), see the module docstring.
    n_subject_components : int | None
        Number of temporal PCA components kept per subject; ``None`` means
        ``2 * n_components`` (``"auto"``: 20), capped at each subject's number of volumes.
    random_state : int | numpy.random.RandomState | None
        Seed of FastICA.
    max_iter : int
        Maximal number of FastICA iterations.
    tol : float
        FastICA tolerance.

    Attributes
    ----------
    components_ : numpy.ndarray, shape (n_components, n_voxels)
        Group spatial maps, each z-scored over voxels with its heaviest tail positive.
    mixing_ : numpy.ndarray, shape (n_components, n_components)
        Mixing matrix from FastICA (group PCA space).
    explained_variance_ratio_ : numpy.ndarray, shape (n_components,)
        Fraction of the concatenated reduced data's variance carried by each group PCA
        component.
    subject_maps_ : numpy.ndarray, shape (n_subjects, n_components, n_voxels)
        Dual-regression maps of the training subjects.
    subject_timecourses_ : list of numpy.ndarray, each (n_time_s, n_components)
        Dual-regression (stage 1) time courses of the training subjects.
    n_components_ : int
        Number of components estimated (equal to ``n_components`` unless ``"auto"``).
    n_features_in_ : int
        Number of voxels.
    """

    def __init__(
        self,
        n_components: int | str = 10,
        n_subject_components: int | None = None,
        random_state=None,
        max_iter: int = 1000,
        tol: float = 1e-4,
    ) -> None:
        self.n_components = n_components
        self.n_subject_components = n_subject_components
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: Sequence[np.ndarray], y=None) -> GroupICA:
        """Estimate the group spatial maps from a list of subjects.

        Parameters
        ----------
        X : list of array-like, each shape (n_time_s, n_voxels)
            One matrix per subject (time by voxel); the numbers of volumes may differ.
        y : None
            Ignored.

        Returns
        -------
        GroupICA
            The fitted estimator.
        """
        subjects = _check_subjects(X, "X")
        auto = isinstance(self.n_components, str)
        if auto:
            _check_option("n_components", self.n_components, ("auto",))
            n_components = 2
        else:
            n_components = check_int(self.n_components, "n_components", minimum=1)
        n_sub = self.n_subject_components
        if n_sub is None:
            n_sub = 20 if auto else 2 * n_components
        else:
            n_sub = check_int(n_sub, "n_subject_components", minimum=n_components)
        n_voxels = subjects[0].shape[1]
        if n_components > n_voxels:
            raise ValueError(f"n_components ({n_components}) must be <= the number of "
                             f"voxels ({n_voxels}).")
        reduced = []
        for k, x in enumerate(subjects):
            if x.shape[0] < n_components:
                raise ValueError(f"X[{k}] has {x.shape[0]} volumes, fewer than n_components "
                                 f"({n_components}).")
            xc = x - x.mean(axis=0, keepdims=True)
            reduced.append(_pca_rows(xc, min(n_sub, x.shape[0])))
        stacked = np.vstack(reduced)
        if stacked.shape[0] < n_components:
            raise ValueError(f"The reduced subjects have {stacked.shape[0]} rows in total, "
                             f"fewer than n_components ({n_components}).")
        stacked = stacked - stacked.mean(axis=1, keepdims=True)
        if auto:
            n_components = _mle_dimension(stacked)
        _, s, vt = np.linalg.svd(stacked, full_matrices=False)
        group = vt[:n_components]  # (K, V), orthonormal rows
        self.n_components_ = n_components
        self.explained_variance_ratio_ = (s[:n_components] ** 2) / np.sum(s**2)
        ica = FastICA(n_components=n_components, whiten="unit-variance",
                      random_state=self.random_state, max_iter=self.max_iter, tol=self.tol)
        sources = ica.fit_transform(group.T).T  # (K, V): voxels are the samples
        sources = sources - sources.mean(axis=1, keepdims=True)
        sources /= sources.std(axis=1, keepdims=True)
        skew = np.mean(sources**3, axis=1)
        signs = np.where(skew < 0, -1.0, 1.0)
        self.components_ = sources * signs[:, None]
        self.mixing_ = ica.mixing_ * signs[None, :]
        self.n_features_in_ = n_voxels
        self.subject_timecourses_, maps = self._dual_regression(subjects)
        self.subject_maps_ = maps
        return self

    def _dual_regression(self, subjects) -> tuple[list[np.ndarray], np.ndarray]:
        out = [dual_regression(x, self.components_) for x in subjects]
        return [tc for tc, _ in out], np.stack([m for _, m in out])

    def transform(self, X: Sequence[np.ndarray]) -> np.ndarray:
        """Subject-specific spatial maps by dual regression on the group maps.

        Parameters
        ----------
        X : list of array-like, each shape (n_time_s, n_voxels)
            Subjects (they need not be the training subjects).

        Returns
        -------
        numpy.ndarray, shape (n_subjects, n_components, n_voxels)
            Stage-2 dual-regression maps.
        """
        check_is_fitted(self, "components_")
        subjects = _check_subjects(X, "X")
        if subjects[0].shape[1] != self.n_features_in_:
            raise ValueError(f"X has {subjects[0].shape[1]} voxels, the model was fitted on "
                             f"{self.n_features_in_}.")
        return self._dual_regression(subjects)[1]

    def timecourses(self, X: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Stage-1 dual-regression time courses, one ``(n_time_s, n_components)`` per subject."""
        check_is_fitted(self, "components_")
        return self._dual_regression(_check_subjects(X, "X"))[0]
