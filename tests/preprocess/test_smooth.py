import numpy as np
import pytest
from scipy import ndimage

from rtfb.preprocess.smooth import FWHM_PER_SIGMA, Smoother, fwhm_to_sigma, zooms_from_affine


def measured_fwhm_mm(profile, zoom):
    """FWHM of a 1-D peak from its second moment (exact for a Gaussian), in mm."""
    profile = profile / profile.sum()
    x = np.arange(profile.size) * zoom
    mean = (profile * x).sum()
    return FWHM_PER_SIGMA * np.sqrt((profile * (x - mean) ** 2).sum())


def half_max_width_mm(profile, zoom):
    """Width at half maximum by linear interpolation between samples, in mm."""
    half = profile.max() / 2
    above = np.nonzero(profile >= half)[0]
    lo, hi = above[0], above[-1]
    left = lo - 1 + (half - profile[lo - 1]) / (profile[lo] - profile[lo - 1])
    right = hi + (profile[hi] - half) / (profile[hi] - profile[hi + 1])
    return (right - left) * zoom


def test_fwhm_to_sigma_analytic():
    assert FWHM_PER_SIGMA == pytest.approx(2.354820045, rel=1e-9)
    np.testing.assert_allclose(fwhm_to_sigma(6.0, (3.0, 3.0, 3.0)),
                               6.0 / 2.354820045 / 3.0, rtol=1e-9)
    np.testing.assert_allclose(fwhm_to_sigma(6.0, (2.0, 3.0, 4.0)),
                               6.0 / 2.354820045 / np.array([2.0, 3.0, 4.0]), rtol=1e-9)
    np.testing.assert_allclose(fwhm_to_sigma([4.0, 0.0, 8.0], (2.0, 2.0, 2.0)),
                               [4 / 2.354820045 / 2, 0.0, 8 / 2.354820045 / 2], rtol=1e-9)


def test_zooms_from_oblique_affine():
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 3.0, 4.0])
    np.testing.assert_allclose(zooms_from_affine(affine), [2.0, 3.0, 4.0])
    np.testing.assert_allclose(fwhm_to_sigma(6.0, affine), fwhm_to_sigma(6.0, (2, 3, 4)))


@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (1.0, 2.0, 0.5)])
def test_smoothed_delta_has_the_requested_fwhm(zooms):
    # a delta smoothed with FWHM 8 mm has a FWHM of 8 mm along every axis, in mm, whatever
    # the voxel size of that axis
    shape = (61, 41, 101)
    vol = np.zeros(shape, dtype=np.float32)
    c = tuple(s // 2 for s in shape)
    vol[c] = 1.0
    out = Smoother(8.0, zooms).transform(vol)
    assert out.sum() == pytest.approx(1.0, rel=1e-5)
    profiles = [out[:, c[1], c[2]], out[c[0], :, c[2]], out[c[0], c[1], :]]
    for profile, zoom in zip(profiles, zooms, strict=True):
        assert measured_fwhm_mm(profile.astype(float), zoom) == pytest.approx(8.0, rel=0.01)
        assert half_max_width_mm(profile.astype(float), zoom) == pytest.approx(8.0, rel=0.03)


def test_matches_scipy_gaussian_filter(rng):
    vol = rng.normal(1000, 50, (64, 64, 36)).astype(np.float32)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    smoother = Smoother(6.0, affine)
    out = smoother.transform(vol)
    sigma = 6.0 / (2 * np.sqrt(2 * np.log(2))) / np.array([3.0, 3.0, 3.5])
    expected = ndimage.gaussian_filter(vol, sigma, output=np.float32)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(smoother.sigma_, sigma)
    # float64 output into a caller's buffer
    buf = np.empty(vol.shape)
    assert smoother.transform(vol, out=buf) is buf
    np.testing.assert_allclose(buf, ndimage.gaussian_filter(vol.astype(float), sigma),
                               rtol=1e-5)


def test_buffer_is_reused_and_zero_fwhm_copies(rng):
    vol = rng.normal(size=(8, 9, 10)).astype(np.float32)
    smoother = Smoother(5.0, (2.0, 2.0, 2.0))
    first = smoother.transform(vol)
    assert smoother.transform(vol * 2) is first  # one buffer, overwritten
    copy = Smoother(0.0, (2.0, 2.0, 2.0)).transform(vol)
    assert copy is not vol
    np.testing.assert_array_equal(copy, vol)
    ro = vol.copy()
    ro.flags.writeable = False  # Volume data are read-only: never written to
    Smoother(4.0, (2.0, 2.0, 2.0)).transform(ro)


def test_bad_inputs(rng):
    smoother = Smoother(6.0, (3.0, 3.0, 3.0))
    vol = rng.normal(size=(5, 5, 5))
    vol[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="volume3d contains 1 NaN"):
        smoother.transform(vol)
    with pytest.raises(ValueError, match="volume3d must be 3D"):
        smoother.transform(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="out must be a float array of shape"):
        smoother.transform(np.zeros((5, 5, 5)), out=np.zeros((5, 5, 4)))
    with pytest.raises(ValueError, match="fwhm_mm must be finite and >= 0"):
        fwhm_to_sigma(-1.0, (2, 2, 2))
    with pytest.raises(ValueError, match="voxel sizes must be > 0"):
        fwhm_to_sigma(6.0, (2, 0, 2))
    with pytest.raises(ValueError, match="affine_or_zooms"):
        fwhm_to_sigma(6.0, (2, 2))
    with pytest.raises(ValueError, match="mode"):
        Smoother(6.0, (2, 2, 2), mode="bogus").transform(np.zeros((3, 3, 3)))
