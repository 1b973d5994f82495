import numpy as np
import pytest
from scipy import stats

from rtfb.bench import fwe as fwe_bench
from rtfb.offline.stats import (
    cluster_table,
    correlation_design,
    fdr_bh,
    group_glm,
    permutation_fwe,
    score_correlation,
    t_to_r,
    two_sample_design,
)


def _partial_r(y, x, covariates):
    """Partial correlation of each column of y with x given covariates, by lstsq residuals."""
    z = np.column_stack([np.ones(len(x)), covariates])
    rx = x - z @ np.linalg.lstsq(z, x, rcond=None)[0]
    ry = y - z @ np.linalg.lstsq(z, y, rcond=None)[0]
    return (rx @ ry) / np.sqrt((rx @ rx) * (ry * ry).sum(0))


def _r_to_t(r, df):
    return r * np.sqrt(df / (1 - r**2))


# ----------------------------------------------------------------------------- GLM


def test_two_sample_matches_ttest_ind():
    rng = np.random.default_rng(1)
    group = np.array([1] * 7 + [0] * 9, bool)
    maps = rng.standard_normal((16, 30)) + 0.8 * group[:, None]
    design, contrast = two_sample_design(group)
    t, df = group_glm(maps, design, contrast)
    ref = stats.ttest_ind(maps[group], maps[~group], equal_var=True)
    np.testing.assert_allclose(t, ref.statistic, rtol=1e-10)
    assert df == 14


def test_two_sample_with_covariates_matches_residualisation():
    rng = np.random.default_rng(2)
    n = 18
    group = rng.permutation(np.arange(n) < 8)
    age = rng.normal(50, 10, n)
    sex = rng.integers(0, 2, n)
    sex[:2] = [0, 1]
    maps = rng.standard_normal((n, 25)) + 0.05 * age[:, None] + 0.5 * group[:, None]
    design, contrast = two_sample_design(group, np.column_stack([age, sex]))
    t, df = group_glm(maps, design, contrast)
    assert df == n - 4
    r = _partial_r(maps, group.astype(float), np.column_stack([age, sex]))
    np.testing.assert_allclose(t, _r_to_t(r, df), rtol=1e-9)


def test_correlation_matches_pearsonr():
    rng = np.random.default_rng(3)
    vas = rng.uniform(0, 10, 15)
    maps = rng.standard_normal((15, 20)) + 0.2 * vas[:, None]
    res = score_correlation(maps, vas)
    ref = [stats.pearsonr(vas, maps[:, v]) for v in range(20)]
    np.testing.assert_allclose(res.r, [x.statistic for x in ref], rtol=1e-10)
    np.testing.assert_allclose(res.t, _r_to_t(res.r, 13), rtol=1e-10)
    assert res.df == 13
    # two-sided p of the slope t equals pearsonr's p
    p = 2 * stats.t.sf(np.abs(res.t), res.df)
    np.testing.assert_allclose(p, [x.pvalue for x in ref], rtol=1e-8)


def test_correlation_with_covariates_partial_r():
    rng = np.random.default_rng(4)
    n = 20
    vas = rng.uniform(0, 10, n)
    age = rng.normal(40, 8, n)
    maps = rng.standard_normal((n, 12)) + 0.1 * vas[:, None] - 0.03 * age[:, None]
    res = score_correlation(maps, vas, age)
    r = _partial_r(maps, vas, age[:, None])
    np.testing.assert_allclose(res.r, r, rtol=1e-9)
    np.testing.assert_allclose(res.t, _r_to_t(r, n - 3), rtol=1e-9)
    np.testing.assert_allclose(t_to_r(res.t, res.df), r, rtol=1e-9)
    design, contrast = correlation_design(vas, age)
    assert design.shape == (n, 3) and contrast.tolist() == [0, 1, 0]


def test_constant_voxel_gets_zero_t():
    group = np.arange(10) < 5
    maps = np.random.default_rng(0).standard_normal((10, 3))
    maps[:, 1] = 7.0
    t, _ = group_glm(maps, *two_sample_design(group))
    assert t[1] == 0 and np.all(t[[0, 2]] != 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(maps=np.ones((5, 3)), design=np.ones((4, 2)), contrast=[0, 1]), "rows"),
        (dict(maps=np.ones((5, 3)), design=np.ones((5, 2)), contrast=[0, 1, 0]), "contrast"),
        (dict(maps=np.ones((5, 3)), design=np.ones((5, 2)), contrast=[0, 1]), "rank"),
        (dict(maps=np.ones((5, 3)), design=np.eye(5, 2), contrast=[0, 0]), "zeros"),
        (dict(maps=np.full((5, 3), np.nan), design=np.eye(5, 2), contrast=[0, 1]), "NaN"),
    ],
)
def test_glm_input_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_glm(**kwargs)


