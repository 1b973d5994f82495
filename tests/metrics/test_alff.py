import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rtfb.metrics import SlidingALFF, alff, band_bins, falff, malff, zalff
from tests.conftest import generate_fake_fmri


def oracle_alff_falff(x, tr, band):
    """Slow reference: lstsq detrend, full complex FFT, explicit loop over bins."""
    x = np.asarray(x, float)
    n = x.size
    design = np.column_stack([np.ones(n), np.arange(n)])
    beta = np.linalg.lstsq(design, x, rcond=None)[0]
    resid = x - design @ beta
    spectrum = np.fft.fft(resid)
    in_band, n_band, total = 0.0, 0, 0.0
    for k in range(1, n // 2 + 1):
        amp = 2 * abs(spectrum[k]) / n
        total += amp
        f = k / (n * tr)
        if band[0] - 1e-12 <= f <= band[1] + 1e-12:
            in_band += amp
            n_band += 1
    return in_band / n_band, in_band / total


def test_batch_matches_oracle(rng):
    data = 1000 + np.cumsum(rng.normal(size=(12, 100)), axis=1)
    for tr, band in [(2.0, (0.01, 0.08)), (0.8, (0.01, 0.1)), (1.0, (0.01, 0.25))]:
        a, f = alff(data, tr, band), falff(data, tr, band)
        for i in range(data.shape[0]):
            ea, ef = oracle_alff_falff(data[i], tr, band)
            assert a[i] == pytest.approx(ea, rel=1e-10)
            assert f[i] == pytest.approx(ef, rel=1e-10)


def test_band_edges_inclusive():
    # n=100, TR=1: f_1 = 0.01 Hz and f_8 = 0.08 Hz exactly on the edges.
    sel = band_bins(100, 1.0, (0.01, 0.08))
    assert np.flatnonzero(sel).tolist() == list(range(0, 8))  # k = 1..8


def _orthogonal_cosine(n, k0, amplitude):
    """Cosine on bin k0 with zero mean and zero slope over m = 0..n-1 (detrend is a no-op)."""
    m = np.arange(n)
    theta = 2 * np.pi * k0 / n
    s = (m * np.exp(1j * theta * m)).sum()
    phi = np.pi / 2 - np.angle(s)
    return amplitude * np.cos(theta * m + phi)


@pytest.mark.parametrize("n,tr,k0", [(64, 2.0, 5), (100, 1.0, 4), (128, 0.5, 4)])
def test_analytic_sinusoid(n, tr, k0):
    amplitude = 3.7
    x = 500 + _orthogonal_cosine(n, k0, amplitude)
    n_band = band_bins(n, tr).sum()
    assert 0.01 <= k0 / (n * tr) <= 0.08
    # the amplitude spectrum is a single line of height `amplitude` at k0
    assert alff(x, tr) == pytest.approx(amplitude / n_band, rel=1e-9)
    assert falff(x, tr) == pytest.approx(1.0, rel=1e-9)


def test_out_of_band_sinusoid_has_no_alff():
    n, tr = 64, 2.0
    k_high = 20  # 0.156 Hz
    x = _orthogonal_cosine(n, k_high, 2.0)
    assert alff(x, tr) == pytest.approx(0.0, abs=1e-12)
    assert falff(x, tr) == pytest.approx(0.0, abs=1e-12)


def test_linear_trend_removed():
    x = 3.0 + 0.5 * np.arange(60)
    assert alff(x, 2.0) == pytest.approx(0.0, abs=1e-10)


def test_constant_series_is_zero_without_warning():
    data = np.full((3, 50), 7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(alff(data, 2.0), 0.0)
        np.testing.assert_array_equal(falff(data, 2.0), 0.0)
        state = SlidingALFF(20, 2.0)
        for t in range(50):
            state.partial_fit(data[:, t])
        np.testing.assert_array_equal(state.alff_, 0.0)
        np.testing.assert_array_equal(state.falff_, 0.0)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(20, 70)),
              elements=st.floats(-1e3, 1e3, allow_nan=False)))
def test_falff_in_unit_interval(data):
    f = falff(data, 2.0)
    assert np.all((f >= 0) & (f <= 1 + 1e-12))
    assert np.all(alff(data, 2.0) >= 0)


