"""Band-limited (Fourier) resampling of a volume under a rigid transform, as AFNI's
``3dvolreg -Fourier`` does (Cox & Jesmanowicz 1999, Magn. Reson. Med. 42:1014).

Why: trilinear (and, less so, cubic B-spline) interpolation at a sub-voxel offset averages
neighbouring voxels, so it lowers the variance of voxel-wise white noise by a factor that
depends on the offset (trilinear: ``prod((1 - d)^2 + d^2)`` over the axes, 0.125 at half a
voxel on each axis), while a spatially smooth signal keeps its amplitude. Every
voxel-wise metric that compares signal with noise then follows the head position: under
motion of up to 1 mm / 1 degree (3 mm voxels) the voxel-wise seed FC of a virtual
participant rose by 19 % on average (see ``docs/methods.md``, feedback validity). A shift
applied as a phase ramp of the discrete Fourier transform is unitary, so white noise keeps
its variance and stays white.

Algorithm. The transform maps output voxel ``o`` to input position ``A o + b`` (voxel
units). With the grid centre ``c``, ``A o + b = c + A (o - c) + t`` where
``t = A c + b - c``. The translation ``t`` is one 3D phase ramp. The linear part is a rotation
conjugated by the voxel sizes, ``A = S^-1 R S`` (``S`` the voxel sizes, when the affine's
axes are orthogonal); ``R = Rx Ry Rz`` (Euler angles) and each factor is a 2x2 block of
determinant 1 in one plane, written exactly as three shears
``[[a, b], [c, d]] = [[1, p], [0, 1]] [[1, 0], [c, 1]] [[1, r], [0, 1]]`` with
``p = (a - 1)/c`` and ``r = (d - 1)/c`` (Paeth 1986; Unser et al. 1995). A shear moves each
line along one axis by an amount proportional to its coordinate on another axis: a 1D phase
ramp per line. Nine 1D passes and one 3D pass in all. The volume is padded (edge values) to odd
lengths, so that what wraps around the periodic grid is background and there is no Nyquist
bin (each pass is then exactly unitary), and cropped.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fourier_resample", "shear_factors"]


def _euler_xyz(rot: np.ndarray) -> tuple[float, float, float]:
    """Angles (rad) with ``rot = Rx(ax) @ Ry(ay) @ Rz(az)``."""
    ay = float(np.arcsin(np.clip(rot[0, 2], -1.0, 1.0)))
    ax = float(np.arctan2(-rot[1, 2], rot[2, 2]))
    az = float(np.arctan2(-rot[0, 1], rot[0, 0]))
    return ax, ay, az


def shear_factors(linear, zooms) -> list[tuple[int, int, float]]:
    """Shears whose product (in list order) is ``linear``, a voxel-space rigid rotation.

    Parameters
    ----------
    linear : array-like, shape (3, 3)
        ``S^-1 R S`` with ``R`` a rotation and ``S = diag(zooms)``.
    zooms : array-like, shape (3,)
        Voxel sizes.

    Returns
    -------
    list of (int, int, float)
        ``(u, v, s)``: the matrix ``I + s e_u e_v^T`` (coordinate ``u`` moves by ``s`` times
        coordinate ``v``); rotations by less than 1e-12 rad are left out.

    Raises
    ------
    ValueError
        If ``S linear S^-1`` is not a rotation (the affine's axes are not orthogonal).
    """
    zooms = np.asarray(zooms, dtype=np.float64)
    rot = np.diag(zooms) @ np.asarray(linear, dtype=np.float64) @ np.diag(1.0 / zooms)
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6) or np.linalg.det(rot) <= 0:
        raise ValueError("Fourier interpolation needs a rigid transform on a grid with "
                         "orthogonal axes; use interpolation = \"cubic\" for this affine.")
    out = []
    for angle, (i, j) in zip(_euler_xyz(rot), ((1, 2), (2, 0), (0, 1)), strict=True):
        if abs(angle) < 1e-12:
            continue
        cos, sin = np.cos(angle), np.sin(angle)
        # the plane rotation (x_i' = cos x_i - sin x_j, x_j' = sin x_i + cos x_j) in voxels
        a, c, d = cos, sin * zooms[i] / zooms[j], cos
        out += [(i, j, (a - 1.0) / c), (j, i, c), (i, j, (d - 1.0) / c)]
    return out


def _shear(g: np.ndarray, u: int, v: int, amount: float, centre: float) -> np.ndarray:
    """``out(x) = g(x + amount (x_v - centre) e_u)``: each line along ``u`` moved (odd
    lengths: no Nyquist bin, so each pass is unitary).
    """
    k = np.fft.rfftfreq(g.shape[u])
    coord = np.arange(g.shape[v]) - centre
    k_shape, c_shape = [1] * g.ndim, [1] * g.ndim
    k_shape[u], c_shape[v] = k.size, coord.size
    phase = np.exp(2j * np.pi * k.reshape(k_shape) * (amount * coord).reshape(c_shape))
    return np.fft.irfft(np.fft.rfft(g, axis=u) * phase, n=g.shape[u], axis=u)


def fourier_resample(volume, matrix, zooms, out=None) -> np.ndarray:
    """``out(o) = volume(A o + b)`` by Fourier interpolation (``matrix = [[A, b], [0, 1]]``).

    Parameters
    ----------
    volume : array-like, shape (X, Y, Z)
        Input volume.
    matrix : array-like, shape (4, 4)
        Voxel-to-voxel transform; its linear part must be a rotation conjugated by
        ``diag(zooms)`` (see :func:`shear_factors`).
    zooms : array-like, shape (3,)
        Voxel sizes of the grid.
    out : ndarray, shape (X, Y, Z) | None
        Preallocated float64 output.

    Returns
    -------
    numpy.ndarray
        The resampled volume (float64).
    """
    vol = np.asarray(volume, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    lin, offset = matrix[:3, :3], matrix[:3, 3]
    shears = shear_factors(lin, zooms)
    centre = (np.asarray(vol.shape) - 1) / 2.0
    shift = lin @ centre + offset - centre
    # pad by the largest displacement of any voxel plus a margin, with the edge values
    extent = np.abs(lin - np.eye(3)).sum(axis=1).max() * max(vol.shape) / 2.0
    pad = int(np.ceil(np.abs(shift).max() + extent)) + 2
    # odd padded lengths: no Nyquist bin, so every phase ramp is exactly unitary
    widths = [(pad, pad + 1 - (n + 2 * pad) % 2) for n in vol.shape]
    g = np.pad(vol, widths, mode="edge")
    spec = np.fft.rfftn(g)
    for axis in range(3):  # translation: one phase ramp per axis
        n = g.shape[axis]
        k = np.fft.rfftfreq(n) if axis == 2 else np.fft.fftfreq(n)
        shape = [1, 1, 1]
        shape[axis] = k.size
        spec = spec * np.exp(2j * np.pi * k * shift[axis]).reshape(shape)
    g = np.fft.irfftn(spec, s=g.shape, axes=(0, 1, 2))
    for u, v, amount in shears:
        g = _shear(g, u, v, amount, centre[v] + pad)
    if out is None:
        out = np.empty(vol.shape)
    out[...] = g[tuple(slice(pad, pad + n) for n in vol.shape)]
    return out
