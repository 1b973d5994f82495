"""A one-time affine registration of a reference EPI to MNI (``mni_to_native``).

:func:`register_to_mni` estimates, once per session, the 4x4 world-to-world affine mapping
MNI millimetres to the session's scanner millimetres (``native_mm = mni_to_native @ [x, y,
z, 1]``) by maximising the correlation ratio between the EPI and a template; ROIs defined in
MNI space are then brought to the functional grid with
:func:`rtfb.preprocess.masks.mni_roi_to_native`.
"""

from __future__ import annotations

import functools
import time

import numpy as np
from scipy import ndimage, optimize

from .._utils.checks import (
    _check_option,
    check_finite_array,
    check_int,
    check_positive_number,
)
from .._utils.jit import jit
from ._grid import apply_affine, as_3d, load_img
from .masks import compute_brain_mask
from .smooth import fwhm_to_sigma

__all__ = ["register_to_mni"]


@functools.lru_cache(maxsize=1)
def _default_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    img = load_mni152_template(resolution=2)
    mask = np.asarray(load_mni152_brain_mask(resolution=2).dataobj) > 0
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    data[~mask] = 0  # brain-masked template
    for arr in (data, mask):
        arr.flags.writeable = False
    return data, mask, img.affine.copy()


def _euler(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


# parameter vector: translation (3, mm), rotation (3, rad), log scales (3), shears (3)
_PARAM_SCALE = np.array([10.0] * 3 + [0.17] * 3 + [0.1] * 3 + [0.1] * 3)
_DOF_PARAMS = {6: list(range(6)), 7: list(range(6)) + [6], 9: list(range(9)),
               12: list(range(12))}


def _linear(params: np.ndarray, isotropic: bool) -> np.ndarray:
    scales = np.exp(params[6:9] if not isotropic else np.repeat(params[6], 3))
    shear = np.array([[1, params[9], params[10]], [0, 1, params[11]], [0, 0, 1]])
    return _euler(*params[3:6]) @ shear @ np.diag(scales)


@jit
def _binned_sums(ref, m, points, bins, n_bins):
    """Trilinear samples of ``ref`` at voxel coords ``m @ [point, 1]``: per-bin sums of r, r^2.

    Samples outside the volume are 0 (like ``map_coordinates(mode="constant")``).
    """
    nx, ny, nz = ref.shape
    s1 = np.zeros(n_bins)
    s2 = np.zeros(n_bins)
    for i in range(points.shape[0]):
        px, py, pz = points[i, 0], points[i, 1], points[i, 2]
        x = m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz + m[0, 3]
        y = m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz + m[1, 3]
        z = m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz + m[2, 3]
        r = 0.0
        if x > -1.0 and y > -1.0 and z > -1.0 and x < nx and y < ny and z < nz:
            x0, y0, z0 = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
            fx, fy, fz = x - x0, y - y0, z - z0
            for dx in range(2):
                xi = x0 + dx
                if xi < 0 or xi >= nx:
                    continue
                wx = fx if dx else 1.0 - fx
                for dy in range(2):
                    yi = y0 + dy
                    if yi < 0 or yi >= ny:
                        continue
                    wy = fy if dy else 1.0 - fy
                    for dz in range(2):
                        zi = z0 + dz
                        if zi < 0 or zi >= nz:
                            continue
                        wz = fz if dz else 1.0 - fz
                        r += wx * wy * wz * ref[xi, yi, zi]
        b = bins[i]
        s1[b] += r
        s2[b] += r * r
    return s1, s2


class _CorrelationRatio:
    """Cost of a transform: minus the correlation ratio of the reference given template bins.

    Template points (fixed) carry bin labels of the template intensity; the reference is
    interpolated (trilinear) at their images. ``1 - sum_k n_k Var(ref | bin k) /
    (N Var(ref))`` is invariant to any intensity mapping between the two images, so an
    EPI can be matched to the T1 template.
    """

    def __init__(self, ref: np.ndarray, ref_affine: np.ndarray, points_mni: np.ndarray,
                 bins: np.ndarray, n_bins: int):
        self.ref = np.ascontiguousarray(ref, dtype=np.float64)
        self.world_to_vox = np.linalg.inv(ref_affine)
        self.points = np.ascontiguousarray(points_mni, dtype=np.float64)
        self.bins = bins.astype(np.int64)
        self.n_bins = n_bins
        self.count = np.bincount(self.bins, minlength=n_bins).astype(float)
        self.keep = self.count > 0
        self.n_eval = 0

    def __call__(self, transform: np.ndarray) -> float:
        self.n_eval += 1
        m = np.ascontiguousarray((self.world_to_vox @ transform)[:3])
        s1, s2 = _binned_sums(self.ref, m, self.points, self.bins, self.n_bins)
        n = self.points.shape[0]
        total = s2.sum() - s1.sum() ** 2 / n
        if total <= 1e-12 * max(s2.sum(), 1e-300):  # reference constant over the points
            return 0.0
        within = (s2[self.keep] - s1[self.keep] ** 2 / self.count[self.keep]).sum()
        return -(1.0 - within / total)


def register_to_mni(reference_img, template=None, *, dof: int = 12,
                    reference_mask=None, n_bins: int = 32,
                    fwhm_mm: tuple[float, ...] = (8.0, 5.0),
                    return_info: bool = False):
    """One-time affine registration of a reference EPI to the MNI152 2 mm template.

    Maximises the correlation ratio between the (smoothed) reference and the brain-masked
    template (intensity-mapping invariant, so EPI contrast is fine), with Powell's
    method in two stages: a coarse rigid + isotropic-scale fit at ``fwhm_mm[0]``
    smoothing on a 6 mm grid of template points, then the full ``dof`` fit at
    ``fwhm_mm[1]`` on a 4 mm grid. It is initialised by aligning the centres of mass
    (of the template brain and of the reference's brain mask) with identity rotation and
    scale, so the head must be roughly in the usual orientation (world axes RAS as
    written by the scanner/dcm2niix; rotations well below ~30 degrees). Takes a few
    seconds.

    Parameters
    ----------
    reference_img : str | os.PathLike | nibabel image | rtfb.ingest.Volume
        Reference volume of the session (3D; a 4D image is averaged over time).
    template : str | os.PathLike | nibabel image | None
        Template in MNI space; ``None`` uses nilearn's MNI152 (2009) 2 mm template,
        masked with its brain mask (shipped with nilearn: no download). A given template
        is used as is (zero outside the brain is recommended).
    dof : {6, 7, 9, 12}
        Rigid, + isotropic scale, + 3 scales, + 3 shears.
    reference_mask : array-like of bool | None
        Brain mask of the reference (e.g. from :func:`compute_brain_mask`); voxels outside
        are zeroed before matching (useful when the reference has bright non-brain
        tissue). Also used for the centre of mass; by default the centre of mass of
        :func:`compute_brain_mask` is used.
    n_bins : int
        Number of template intensity bins of the correlation ratio.
    fwhm_mm : tuple of float
        Smoothing (mm) of both images at each of the two stages.
    return_info : bool
        Also return a dict with the final correlation ratio, number of cost evaluations
        and elapsed time.

    Returns
    -------
    mni_to_native : numpy.ndarray, shape (4, 4)
        Affine mapping MNI mm to native (scanner) mm.
    info : dict
        Only if ``return_info``.
    """
    t0 = time.perf_counter()
    _check_option("dof", dof, tuple(_DOF_PARAMS))
    n_bins = check_int(n_bins, "n_bins", minimum=4)
    fwhm_mm = tuple(check_positive_number(f, "fwhm_mm") for f in np.atleast_1d(fwhm_mm))
    ref_img = load_img(reference_img, "reference_img")
    ref = np.asarray(ref_img.get_fdata(), dtype=np.float32)
    if ref.ndim == 4:
        ref = ref.mean(axis=3)
    ref = check_finite_array(ref, "reference_img", ndim=3, dtype=np.float32)
    ref_affine = ref_img.affine.astype(float)
    if template is None:
        tpl, tpl_mask, tpl_affine = _default_template()
    else:
        timg = load_img(template, "template")
        tpl = np.asarray(as_3d(timg, "template"), dtype=np.float32)
        tpl_mask = tpl > 0
        tpl_affine = timg.affine.astype(float)
    if reference_mask is None:
        ref_mask = compute_brain_mask(ref, ref_affine)
    else:
        ref_mask = np.asarray(reference_mask, dtype=bool)
        if ref_mask.shape != ref.shape:
            raise ValueError(f"reference_mask must have the shape of the reference "
                             f"{ref.shape}, got {ref_mask.shape}.")
        ref = np.where(ref_mask, ref, 0).astype(np.float32)
    # initial transform: centres of mass aligned, identity linear part
    c_mni = apply_affine(tpl_affine, np.array(ndimage.center_of_mass(tpl_mask)))
    c_nat = apply_affine(ref_affine, np.array(ndimage.center_of_mass(ref_mask)))

    def transform(params: np.ndarray, isotropic: bool) -> np.ndarray:
        out = np.eye(4)
        lin = _linear(params, isotropic)
        out[:3, :3] = lin
        out[:3, 3] = c_nat + params[:3] - lin @ c_mni
        return out

    params = np.zeros(12)
    dilated = ndimage.binary_dilation(tpl_mask, iterations=4)  # 8 mm of background rim
    # (smoothing, template point stride in voxels, free parameters, isotropic scale)
    stages = [(fwhm_mm[0], 3, _DOF_PARAMS[min(dof, 7)], True),
              (fwhm_mm[-1], 2, _DOF_PARAMS[dof], dof <= 7)]
    cost = None
    n_eval = 0
    for fwhm, stride, free, isotropic in stages:
        ref_s = ndimage.gaussian_filter(ref, fwhm_to_sigma(fwhm, ref_affine))
        tpl_s = ndimage.gaussian_filter(tpl, fwhm_to_sigma(fwhm, tpl_affine))
        sub = np.zeros_like(dilated)
        sub[::stride, ::stride, ::stride] = True
        ijk = np.argwhere(dilated & sub).astype(float)
        values = tpl_s[tuple(ijk.astype(int).T)]
        edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
        bins = np.digitize(values, edges)
        cost = _CorrelationRatio(ref_s, ref_affine, apply_affine(tpl_affine, ijk), bins,
                                 edges.size + 1)
        free = np.array(free)
        start = params.copy()

        def objective(x, free=free, start=start, cost=cost, isotropic=isotropic):
            p = start.copy()
            p[free] = x * _PARAM_SCALE[free]
            return cost(transform(p, isotropic))

        res = optimize.minimize(objective, params[free] / _PARAM_SCALE[free], method="Powell",
                                options={"xtol": 1e-3, "ftol": 1e-6, "maxfev": 4000})
        params[free] = res.x * _PARAM_SCALE[free]
        if isotropic:
            params[7:9] = params[6]
        n_eval += cost.n_eval
    result = transform(params, dof == 7)
    if not return_info:
        return result
    return result, {"correlation_ratio": -cost(result), "n_evaluations": n_eval,
                    "seconds": time.perf_counter() - t0, "params": params}
