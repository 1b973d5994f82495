import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from rtfb.metrics import SlidingReHo, neighbor_offsets, reho
from rtfb.metrics.reho import neighbor_table
from tests.conftest import generate_fake_fmri


def oracle_reho(data, mask, neighborhood):
    """Slow reference: loop over voxels, scipy ranks, Kendall's formula as in METHODS.md."""
    nx, ny, nz, n = data.shape
    out = np.zeros((nx, ny, nz))
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    continue
                ranks = []
                for dx in (-1, 0, 1):
                    for dy in (-1, 0, 1):
                        for dz in (-1, 0, 1):
                            n_off = abs(dx) + abs(dy) + abs(dz)
                            if (neighborhood == 7 and n_off > 1) or (
                                neighborhood == 19 and n_off > 2
                            ):
                                continue
                            a, b, c = x + dx, y + dy, z + dz
                            if 0 <= a < nx and 0 <= b < ny and 0 <= c < nz and mask[a, b, c]:
                                ranks.append(rankdata(data[a, b, c]))
                k = len(ranks)
                r_t = np.sum(ranks, axis=0)
                out[x, y, z] = 12 * np.sum((r_t - k * (n + 1) / 2) ** 2) / (k**2 * (n**3 - n))
    return out


def test_offsets():
    for size in (7, 19, 27):
        off = neighbor_offsets(size)
        assert len(off) == size and len(np.unique(off, axis=0)) == size
        assert (np.abs(off) <= 1).all() and [0, 0, 0] in off.tolist()


@pytest.mark.parametrize("neighborhood", [7, 19, 27])
@pytest.mark.parametrize("ties", [False, True])
def test_batch_matches_oracle(rng, neighborhood, ties):
    data, mask = generate_fake_fmri((6, 5, 4), 15, rng=rng, ties=ties)
    np.testing.assert_allclose(reho(data, mask, neighborhood),
                               oracle_reho(data, mask, neighborhood), rtol=1e-12, atol=0)


def test_identical_series_give_one(rng):
    series = rng.normal(size=30)
    data = np.broadcast_to(series, (4, 4, 3, 30)).copy()
    np.testing.assert_allclose(reho(data), 1.0, rtol=1e-12)


def test_independent_series_low_and_bounded(rng):
    data = rng.normal(size=(8, 8, 8, 100))
    w = reho(data)
    assert (w >= 0).all() and (w <= 1).all()
    # E[W] = 1/K + (K-1)/K * E[rho] = 1/27 for independent series (K=27 inside)
    assert w[1:-1, 1:-1, 1:-1].mean() == pytest.approx(1 / 27, abs=0.005)


def test_reversed_pair_gives_zero():
    series = np.arange(10.0)
    data = np.stack([series, series[::-1]]).reshape(2, 1, 1, 10)
    np.testing.assert_allclose(reho(data, neighborhood=7), 0.0, atol=1e-15)


def test_neighbors_outside_mask_left_out():
    data, mask = generate_fake_fmri((5, 5, 5), 12)
    table, counts = neighbor_table(mask, 27)
    flat = np.flatnonzero(mask)
    assert (table[:, 0] == np.arange(len(flat))).all()  # itself first
    assert counts.max() == 27 and counts.min() < 27
    # changing out-of-mask data changes nothing
    other = data.copy()
    other[~mask] = np.random.default_rng(1).normal(size=(int((~mask).sum()), 12))
    np.testing.assert_array_equal(reho(data, mask), reho(other, mask))


def test_constant_voxel_no_warning():
    data, mask = generate_fake_fmri((5, 5, 5), 12)
    data[2, 2, 2] = 3.0
    data[..., :] = np.where(mask[..., None], data, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = reho(data, mask)
    assert np.isfinite(w).all()
    const = np.zeros_like(data)
    np.testing.assert_array_equal(reho(const), 0.0)  # all ranks tied: no concordance


@pytest.mark.parametrize("neighborhood", [7, 19, 27])
@pytest.mark.parametrize("window", [10, 11])
def test_sliding_equals_batch_every_step(rng, neighborhood, window):
    n_vol = 3 * window + 4
    data, mask = generate_fake_fmri((6, 5, 4), n_vol, rng=rng)
    data[1, 1, 1] = 5.0  # constant voxel
    data[2, 2, 2, ::3] = data[2, 2, 2, 0]  # ties
    state = SlidingReHo(window, mask, neighborhood)
    for t in range(n_vol):
        state.partial_fit(data[..., t][mask])
        if t + 1 < window:
            assert np.isnan(state.reho_).all()
            continue
        expected = reho(data[..., t + 1 - window:t + 1], mask, neighborhood)[mask]
        np.testing.assert_allclose(state.reho_, expected, rtol=1e-12, atol=1e-15)
    oracle = oracle_reho(data[..., -window:], mask, neighborhood)[mask]
    np.testing.assert_allclose(state.reho_, oracle, rtol=1e-12, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(3, 9), st.sampled_from([7, 19, 27]))
def test_sliding_with_ties_property(seed, window, neighborhood):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 3, size=(3, 3, 3, 2 * window + 2)).astype(float)
    mask = rng.random((3, 3, 3)) < 0.8
    mask[1, 1, 1] = True
    state = SlidingReHo(window, mask, neighborhood)
    for t in range(data.shape[-1]):
        state.partial_fit(data[..., t][mask])
    np.testing.assert_allclose(state.reho_, reho(data[..., -window:], mask, neighborhood)[mask],
                               rtol=1e-12, atol=1e-15)
    assert ((state.reho_ >= 0) & (state.reho_ <= 1 + 1e-12)).all()


def test_bad_input(fake_fmri):
    data, mask = fake_fmri
    with pytest.raises(ValueError, match="'neighborhood' parameter: 26"):
        reho(data, mask, 26)
    with pytest.raises(ValueError, match="'neighborhood' parameter: 6"):
        SlidingReHo(10, mask, 6).partial_fit(data[..., 0][mask])
    with pytest.raises(ValueError, match="data4d must have 4 dimensions"):
        reho(data[..., 0], mask)
    with pytest.raises(ValueError, match="mask must have the spatial shape"):
        reho(data, mask[:-1])
    with pytest.raises(ValueError, match="data4d contains 1 NaN"):
        bad = data.copy()
        bad[0, 0, 0, 0] = np.nan
        reho(bad, mask)
    with pytest.raises(ValueError, match="in-mask voxels of mask"):
        SlidingReHo(10, mask).partial_fit(data[..., 0].ravel())
    with pytest.raises(ValueError, match="mask must be a 3D array"):
        SlidingReHo(10, mask.ravel()).partial_fit(data[..., 0][mask])
