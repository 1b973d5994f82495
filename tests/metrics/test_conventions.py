"""``convention=`` of the batch kernels on analytic cases and slow oracles."""

import math

import numpy as np
import pytest

from rtfb.metrics import (
    alff,
    degree_centralities,
    degree_centrality,
    falff,
    malff,
    reho,
    seed_fc,
    vmhc,
    zalff,
)
from tests.conftest import generate_fake_fmri


def oracle_dpabi_alff(x, tr, band):
    """DPABI's y_alff_falff for one series, with explicit sums and 1-based Matlab indices."""
    x = np.asarray(x, float)
    n = x.size
    design = np.column_stack([np.ones(n), np.arange(n)])
    resid = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    p = 2 ** math.ceil(math.log2(n))
    amp = [2 * abs(sum(resid[s] * np.exp(-2j * np.pi * k * s / p) for s in range(n))) / n
           for k in range(p)]  # amp[idx - 1] for Matlab index idx
    lo, hi = math.ceil(band[0] * p * tr + 1), math.trunc(band[1] * p * tr + 1)
    band_amp = [amp[idx - 1] for idx in range(lo, hi + 1)]
    return np.mean(band_amp), np.sum(band_amp) / np.sum(amp[1:p // 2 + 1])


@pytest.mark.parametrize(("n", "tr", "band"), [(20, 2.0, (0.01, 0.08)), (50, 0.8, (0.01, 0.1)),
                                               (33, 1.5, (0.02, 0.2))])
def test_dpabi_alff_matches_explicit_padded_dft(rng, n, tr, band):
    x = 300 + np.cumsum(rng.normal(size=(4, n)), axis=1)
    a, f = alff(x, tr, band, convention="dpabi"), falff(x, tr, band, convention="dpabi")
    for i in range(4):
        ea, ef = oracle_dpabi_alff(x[i], tr, band)
        assert a[i] == pytest.approx(ea, rel=1e-10)
        assert f[i] == pytest.approx(ef, rel=1e-10)


def test_dpabi_alff_equals_rtfb_without_padding(rng):
    # n = 64 is a power of two and 0.01-0.08 Hz at TR 2 selects bins 2..10 either way
    x = rng.normal(size=(5, 64)) + np.linspace(0, 3, 64)
    np.testing.assert_allclose(alff(x, 2.0, convention="dpabi"), alff(x, 2.0), rtol=1e-13)
    np.testing.assert_allclose(falff(x, 2.0, convention="dpabi"), falff(x, 2.0), rtol=1e-13)
    # n = 200 pads to 256: the two conventions differ
    y = rng.normal(size=(5, 200))
    assert np.abs(alff(y, 2.0, convention="dpabi") / alff(y, 2.0) - 1).max() > 0.01


def test_cpac_alff_is_sd_of_bandpassed_series():
    # n = P = 64, even cosines (untouched by the detrend): bin 5 (in band) amplitude 3,
    # bin 20 (out of band) amplitude 4 -> SDs 3 / sqrt(2) and 5 / sqrt(2)
    t = np.arange(64) - 31.5
    x = 3 * np.cos(2 * np.pi * 5 * t / 64) + 4 * np.cos(2 * np.pi * 20 * t / 64) + 100
    assert alff(x, 2.0, (0.01, 0.1), convention="cpac") == pytest.approx(3 / np.sqrt(2))
    assert falff(x, 2.0, (0.01, 0.1), convention="cpac") == pytest.approx(3 / 5)
    # fALFF is the square root of the band's share of the power, rtfb's an amplitude share
    assert falff(x, 2.0, (0.01, 0.1)) == pytest.approx(3 / 7)


def test_constant_series_and_bad_convention():
    x = np.ones((2, 30))
    for conv in ("rtfb", "dpabi", "cpac"):
        assert (alff(x, 2.0, convention=conv) == 0).all()
        assert (falff(x, 2.0, convention=conv) == 0).all()
    with pytest.raises(ValueError, match="'convention' parameter"):
        alff(x, 2.0, convention="afni")
    with pytest.raises(ValueError, match="'convention' parameter"):
        zalff(np.arange(4.0), convention="cpac")


def test_zalff_ddof(rng):
    values = rng.normal(size=50)
    mask = np.ones(50, bool)
    np.testing.assert_allclose(zalff(values, mask, convention="dpabi"),
                               (values - values.mean()) / values.std(ddof=1))
    np.testing.assert_allclose(malff(values + 5, mask, convention="dpabi"),
                               (values + 5) / (values + 5).mean())


def test_reho_dpabi_zeroes_faces_only(rng):
    data, _ = generate_fake_fmri((5, 6, 4), 25, rng=rng)
    mask = np.ones((5, 6, 4), bool)
    full = reho(data, mask)
    dp = reho(data, mask, convention="dpabi")
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1, 1:-1] = True
    assert (dp[~inner] == 0).all() and (full[~inner] > 0).all()
    np.testing.assert_array_equal(dp[inner], full[inner])


def test_seed_fc_dpabi_is_unclipped(rng):
    seed = rng.normal(size=30)
    voxels = np.vstack([seed, rng.normal(size=30)])
    z = seed_fc(seed, voxels, convention="dpabi")
    assert np.isinf(z[0])
    assert z[1] == pytest.approx(np.arctanh(np.corrcoef(seed, voxels[1])[0, 1]), rel=1e-12)
    assert seed_fc(seed, voxels)[0] == pytest.approx(np.arctanh(1 - 1e-7))


def oracle_degree(data, mask, threshold):
    r = np.corrcoef(data[mask])
    np.fill_diagonal(r, 0)
    binary, weighted = np.zeros(mask.shape), np.zeros(mask.shape)
    binary[mask] = (r > threshold).sum(axis=1)
    weighted[mask] = np.where(r > threshold, r, 0).sum(axis=1)
    return binary, weighted


def test_degree_centralities_one_pass_both_maps(rng):
    data, mask = generate_fake_fmri((5, 5, 4), 30, rng=rng)
    data[mask] += 3 * rng.normal(size=30)
    b, w = degree_centralities(data, mask, 0.25, block_size=7)
    eb, ew = oracle_degree(data, mask, 0.25)
    np.testing.assert_array_equal(b, eb)
    np.testing.assert_allclose(w, ew, rtol=1e-10)
    np.testing.assert_array_equal(degree_centrality(data, mask, 0.25, weighted=False), b)


def test_degree_constant_voxel_dpabi_minus_one(rng):
    data, mask = generate_fake_fmri((4, 4, 3), 20, rng=rng)
    data[1, 1, 1] = 2.0
    b, w = degree_centralities(data, mask, convention="dpabi")
    assert b[1, 1, 1] == -1 and w[1, 1, 1] == -1
    rb, rw = degree_centralities(data, mask)
    assert rb[1, 1, 1] == 0 and rw[1, 1, 1] == 0
    others = mask.copy()
    others[1, 1, 1] = False
    np.testing.assert_array_equal(b[others], rb[others])


def _affine(shape, voxel=3.0):
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -voxel * (np.array(shape) - 1) / 2
    return affine


@pytest.mark.parametrize("width", [45, 9, 8])
def test_vmhc_midline(rng, width):
    shape = (width, 3, 2)
    data = rng.normal(size=shape + (30,))
    mask = np.ones(shape, bool)
    out = vmhc(data, mask, _affine(shape))
    if width % 2:  # the midline plane is its own mirror: excluded, not z = 8.4
        assert (out[width // 2] == 0).all()
        kept = vmhc(data, mask, _affine(shape), exclude_midline=False)
        np.testing.assert_allclose(kept[width // 2], np.arctanh(1 - 1e-7))
    assert np.abs(np.delete(out, width // 2 if width % 2 else [], axis=0)).max() < 2
    assert (out != 0).sum() == (width - width % 2) * 6
    np.testing.assert_allclose(out, out[::-1])
    for x in range(width):
        if width % 2 and x == width // 2:
            continue
        r = np.corrcoef(data[x, 1, 1], data[width - 1 - x, 1, 1])[0, 1]
        assert out[x, 1, 1] == pytest.approx(np.arctanh(r), rel=1e-10)


@pytest.mark.parametrize("width", [9, 8])
def test_vmhc_dpabi_union_mask_and_midline_slice(rng, width):
    shape = (width, 3, 2)
    data = rng.normal(size=shape + (30,))
    mask = np.zeros(shape, bool)
    mask[:width // 2] = True  # left half only: the union with the mirror is everything
    z = vmhc(data, mask, convention="dpabi")
    assert (z[width // 2] == 0).all()  # DPABI zeroes slice fix(X / 2) + 1 (1-based)
    x = width - 1  # outside the mask, inside its mirror
    r = np.corrcoef(data[x, 0, 0], data[0, 0, 0])[0, 1]
    assert z[x, 0, 0] == pytest.approx(0.5 * np.log((1 + r) / (1 - r)), rel=1e-10)
    assert (vmhc(data, mask) == 0).all()  # rtfb: both sides must be in the mask
    data[1, 2, 1] = data[width - 2, 2, 1]  # identical mirror series: r = 1 -> 1 - 1e-16
    z = vmhc(data, mask, convention="dpabi")
    assert z[1, 2, 1] == pytest.approx(0.5 * np.log((2 - 2**-53) / 2**-53))


@pytest.mark.parametrize(("window", "tr", "band"), [(20, 2.0, (0.01, 0.08)), (37, 0.8, (0.01, 0.1)),
                                                    (32, 2.0, (0.0, 0.25))])
def test_sliding_dpabi_alff_equals_batch_on_every_window(rng, window, tr, band):
    from rtfb.metrics import SlidingALFF

    n_total = window + 70
    series = 800 + np.cumsum(rng.normal(size=(6, n_total)), axis=1)
    series[3] = 5.0  # constant
    series[4, 30:] = series[4, 30]  # becomes constant
    state = SlidingALFF(window, tr, band, convention="dpabi")
    for t in range(n_total):
        state.partial_fit(series[:, t])
        if t + 1 < window:
            assert np.isnan(state.alff_).all()
            continue
        win = series[:, t + 1 - window:t + 1]
        np.testing.assert_allclose(state.alff_, alff(win, tr, band, convention="dpabi"),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(state.falff_, falff(win, tr, band, convention="dpabi"),
                                   rtol=1e-9, atol=1e-12)
    assert state.alff_[3] == 0 and state.alff_[4] == 0


def test_sliding_alff_rejects_cpac():
    from rtfb.metrics import SlidingALFF

    with pytest.raises(ValueError, match="'convention' parameter"):
        SlidingALFF(20, 2.0, convention="cpac").partial_fit(np.ones(3))
