import warnings

import numpy as np
import pytest

from rtfb.metrics import SlidingPSC, psc


def test_batch_by_hand():
    ts = np.array([100.0, 100.0, 102.0, 99.0])
    np.testing.assert_allclose(psc(ts, slice(0, 2)), [0.0, 0.0, 2.0, -1.0])
    np.testing.assert_allclose(psc(ts, [0, 1]), psc(ts, np.array([1, 1, 0, 0], bool)))


def test_batch_matches_pandas_style_oracle(rng):
    ts = 500 + rng.normal(size=(3, 20))
    base = ts[:, 2:7].mean(axis=1)
    expected = np.array([[100 * (v - b) / b for v in row] for row, b in zip(ts, base, strict=True)])
    np.testing.assert_allclose(psc(ts, slice(2, 7)), expected, rtol=1e-12)


def test_zero_baseline_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = psc(np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 2.0]]), slice(0, 2))
    assert np.isnan(out[0]).all() and out[1, 2] == pytest.approx(100.0)


@pytest.mark.parametrize("window", [1, 8, 13])
def test_sliding_equals_batch_every_step(rng, window):
    n_vol = 3 * window + 6
    ts = 1000 + np.cumsum(rng.normal(size=(25, n_vol)), axis=1)
    state = SlidingPSC(window)
    for t in range(n_vol):
        state.partial_fit(ts[:, t])
        if t < window:
            assert np.isnan(state.psc_).all()
            continue
        expected = psc(ts[:, t - window:t + 1], slice(0, window))[:, -1]
        np.testing.assert_allclose(state.psc_, expected, rtol=1e-9, atol=1e-10)


def test_freeze_baseline(rng):
    ts = 1000 + rng.normal(size=(4, 30))
    state = SlidingPSC(10)
    with pytest.raises(ValueError, match="Cannot freeze the baseline before 10 volumes"):
        state.partial_fit(ts[:, 0]).freeze_baseline()
    for t in range(1, 10):
        state.partial_fit(ts[:, t])
    state.freeze_baseline()
    for t in range(10, 30):
        state.partial_fit(ts[:, t])
        expected = psc(np.concatenate([ts[:, :10], ts[:, t:t + 1]], axis=1), slice(0, 10))
        np.testing.assert_allclose(state.psc_, expected[:, -1], rtol=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="baseline selects no volume"):
        psc(np.ones(5), slice(3, 3))
    with pytest.raises(ValueError, match=r"must have shape \(5,\)"):
        psc(np.ones(5), np.ones(4, bool))
    with pytest.raises(ValueError, match="baseline indices must lie"):
        psc(np.ones(5), [9])
    with pytest.raises(ValueError, match="window must be >= 1"):
        SlidingPSC(0).partial_fit(np.ones(3))
