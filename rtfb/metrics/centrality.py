"""Voxel-wise degree centrality within a mask (binary and weighted)."""

from __future__ import annotations

import numpy as np

from .._utils.checks import check_finite_array, check_int, check_mask


def _standardize(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows centred and scaled to unit norm; constant rows become 0 (flagged)."""
    centred = series - series.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("vt,vt->v", centred, centred))
    constant = np.ptp(series, axis=1) == 0
    centred /= np.where(constant, 1.0, norm)[:, None]
    centred[constant] = 0.0
    return centred, constant


def degree_centrality(data4d, mask=None, threshold: float = 0.25, weighted: bool = False,
                      block_size: int = 2048) -> np.ndarray:
    """Degree centrality of every in-mask voxel.

    Binary: number of other in-mask voxels whose Pearson correlation with the voxel is
    above ``threshold``; weighted: sum of those correlations (METHODS.md). The
    correlation matrix is built block by block, so memory stays
    O(block_size * n_voxels). Constant voxels have no correlation and degree 0.

    Parameters
    ----------
    data4d : array-like, shape (X, Y, Z, n)
        Series, time on the last axis.
    mask : array-like of bool, shape (X, Y, Z) | None
        Voxels to use; ``None`` uses all.
    threshold : float
        Correlation threshold in (-1, 1).
    weighted : bool
        Sum correlations instead of counting them.
    block_size : int
        Rows of the correlation matrix computed at once.

    Returns
    -------
    numpy.ndarray, shape (X, Y, Z)
        Degree centrality, 0 outside the mask.
    """
    data = check_finite_array(data4d, "data4d", ndim=4)
    mask = check_mask(mask, data.shape[:3])
    if not -1 < float(threshold) < 1:
        raise ValueError(f"threshold must lie in (-1, 1), got {threshold!r}.")
    block_size = check_int(block_size, "block_size", minimum=1)
    if data.shape[-1] < 3:
        raise ValueError(f"data4d must have at least 3 time points, got {data.shape[-1]}.")
    z, _ = _standardize(data[mask])
    n_vox = z.shape[0]
    degree = np.zeros(n_vox)
    for start in range(0, n_vox, block_size):
        stop = min(start + block_size, n_vox)
        r = z[start:stop] @ z.T
        r[np.arange(stop - start), np.arange(start, stop)] = 0.0  # no self-connection
        above = r > threshold
        degree[start:stop] = (r * above).sum(axis=1) if weighted else above.sum(axis=1)
    out = np.zeros(data.shape[:3])
    out[mask] = degree
    return out