def test_design_errors():
    with pytest.raises(ValueError, match="both patients and controls"):
        two_sample_design([1, 1, 1])
    with pytest.raises(ValueError, match="0 \\(controls\\)"):
        two_sample_design([0, 2, 1])
    with pytest.raises(ValueError, match="constant"):
        two_sample_design([0, 1, 1, 0], covariates=[3, 3, 3, 3])
    with pytest.raises(ValueError, match="rows"):
        correlation_design([1, 2, 3], covariates=[1, 2])
    with pytest.raises(ValueError, match="score is constant"):
        correlation_design([2, 2, 2])


# ----------------------------------------------------------------------------- permutations


def _brute_force_null(maps, design, contrast, n_perm, seed, two_sided=True):
    """Freedman-Lane max-statistic null computed voxel by voxel with lstsq."""
    n, n_vox = maps.shape
    rng = np.random.default_rng(seed)
    perms = [np.arange(n)] + [rng.permutation(n) for _ in range(n_perm - 1)]
    # nuisance: the design without the tested column (contrasts here select one column)
    col = int(np.flatnonzero(contrast)[0])
    z = np.delete(design, col, axis=1)
    df = n - design.shape[1]
    null = np.empty(n_perm)
    for k, perm in enumerate(perms):
        best = -np.inf
        for v in range(n_vox):
            y = maps[:, v]
            gamma = np.linalg.lstsq(z, y, rcond=None)[0]
            fit = z @ gamma
            ystar = (y - fit)[perm] + fit
            beta, rss = np.linalg.lstsq(design, ystar, rcond=None)[:2]
            se = np.sqrt(rss[0] / df * np.linalg.inv(design.T @ design)[col, col])
            t = beta[col] / se
            best = max(best, abs(t) if two_sided else t)
        null[k] = best
    return null


def test_permutation_two_sample_matches_label_permutation_loop():
    rng = np.random.default_rng(5)
    n, n_vox, n_perm = 10, 6, 40
    group = np.arange(n) < 5
    maps = rng.standard_normal((n, n_vox))
    maps[group, 2] += 1.5
    res = permutation_fwe(maps, *two_sample_design(group), n_permutations=n_perm, seed=11)
    perm_rng = np.random.default_rng(11)
    perms = [np.arange(n)] + [perm_rng.permutation(n) for _ in range(n_perm - 1)]
    # permuting the rows of the data = giving subject perm[i] the label of subject i
    null = np.array([
        np.abs(stats.ttest_ind(maps[p][group], maps[p][~group]).statistic).max() for p in perms
    ])
    np.testing.assert_allclose(res.null_max, null, rtol=1e-10)
    expected_p = [(null >= abs(t) - 1e-9).mean() for t in res.t]
    np.testing.assert_allclose(res.p_fwe, expected_p)
    assert res.p_fwe.min() >= 1 / n_perm


@pytest.mark.parametrize("two_sided", [True, False])
def test_permutation_freedman_lane_matches_brute_force(two_sided):
    rng = np.random.default_rng(6)
    n, n_vox, n_perm = 12, 5, 30
    group = rng.permutation(np.arange(n) < 6)
    age = rng.normal(50, 10, n)
    maps = rng.standard_normal((n, n_vox)) + 0.05 * age[:, None]
    design, contrast = two_sample_design(group, age)
    res = permutation_fwe(maps, design, contrast, n_perm, seed=3, two_sided=two_sided)
    null = _brute_force_null(maps, design, contrast, n_perm, 3, two_sided)
    np.testing.assert_allclose(res.null_max, null, rtol=1e-8)
    stat = np.abs(res.t) if two_sided else res.t
    np.testing.assert_allclose(res.p_fwe, [(null >= s - 1e-9).mean() for s in stat])
    np.testing.assert_allclose(res.t, group_glm(maps, design, contrast)[0])


def test_permutation_correlation_matches_brute_force_and_chunks(monkeypatch):
    import rtfb.offline.stats as st

    rng = np.random.default_rng(7)
    n, n_vox, n_perm = 11, 4, 25
    vas = rng.uniform(0, 10, n)
    maps = rng.standard_normal((n, n_vox)) + 0.3 * vas[:, None]
    design, contrast = correlation_design(vas)
    monkeypatch.setattr(st, "_CHUNK_ELEMENTS", 3 * n * n_vox)  # several chunks
    res = permutation_fwe(maps, design, contrast, n_perm, seed=9)
    null = _brute_force_null(maps, design, contrast, n_perm, 9)
    np.testing.assert_allclose(res.null_max, null, rtol=1e-8)


def test_permutation_blocks_and_reproducibility():
    rng = np.random.default_rng(8)
    n = 12
    site = np.repeat([0, 1, 2], 4)
    group = np.tile([True, False], 6)
    maps = rng.standard_normal((n, 8))
    design, contrast = two_sample_design(group, np.column_stack([site == 1, site == 2]))
    a = permutation_fwe(maps, design, contrast, 50, seed=1, exchangeable=site)
    b = permutation_fwe(maps, design, contrast, 50, seed=1, exchangeable=site)
    c = permutation_fwe(maps, design, contrast, 50, seed=2, exchangeable=site)
    np.testing.assert_array_equal(a.null_max, b.null_max)
    assert not np.array_equal(a.null_max, c.null_max)
    assert np.all((a.p_fwe > 0) & (a.p_fwe <= 1))