def test_4d_input_gives_map(fake_fmri):
    data, _ = fake_fmri
    out = alff(data, 2.0)
    assert out.shape == data.shape[:3]
    np.testing.assert_allclose(out[1, 2, 3], alff(data[1, 2, 3], 2.0))


@pytest.mark.parametrize("window", [32, 33, 64])
def test_sliding_equals_batch_every_step(rng, window):
    n_vol = 3 * window + 7
    data, mask = generate_fake_fmri((6, 5, 4), n_vol, rng=rng)
    ts = data[mask]
    ts[0] = 12.0  # constant voxel
    ts[1, ::2] = ts[1, 0]  # many repeated values
    tr, band = 1.5, (0.01, 0.1)
    state = SlidingALFF(window, tr, band)
    for t in range(n_vol):
        state.partial_fit(ts[:, t])
        assert state.n_seen_ == t + 1
        if t + 1 < window:
            assert np.isnan(state.alff_).all() and np.isnan(state.falff_).all()
            continue
        win = ts[:, t + 1 - window:t + 1]
        np.testing.assert_allclose(state.alff_, alff(win, tr, band), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(state.falff_, falff(win, tr, band), rtol=1e-9, atol=1e-12)
    # and against the independent oracle on the last window
    ea, ef = oracle_alff_falff(ts[5, -window:], tr, band)
    assert state.alff_[5] == pytest.approx(ea, rel=1e-9)
    assert state.falff_[5] == pytest.approx(ef, rel=1e-9)


def test_sliding_accuracy_over_long_run(rng):
    """Large offset and slow drift over 2,000 updates: no accumulated error."""
    window, n_vol = 64, 2000
    ts = 20000 + np.cumsum(rng.normal(size=(50, n_vol)), axis=1) * 5
    state = SlidingALFF(window, 2.0)
    for t in range(n_vol):
        state.partial_fit(ts[:, t])
    win = ts[:, -window:]
    np.testing.assert_allclose(state.alff_, alff(win, 2.0), rtol=1e-8)
    np.testing.assert_allclose(state.falff_, falff(win, 2.0), rtol=1e-8)


def test_normalisations(rng):
    values = rng.gamma(2.0, size=(5, 4, 3))
    mask = np.zeros(values.shape, bool)
    mask[1:4, 1:3] = True
    m = malff(values, mask)
    assert m[mask].mean() == pytest.approx(1.0)
    assert (m[~mask] == 0).all()
    z = zalff(values, mask)
    assert z[mask].mean() == pytest.approx(0.0, abs=1e-12)
    assert z[mask].std() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="constant inside the mask"):
        zalff(np.ones((2, 2)))
    with pytest.raises(ValueError, match="zero mean"):
        malff(np.zeros((2, 2)))


def test_bad_input():
    x = np.random.default_rng(0).normal(size=(3, 64))
    with pytest.raises(ValueError, match="tr must be a finite number > 0"):
        alff(x, 0)
    with pytest.raises(ValueError, match="tr must be a finite number > 0"):
        SlidingALFF(64, -2.0).partial_fit(x[:, 0])
    with pytest.raises(ValueError, match="none of which lies in band"):
        alff(x[:, :5], 2.0)
    with pytest.raises(ValueError, match="window needs at least"):
        SlidingALFF(5, 2.0).partial_fit(x[:, 0])
    with pytest.raises(ValueError, match="band must satisfy"):
        alff(x, 2.0, band=(0.08, 0.01))
    with pytest.raises(ValueError, match="band must be a pair"):
        alff(x, 2.0, band=0.08)
    with pytest.raises(ValueError, match="ts contains 1 NaN"):
        bad = x.copy()
        bad[1, 3] = np.nan
        alff(bad, 2.0)
    with pytest.raises(ValueError, match="at least 3 time points"):
        alff(x[:, :2], 2.0)
    state = SlidingALFF(64, 2.0).partial_fit(x[:, 0])
    with pytest.raises(ValueError, match=r"volume must have shape \(3,\)"):
        state.partial_fit(x[:2, 1])
    with pytest.raises(ValueError, match="volume contains 1 NaN"):
        state.partial_fit(np.array([1.0, np.inf, 2.0]))
    assert state.n_seen_ == 1  # rejected volumes do not advance the state
    with pytest.raises(ValueError, match="window must be >= 3"):
        SlidingALFF(2, 2.0).partial_fit(x[:, 0])
