"""Rigid realignment of each volume to a reference (6 parameters), for real time.

The estimate is a least-squares fit of the intensity of the (smoothed) volume to the
(smoothed) reference, as SPM realign does, solved by inverse-compositional Gauss-Newton
(Baker & Matthews 2004): the Jacobian is built once from the reference's gradient at a
subsampled set of brain voxels, so each iteration costs one trilinear sampling of the new
volume at those points and a 8x8 solve (6 rigid parameters plus a global intensity gain and
offset that absorb signal drift). Each volume's estimate starts from the previous one.

Conventions (shared with the simulator): world coordinates are the volume affine's RAS+ mm.
A volume is aligned by the rigid transform ``M = [[R, t], [0, 1]]`` such that the volume at
world point ``M p`` shows what the reference shows at ``p``; ``R = Rx(rx) Ry(ry) Rz(rz)``.
Parameters are reported as ``(tx, ty, tz)`` in mm and ``(rx, ry, rz)`` in degrees.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .._utils.checks import _check_option, check_finite_array, check_int, check_positive_number
from .._utils.jit import pjit, prange

PARAM_NAMES = ("tx", "ty", "tz", "rx", "ry", "rz")
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_N_COLS = 8  # 6 rigid + gain + offset


def rigid_matrix(params) -> np.ndarray:
    """4x4 rigid transform of ``(tx, ty, tz [mm], rx, ry, rz [deg])``, ``R = Rx Ry Rz``."""
    tx, ty, tz, rx, ry, rz = (float(p) for p in params)
    cx, cy, cz = np.cos(np.deg2rad([rx, ry, rz]))
    sx, sy, sz = np.sin(np.deg2rad([rx, ry, rz]))
    rot_x = np.array([[1.0, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1.0, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1.0]])
    out = np.eye(4)
    out[:3, :3] = rot_x @ rot_y @ rot_z
    out[:3, 3] = (tx, ty, tz)
    return out


def rigid_params(matrix) -> np.ndarray:
    """Inverse of :func:`rigid_matrix`: ``(tx, ty, tz, rx, ry, rz)`` in mm and degrees."""
    m = np.asarray(matrix, dtype=np.float64)
    ry = np.arcsin(np.clip(m[0, 2], -1.0, 1.0))
    rx = np.arctan2(-m[1, 2], m[2, 2])
    rz = np.arctan2(-m[0, 1], m[0, 0])
    return np.concatenate([m[:3, 3], np.rad2deg([rx, ry, rz])])


@pjit
def _accumulate(vol, b, points, ref_vals, sd, n_chunks, partial, huber):
    """Sample ``vol`` at voxel coordinates ``b @ point`` and accumulate the normal equations.

    ``partial[c]`` receives, for chunk ``c``, the 8x8 matrix ``A^T A`` (flattened), ``A^T e``,
    the number of valid points and the sum of squared residuals, where the rows of ``A`` are
    ``[sd, g, 1]`` and ``e = f(M p) - g(p)``.
    """
    nx, ny, nz = vol.shape
    n_pts = points.shape[0]
    chunk = (n_pts + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        acc = partial[c]
        acc[:] = 0.0
        row = np.empty(8)
        for i in range(c * chunk, min(n_pts, (c + 1) * chunk)):
            px, py, pz = points[i, 0], points[i, 1], points[i, 2]
            x = b[0, 0] * px + b[0, 1] * py + b[0, 2] * pz + b[0, 3]
            y = b[1, 0] * px + b[1, 1] * py + b[1, 2] * pz + b[1, 3]
            z = b[2, 0] * px + b[2, 1] * py + b[2, 2] * pz + b[2, 3]
            if x < 0 or y < 0 or z < 0 or x > nx - 1 or y > ny - 1 or z > nz - 1:
                continue
            x0 = min(int(x), nx - 2)
            y0 = min(int(y), ny - 2)
            z0 = min(int(z), nz - 2)
            fx, fy, fz = x - x0, y - y0, z - z0
            c00 = vol[x0, y0, z0] * (1 - fx) + vol[x0 + 1, y0, z0] * fx
            c01 = vol[x0, y0, z0 + 1] * (1 - fx) + vol[x0 + 1, y0, z0 + 1] * fx
            c10 = vol[x0, y0 + 1, z0] * (1 - fx) + vol[x0 + 1, y0 + 1, z0] * fx
            c11 = vol[x0, y0 + 1, z0 + 1] * (1 - fx) + vol[x0 + 1, y0 + 1, z0 + 1] * fx
            val = (c00 * (1 - fy) + c10 * fy) * (1 - fz) + (c01 * (1 - fy) + c11 * fy) * fz
            g = ref_vals[i]
            e = val - g
            # Huber weight: points far from the fit (local signal change, not motion)
            # count less, so they cannot steer the motion estimate
            w = 1.0
            if huber > 0 and abs(e) > huber:
                w = huber / abs(e)
            for k in range(6):
                row[k] = sd[i, k]
            row[6] = g
            row[7] = 1.0
            for k in range(8):
                rk = row[k] * w
                acc[64 + k] += rk * e
                for m in range(k, 8):
                    acc[k * 8 + m] += rk * row[m]
            acc[72] += 1.0
            acc[73] += e * e


@pjit
def _resample_linear(vol, c, out):
    """``out[i, j, k] = vol(c @ (i, j, k))`` by trilinear interpolation, edges clamped."""
    nx, ny, nz = vol.shape
    ox, oy, oz = out.shape
    for i in prange(ox):
        for j in range(oy):
            bx = c[0, 0] * i + c[0, 1] * j + c[0, 3]
            by = c[1, 0] * i + c[1, 1] * j + c[1, 3]
            bz = c[2, 0] * i + c[2, 1] * j + c[2, 3]
            for k in range(oz):
                x = min(max(bx + c[0, 2] * k, 0.0), nx - 1.0)
                y = min(max(by + c[1, 2] * k, 0.0), ny - 1.0)
                z = min(max(bz + c[2, 2] * k, 0.0), nz - 1.0)
                x0 = min(int(x), nx - 2)
                y0 = min(int(y), ny - 2)
                z0 = min(int(z), nz - 2)
                fx, fy, fz = x - x0, y - y0, z - z0
                c00 = vol[x0, y0, z0] * (1 - fx) + vol[x0 + 1, y0, z0] * fx
                c01 = vol[x0, y0, z0 + 1] * (1 - fx) + vol[x0 + 1, y0, z0 + 1] * fx
                c10 = vol[x0, y0 + 1, z0] * (1 - fx) + vol[x0 + 1, y0 + 1, z0] * fx
                c11 = vol[x0, y0 + 1, z0 + 1] * (1 - fx) + vol[x0 + 1, y0 + 1, z0 + 1] * fx
                out[i, j, k] = (c00 * (1 - fy) + c10 * fy) * (1 - fz) + (
                    c01 * (1 - fy) + c11 * fy) * fz


class Realigner:
    """Rigid realignment of volumes to a reference volume.

    Parameters
    ----------
    fwhm : float
        Gaussian smoothing (mm) of reference and volumes for the estimation (not for the
        resampled output).
    step : int
        Subsampling of the reference's brain voxels used in the cost (every ``step``-th voxel
        along each axis).
    interpolation : {"linear", "cubic"}
        Resampling of the output volume (trilinear, or cubic B-spline).
    max_iter : int
        Maximum Gauss-Newton iterations per volume.
    tol : float
        Convergence threshold on the update (mm for translations; degrees for rotations).
    robust : bool
        Huber-weighted least squares (IRLS, threshold 1.345 x the residual RMS): points
        whose intensity changes for another reason than motion (a strong local signal)
        are down-weighted instead of biasing the estimate.

    Attributes
    ----------
    affine_ : ndarray, shape (4, 4)
        Reference affine (voxel -> world mm).
    n_points_ : int
        Number of reference points used in the cost.
    matrix_ : ndarray, shape (4, 4)
        Transform of the last volume (see the module docstring).
    params_ : ndarray, shape (6,)
        Parameters of the last volume (mm, degrees).
    n_iter_ : int
        Iterations used for the last volume.
    converged_ : bool
        Whether the last estimate met ``tol`` within ``max_iter``.
    """

    def __init__(self, fwhm: float = 6.0, step: int = 2, interpolation: str = "linear",
                 max_iter: int = 40, tol: float = 1e-4, robust: bool = True):
        self.fwhm = fwhm
        self.step = step
        self.interpolation = interpolation
        self.max_iter = max_iter
        self.tol = tol
        self.robust = robust

    def fit(self, reference, affine, mask=None) -> Realigner:
        """Prepare the reference: smoothing, sample points, Jacobian.

        Parameters
        ----------
        reference : array-like, shape (X, Y, Z)
            Reference volume.
        affine : array-like, shape (4, 4)
            Its voxel -> world (mm) affine.
        mask : array-like of bool, shape (X, Y, Z) | None
            Voxels whose intensity drives the fit; default: voxels above 20 % of the
            reference's 98th percentile (the head on EPI), dilated by 2 voxels so that the
            head's edges, where most of the information is, are included.

        Returns
        -------
        self
        """
        check_positive_number(self.fwhm, "fwhm")
        check_int(self.step, "step", minimum=1)
        check_int(self.max_iter, "max_iter", minimum=1)
        check_positive_number(self.tol, "tol")
        _check_option("interpolation", self.interpolation, ("linear", "cubic"))
        ref = check_finite_array(reference, "reference", ndim=3)
        affine = check_finite_array(affine, "affine", ndim=2)
        if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"affine must be an invertible 4x4 matrix, got {affine}.")
        if min(ref.shape) < 2:
            raise ValueError(f"reference must be at least 2 voxels along each axis, "
                             f"got shape {ref.shape}.")
        self.shape_ = ref.shape
        self.affine_ = affine.copy()
        self.inv_affine_ = np.linalg.inv(affine)
        self.zooms_ = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        self._sigma = self.fwhm * _FWHM_TO_SIGMA / self.zooms_
        smooth_ref = ndimage.gaussian_filter(ref, self._sigma, mode="nearest")
        if mask is None:
            thr = 0.2 * np.percentile(smooth_ref, 98)
            mask = ndimage.binary_dilation(smooth_ref > thr, iterations=2)
        else:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != ref.shape:
                raise ValueError(f"mask must have the reference's shape {ref.shape}, "
                                 f"got {mask.shape}.")
        sub = np.zeros(ref.shape, dtype=bool)
        sub[::self.step, ::self.step, ::self.step] = True
        vox = np.argwhere(mask & sub)
        if len(vox) < 50:
            raise ValueError(f"Only {len(vox)} reference voxels are usable for realignment "
                             "(need >= 50): is the reference volume empty or the mask tiny?")
        grads = np.stack(np.gradient(smooth_ref), axis=-1)[tuple(vox.T)]  # d/dvoxel
        world_grads = grads @ self.inv_affine_[:3, :3]  # chain rule: d/dworld
        points = vox @ affine[:3, :3].T + affine[:3, 3]
        px, py, pz = points.T
        gx, gy, gz = world_grads.T
        sd = np.column_stack([
            gx, gy, gz,
            gy * -pz + gz * py,  # d/drx of R p at 0: (0, -z, y)
            gx * pz - gz * px,  # d/dry: (z, 0, -x)
            -gx * py + gy * px,  # d/drz: (-y, x, 0)
        ])
        self._points = np.ascontiguousarray(points)
        self._ref_vals = np.ascontiguousarray(smooth_ref[tuple(vox.T)])
        self._sd = np.ascontiguousarray(sd)
        self.n_points_ = len(vox)
        self._n_chunks = 32
        self._partial = np.zeros((self._n_chunks, 74))
        self._smoothed = np.empty(ref.shape)
        self.matrix_ = np.eye(4)
        self.params_ = np.zeros(6)
        return self

    def _check_volume(self, volume) -> np.ndarray:
        if not hasattr(self, "affine_"):
            raise RuntimeError("Realigner is not fitted: call fit(reference, affine) first.")
        vol = check_finite_array(volume, "volume", ndim=3)
        if vol.shape != self.shape_:
            raise ValueError(f"volume must have the reference's shape {self.shape_}, "
                             f"got {vol.shape}.")
        return vol

    def estimate(self, volume, init=None) -> np.ndarray:
        """Estimate the parameters of ``volume`` (starting from the previous estimate).

        Parameters
        ----------
        volume : array-like, shape (X, Y, Z)
            Volume on the reference's grid (same affine).
        init : array-like, shape (6,) | None
            Starting parameters; default: the previous volume's.

        Returns
        -------
        ndarray, shape (6,)
            ``(tx, ty, tz, rx, ry, rz)`` in mm and degrees.
        """
        vol = self._check_volume(volume)
        ndimage.gaussian_filter(vol, self._sigma, output=self._smoothed, mode="nearest")
        matrix = rigid_matrix(init) if init is not None else self.matrix_.copy()
        deg = np.array([1, 1, 1, 180 / np.pi, 180 / np.pi, 180 / np.pi])
        self.converged_ = False
        huber = 0.0  # first iteration: plain least squares; then Huber at 1.345 sigma
        for it in range(1, self.max_iter + 1):
            self.n_iter_ = it
            b = self.inv_affine_ @ matrix
            _accumulate(self._smoothed, b, self._points, self._ref_vals, self._sd,
                        self._n_chunks, self._partial, huber)
            acc = self._partial.sum(axis=0)
            if self.robust:
                huber = 1.345 * float(np.sqrt(acc[73] / max(acc[72], 1.0)))
            if acc[72] < 0.5 * self.n_points_:
                raise ValueError(
                    f"Realignment lost the volume: only {int(acc[72])} of {self.n_points_} "
                    "reference points fall inside it (motion too large or wrong reference).")
            upper = acc[:64].reshape(8, 8)
            hess = np.triu(upper) + np.triu(upper, 1).T
            delta = np.linalg.solve(hess, acc[64:72])[:6]  # radians for rotations
            step = rigid_matrix(np.concatenate([delta[:3], np.rad2deg(delta[3:])]))
            matrix = matrix @ np.linalg.inv(step)
            if np.all(np.abs(delta * deg) < self.tol):
                self.converged_ = True
                break
        self.matrix_ = matrix
        self.params_ = rigid_params(matrix)
        self.rmse_ = float(np.sqrt(acc[73] / acc[72]))
        return self.params_

    def resample(self, volume, matrix=None, out=None) -> np.ndarray:
        """Resample ``volume`` onto the reference: ``out(p) = volume(M p)``.

        Parameters
        ----------
        volume : array-like, shape (X, Y, Z)
            Volume on the reference's grid.
        matrix : array-like, shape (4, 4) | None
            Transform; default: the last estimate.
        out : ndarray, shape (X, Y, Z) | None
            Preallocated float64 output.

        Returns
        -------
        ndarray
            Realigned volume (edges clamped to the nearest voxel).
        """
        vol = self._check_volume(volume)
        matrix = self.matrix_ if matrix is None else np.asarray(matrix, dtype=np.float64)
        c = self.inv_affine_ @ matrix @ self.affine_
        if out is None:
            out = np.empty(self.shape_)
        if self.interpolation == "linear":
            _resample_linear(vol, c, out)
        else:
            ndimage.affine_transform(vol, c[:3, :3], offset=c[:3, 3], order=3,
                                     mode="nearest", output=out)
        return out

    def transform(self, volume, out=None) -> tuple[np.ndarray, np.ndarray]:
        """Estimate, then resample; returns ``(realigned, params)``."""
        params = self.estimate(volume)
        return self.resample(volume, out=out), params