def test_permutation_errors():
    maps = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(ValueError, match="one-sample"):
        permutation_fwe(maps, np.ones((6, 1)), [1.0], 10)
    with pytest.raises(ValueError, match="exchangeable"):
        permutation_fwe(maps, *two_sample_design(np.arange(6) < 3), 10, exchangeable=[0, 1])
    with pytest.raises(ValueError, match="n_permutations"):
        permutation_fwe(maps, *two_sample_design(np.arange(6) < 3), 0)
    with pytest.raises(TypeError, match="two_sided"):
        permutation_fwe(maps, *two_sample_design(np.arange(6) < 3), 10, two_sided="yes")


# ----------------------------------------------------------------------------- FDR


def test_fdr_matches_scipy():
    rng = np.random.default_rng(9)
    p = np.concatenate([rng.uniform(0, 1, 200), rng.uniform(0, 1e-3, 20), [0.0, 1.0, 0.5, 0.5]])
    rng.shuffle(p)
    reject, q = fdr_bh(p, 0.05)
    np.testing.assert_allclose(q, stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    np.testing.assert_array_equal(reject, q <= 0.05)
    assert reject.sum() >= 20
    reject2, q2 = fdr_bh(p.reshape(8, 28))
    np.testing.assert_array_equal(q2.ravel(), q)


def test_fdr_errors():
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        fdr_bh([0.1, 1.2])
    with pytest.raises(ValueError, match="alpha"):
        fdr_bh([0.1], alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        fdr_bh([0.1, np.nan])


# ----------------------------------------------------------------------------- clusters


def test_cluster_table_two_blobs():
    stat = np.zeros((20, 20, 20))
    stat[2:5, 2:5, 2:5] = 3.0  # 27 voxels
    stat[3, 3, 3] = 5.0
    stat[12:14, 14:16, 10] = -4.0  # 4 voxels, negative
    stat[12, 15, 10] = -6.0
    stat[15, 15, 15] = 2.5  # diagonal neighbour of nothing: singleton
    stat[16, 16, 16] = 2.5  # corner-connected to the previous one (26-connectivity)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-20, -30, -10]
    table = cluster_table(stat, affine, threshold=2.0)
    assert list(table["size_voxels"]) == [27, 4, 2]
    assert list(table["cluster"]) == [1, 2, 3]
    assert list(table["sign"]) == [1, -1, 1]
    np.testing.assert_allclose(table["size_mm3"], [27 * 12, 4 * 12, 2 * 12])
    first, second = table.iloc[0], table.iloc[1]
    assert first["peak_value"] == 5.0 and second["peak_value"] == -6.0
    np.testing.assert_allclose(first[["peak_x", "peak_y", "peak_z"]], [-14, -24, -1])
    np.testing.assert_allclose(second[["peak_x", "peak_y", "peak_z"]], [4, 0, 20])
    np.testing.assert_allclose(first[["com_x", "com_y", "com_z"]], [-14, -24, -1])
    np.testing.assert_allclose(second[["com_x", "com_y", "com_z"]], [5, -1, 20])
    assert (first["peak_i"], first["peak_j"], first["peak_k"]) == (3, 3, 3)

    assert list(cluster_table(stat, affine, 2.0, min_size=3)["size_voxels"]) == [27, 4]
    assert list(cluster_table(stat, affine, 2.0, two_sided=False)["sign"]) == [1, 1]
    empty = cluster_table(stat, affine, 10.0)
    assert empty.empty and "peak_x" in empty.columns


def test_cluster_table_errors():
    with pytest.raises(ValueError, match="3 dimensions"):
        cluster_table(np.zeros((4, 4)), np.eye(4), 1.0)
    with pytest.raises(ValueError, match="affine"):
        cluster_table(np.zeros((4, 4, 4)), np.eye(3), 1.0)
    with pytest.raises(ValueError, match="threshold"):
        cluster_table(np.zeros((4, 4, 4)), np.eye(4), -1.0)


# ----------------------------------------------------------------------------- calibration


@pytest.mark.slow
def test_planted_effect_found():
    rng = np.random.default_rng(42)
    n, n_vox = 20, 500
    group = np.arange(n) < 10
    maps = fwe_bench.null_cohort(rng, n, n_vox, 2.0)
    region = np.zeros(n_vox, bool)
    region[200:230] = True
    maps[np.ix_(group, region)] += 3.0 * maps.std()  # Cohen d = 3
    age = rng.normal(45, 12, n)
    res = permutation_fwe(maps, *two_sample_design(group, age), 1000, seed=0)
    found = res.p_fwe <= 0.05
    assert found[region].mean() >= 0.7
    assert region[np.argmax(np.abs(res.t))]
    # FWE control allows a false positive in 5% of cohorts: tolerate a stray voxel
    assert found[~region].sum() <= 3
