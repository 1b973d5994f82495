import math

import numpy as np
import pytest

from rtfb.preprocess import bandpass
from rtfb.preprocess.bandpass import dpabi_band_indices, padded_length


def oracle_ideal_filter(x, tr, band):
    """Slow reference: lstsq line removed, explicit DFT sums over the padded grid.

    Bins follow DPABI's 1-based Matlab indices ``ceil(L P TR + 1) .. fix(H P TR + 1)``
    and their mirrors ``P - idx + 2``, written out as in ``y_IdealFilter``.
    """
    x = np.asarray(x, float)
    n = x.size
    design = np.column_stack([np.ones(n), np.arange(n)])
    resid = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    resid = resid - resid.mean()
    p = 1
    while p < n:
        p *= 2
    lo = math.ceil(band[0] * p * tr + 1)
    hi = math.trunc(band[1] * p * tr + 1) if band[1] < 0.5 / tr else p // 2 + 1
    keep = set(range(lo, hi + 1)) | set(range(p - hi + 2, p - lo + 3))  # 1-based
    out = np.zeros(n)
    for t in range(n):
        acc = 0j
        for idx in keep:
            k = idx - 1
            xk = sum(resid[s] * np.exp(-2j * np.pi * k * s / p) for s in range(n))
            acc += xk * np.exp(2j * np.pi * k * t / p)
        out[t] = acc.real / p
    return out


@pytest.mark.parametrize(("n", "tr", "band"), [(20, 2.0, (0.01, 0.08)), (37, 0.8, (0.01, 0.1)),
                                               (16, 2.0, (0.0, 0.25))])
def test_bandpass_matches_explicit_dft(rng, n, tr, band):
    x = 500 + np.cumsum(rng.normal(size=(3, n)), axis=1) + 0.3 * np.arange(n)
    got = bandpass(x, tr, band)
    for i in range(3):
        np.testing.assert_allclose(got[i], oracle_ideal_filter(x[i], tr, band), atol=1e-9)


def test_full_band_returns_detrended_series(rng):
    x = rng.normal(size=(4, 25)) + 2.0 * np.arange(25)
    t = np.arange(25.0)
    design = np.column_stack([np.ones(25), t])
    resid = x - (design @ np.linalg.lstsq(design, x.T, rcond=None)[0]).T
    # low = 0 and high >= Nyquist keep every bin: the filter is the identity
    np.testing.assert_allclose(bandpass(x, 2.0, (0.0, 0.25)), resid, atol=1e-10)


def test_sinusoid_on_padded_grid_outside_band_is_removed():
    # n = P = 64: a cosine on bin 20 (0.156 Hz at TR 2) lies outside 0.01-0.08 Hz; both
    # cosines are even about the window's centre, so the linear detrend leaves them alone
    t = np.arange(64) - 31.5
    x = np.cos(2 * np.pi * 20 * t / 64) + np.cos(2 * np.pi * 5 * t / 64)
    np.testing.assert_allclose(bandpass(x, 2.0), np.cos(2 * np.pi * 5 * t / 64), atol=1e-12)


def test_band_indices_follow_matlab_rounding():
    assert padded_length(20) == 32 and padded_length(32) == 32 and padded_length(33) == 64
    # 0.01 * 32 * 2 = 0.64 -> ceil(1.64) = 2 (1-based) -> bin 1; 0.08 * 64 = 5.12 -> bin 5
    assert dpabi_band_indices(20, 2.0, (0.01, 0.08)) == (32, 1, 5)
    # edges exactly on a bin: 0.01 * 128 * 0.78125 = 1 -> bin 1 kept; 0.08 * 100 = 8 -> bin 8
    assert dpabi_band_indices(100, 0.78125, (0.01, 0.08)) == (128, 1, 8)
    # high cutoff at / above Nyquist keeps up to P / 2; high = 0 means "no low-pass"
    assert dpabi_band_indices(20, 2.0, (0.01, 0.25)) == (32, 1, 16)
    assert dpabi_band_indices(20, 2.0, (0.01, 0.3))[2] == 16
    with pytest.raises(ValueError, match="contains no frequency bin"):
        dpabi_band_indices(4, 2.0, (0.01, 0.02))


def test_mask_and_errors(rng):
    data = rng.normal(size=(3, 4, 2, 30))
    mask = np.zeros((3, 4, 2), bool)
    mask[1, 2, 1] = mask[0, 0, 0] = True
    out = bandpass(data, 1.0, (0.01, 0.1), mask=mask)
    assert (out[~mask] == 0).all()
    np.testing.assert_allclose(out[mask], bandpass(data[mask], 1.0, (0.01, 0.1)))
    with pytest.raises(ValueError, match="'convention' parameter"):
        bandpass(data, 1.0, convention="fsl")
    with pytest.raises(ValueError, match="0 <= low < high"):
        bandpass(data, 1.0, band=(0.1, 0.01))
    with pytest.raises(ValueError, match="at least 3 time points"):
        bandpass(data[..., :2], 1.0)
