import warnings

import numpy as np
import pytest

from rtfb.metrics import SlidingSeedFC, fisher_z, seed_fc


def oracle_z(seed, voxels):
    out = np.empty(voxels.shape[0])
    for i, v in enumerate(voxels):
        r = np.corrcoef(seed, v)[0, 1]
        out[i] = np.arctanh(np.clip(r, -(1 - 1e-7), 1 - 1e-7))
    return out


def test_batch_matches_corrcoef(rng):
    seed = rng.normal(size=50)
    voxels = 0.5 * seed + rng.normal(size=(20, 50))
    np.testing.assert_allclose(seed_fc(seed, voxels), oracle_z(seed, voxels), rtol=1e-10)


def test_clipping_and_sign(rng):
    seed = rng.normal(size=30)
    z = seed_fc(seed, np.stack([seed, -seed, 3 * seed + 1]))
    expected = np.arctanh(1 - 1e-7)
    np.testing.assert_allclose(z, [expected, -expected, expected])
    assert np.isfinite(fisher_z(np.array([1.0, -1.0]))).all()


def test_constant_gives_zero_without_warning(rng):
    seed = rng.normal(size=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seed_fc(seed, np.full((2, 30), 4.0)).tolist() == [0.0, 0.0]
        assert seed_fc(np.ones(30), rng.normal(size=(2, 30))).tolist() == [0.0, 0.0]


def test_map_shape(rng):
    seed = rng.normal(size=20)
    assert seed_fc(seed, rng.normal(size=(4, 3, 2, 20))).shape == (4, 3, 2)


@pytest.mark.parametrize("window", [16, 25])
def test_sliding_equals_batch_every_step(rng, window):
    n_vol, n_sig = 3 * window + 5, 40
    common = np.cumsum(rng.normal(size=n_vol))
    data = 800 + common + rng.normal(size=(n_sig, n_vol)) * np.linspace(0.2, 3, n_sig)[:, None]
    data[3] = 2.0  # constant voxel
    seed = np.zeros(n_sig, bool)
    seed[:5] = True
    state = SlidingSeedFC(window, seed)
    for t in range(n_vol):
        state.partial_fit(data[:, t])
        if t + 1 < window:
            assert np.isnan(state.z_).all()
            continue
        win = data[:, t + 1 - window:t + 1]
        seed_series = win[seed].mean(axis=0)
        np.testing.assert_allclose(state.z_, seed_fc(seed_series, win), rtol=1e-8, atol=1e-10)
    varying = np.arange(n_sig) != 3  # corrcoef is undefined (NaN) for the constant voxel
    np.testing.assert_allclose(state.z_[varying], oracle_z(seed_series, win[varying]),
                               rtol=1e-8, atol=1e-10)
    assert state.z_[3] == 0.0


def test_sliding_constant_seed(rng):
    data = rng.normal(size=(6, 30))
    data[0] = 1.0
    state = SlidingSeedFC(10, np.array([0]))
    for t in range(30):
        state.partial_fit(data[:, t])
    np.testing.assert_array_equal(state.z_, 0.0)


def test_sliding_long_run_accuracy(rng):
    n_vol, window = 2000, 64
    common = np.cumsum(rng.normal(size=n_vol))
    data = 30000 + 40 * common + rng.normal(size=(30, n_vol)) * 20
    state = SlidingSeedFC(window, np.arange(3))
    for t in range(n_vol):
        state.partial_fit(data[:, t])
    win = data[:, -window:]
    np.testing.assert_allclose(state.z_, seed_fc(win[:3].mean(0), win), rtol=1e-7, atol=1e-9)


def test_bad_input(rng):
    with pytest.raises(ValueError, match="time points on their last axis"):
        seed_fc(rng.normal(size=10), rng.normal(size=(3, 11)))
    with pytest.raises(ValueError, match="seed must have 1 dimensions"):
        seed_fc(rng.normal(size=(2, 10)), rng.normal(size=(3, 10)))
    with pytest.raises(ValueError, match="seed selects no signal"):
        SlidingSeedFC(10, np.zeros(5, bool)).partial_fit(np.ones(5))
    with pytest.raises(ValueError, match=r"seed must be a boolean vector of shape \(5,\)"):
        SlidingSeedFC(10, np.ones(4, bool)).partial_fit(np.ones(5))
    with pytest.raises(ValueError, match=r"seed indices must lie in \[0, 5\)"):
        SlidingSeedFC(10, np.array([7])).partial_fit(np.ones(5))
    with pytest.raises(ValueError, match="window must be >= 3"):
        SlidingSeedFC(2, np.array([0])).partial_fit(np.ones(5))
