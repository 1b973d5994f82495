"""Fourier (band-limited) resampling: against scipy's 5th-order spline on a smooth volume,
and the property it exists for: voxel-wise white noise keeps its variance."""

import numpy as np
import pytest
from scipy import ndimage

from rtfb.preprocess.fourier_interp import fourier_resample, shear_factors
from rtfb.preprocess.realign import Realigner, rigid_matrix

SHAPE = (32, 30, 20)
ZOOMS = np.array([3.0, 3.0, 3.5])
AFFINE = np.diag([*ZOOMS, 1.0])
AFFINE[:3, 3] = -ZOOMS * (np.asarray(SHAPE) - 1) / 2
INNER = (slice(3, -3),) * 3
MOTIONS = [[0.7, -0.4, 0.9, 0, 0, 0], [0, 0, 0, 2, 0, 0], [0, 0, 0, 0, 2, 0],
           [0, 0, 0, 0, 0, 2], [2, 1, -1, 3, 2, -2]]


def _voxel_matrix(params):
    return np.linalg.inv(AFFINE) @ rigid_matrix(params) @ AFFINE


@pytest.fixture(scope="module")
def smooth_volume():
    """A smooth head-like blob with texture, ~0 at the grid's faces (< 1 % of its peak)."""
    g = np.indices(SHAPE).astype(float)
    centre = (np.asarray(SHAPE) - 1) / 2
    r2 = sum(((g[i] - centre[i]) / (0.22 * SHAPE[i])) ** 2 for i in range(3))
    return 100 * np.exp(-r2) * (1 + 0.3 * np.sin(g[0] / 2.5) * np.cos(g[1] / 3.0))


@pytest.mark.parametrize("params", MOTIONS)
def test_matches_high_order_spline(smooth_volume, params):
    c = _voxel_matrix(params)
    expected = ndimage.affine_transform(smooth_volume, c[:3, :3], offset=c[:3, 3], order=5)
    got = fourier_resample(smooth_volume, c, ZOOMS)
    linear = ndimage.affine_transform(smooth_volume, c[:3, :3], offset=c[:3, 3], order=1)
    err = np.abs(got - expected)[INNER].max()
    # measured: 0.003-0.012 (values up to 100), trilinear 0.43-2.3
    assert err < 0.03
    assert err < 0.1 * np.abs(linear - expected)[INNER].max()


def test_identity_and_integer_shift(smooth_volume, rng):
    np.testing.assert_allclose(fourier_resample(smooth_volume, np.eye(4), ZOOMS),
                               smooth_volume, atol=1e-9)
    vol = rng.standard_normal(SHAPE)
    c = np.eye(4)
    c[:3, 3] = (2, -1, 1)  # out(o) = vol(o + (2, -1, 1)): an exact shift
    got = fourier_resample(vol, c, ZOOMS)
    np.testing.assert_allclose(got[3:-3, 3:-3, 3:-3], vol[5:-1, 2:-4, 4:-2], atol=1e-9)


def test_shears_multiply_to_the_transform():
    for params in MOTIONS[1:]:
        lin = _voxel_matrix(params)[:3, :3]
        product = np.eye(3)
        for u, v, amount in shear_factors(lin, ZOOMS):
            m = np.eye(3)
            m[u, v] = amount
            product = product @ m
        np.testing.assert_allclose(product, lin, atol=1e-12)


@pytest.mark.parametrize("params", MOTIONS)
def test_white_noise_keeps_its_variance(params, rng):
    """The reason for the method: trilinear resampling lowers the variance of voxel-wise
    noise by prod((1 - d)^2 + d^2) (down to 0.125), which follows head motion."""
    c = _voxel_matrix(params)
    noise = rng.standard_normal((8, *SHAPE))
    got = np.array([fourier_resample(n, c, ZOOMS)[INNER] for n in noise])
    linear = np.array([ndimage.affine_transform(n, c[:3, :3], offset=c[:3, 3], order=1)[INNER]
                       for n in noise])
    assert 0.93 < got.var() < 1.03  # measured 0.96-0.99 (noise from the padded faces)
    assert linear.var() < 0.8  # measured 0.31-0.74


def test_realigner_option(smooth_volume):
    realigner = Realigner(interpolation="fourier").fit(smooth_volume, AFFINE)
    m = rigid_matrix([1.0, 0.5, -0.3, 1.0, 2.0, -1.5])
    np.testing.assert_allclose(realigner.resample(smooth_volume, m),
                               fourier_resample(smooth_volume,
                                                np.linalg.inv(AFFINE) @ m @ AFFINE, ZOOMS))
    oblique = AFFINE.copy()
    oblique[0, 1] = 1.0  # non-orthogonal axes
    with pytest.raises(ValueError, match="orthogonal"):
        Realigner(interpolation="fourier").fit(smooth_volume, oblique)
    with pytest.raises(ValueError, match="orthogonal"):
        shear_factors(oblique[:3, :3], ZOOMS)
