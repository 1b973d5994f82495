"""Is a volume fit to be the session's reference? (finite, not constant, a brain, plausible).

The reference volume fixes the realignment target, the brain mask, the ROIs on the grid
and the series geometry (:class:`~rtfb.ingest.series_lock.GeometryLock`). A bad one would
poison the whole session, so it is checked first; a volume that fails is recorded and
reported, and the next good volume becomes the reference.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

#: smallest size of each grid dimension of a reference (voxels)
MIN_DIM = 8
#: largest number of voxels of a reference (104x104x72 multiband has 0.78 M; a
#: 256x256x128 anatomical grid has 8.4 M)
MAX_VOXELS = 2_000_000
#: fewest brain voxels in the reference's brain mask
MIN_BRAIN_VOXELS = 200


def reference_problem(volume, protocol=None, *, compute_mask: bool = True) -> str | None:
    """Why ``volume`` cannot be the reference, or None if it can.

    Parameters
    ----------
    volume : rtfb.ingest.Volume
        Candidate reference.
    protocol : rtfb.config.Protocol | None
        Native-space ROI files of the protocol state a grid: the reference must match it.
    compute_mask : bool
        Also count brain voxels with the automatic EPI mask (when the protocol does not
        give a brain mask).

    Returns
    -------
    str | None
        A one-line reason naming what is wrong, or None.
    """
    data = np.asarray(volume.data)
    shape = tuple(int(s) for s in data.shape)
    if min(shape) < MIN_DIM:
        return f"grid {shape} is too small (each dimension needs >= {MIN_DIM} voxels)"
    if math.prod(shape) > MAX_VOXELS:
        return (f"grid {shape} has {math.prod(shape)} voxels, more than an fMRI volume "
                f"({MAX_VOXELS}): an anatomical or wrong series?")
    n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        return f"{n_bad} voxel(s) are NaN or infinite"
    lo, hi = float(data.min()), float(data.max())
    if hi - lo <= 1e-6 * max(abs(hi), abs(lo), 1.0):
        return f"constant image (every voxel = {lo:g})"
    if protocol is not None:
        problem = _protocol_grid_problem(shape, protocol)
        if problem:
            return problem
    if compute_mask and (protocol is None or protocol.preprocess.brain_mask in (None, "auto")):
        from ..preprocess.masks import compute_brain_mask

        try:
            n_brain = int(np.count_nonzero(compute_brain_mask(data, volume.affine)))
        except Exception as err:  # noqa: BLE001 - any failure means: no usable brain
            return f"no brain mask could be computed ({type(err).__name__}: {err})"
        if n_brain < MIN_BRAIN_VOXELS:
            return (f"only {n_brain} brain voxels in the automatic mask (needs "
                    f">= {MIN_BRAIN_VOXELS})")
    return None


def _protocol_grid_problem(shape, protocol) -> str | None:
    for name, roi in getattr(protocol, "rois", {}).items():
        if getattr(roi, "space", None) != "native" or not getattr(roi, "file", None):
            continue
        path = Path(roi.file)
        if not path.is_file():
            continue
        try:
            roi_shape = tuple(int(s) for s in nib.load(path).shape[:3])
        except Exception:  # noqa: BLE001 - the ROI loader reports unreadable files
            continue
        if roi_shape != shape:
            return (f"grid {shape} differs from the native ROI {name!r} ({path.name}: "
                    f"{roi_shape})")
    return None
