import numpy as np
import pytest

from rtfb.preprocess.design import (
    DriftModel,
    NuisanceDesign,
    drift_regressors,
    drift_row,
    motion_regressors,
)
from rtfb.preprocess.nuisance import IncrementalGLM

# ----------------------------------------------------------------------------- oracle


def lstsq_residuals(X, Y):
    B, _, rank, _ = np.linalg.lstsq(X, Y, rcond=None)
    return Y - X @ B, B, rank


def check_against_lstsq(glm, X, Y, tol=1e-8):
    """Residuals, newest cleaned volume, rank and coefficients vs numpy.linalg.lstsq."""
    ref, B, rank = lstsq_residuals(X, Y)
    assert glm.rank_ == rank
    assert glm.rank_deficient_ == (rank < X.shape[1])
    res = glm.residuals()
    if rank < X.shape[0]:  # residual space not empty: relative error of the residuals
        scale = np.linalg.norm(ref)
    else:  # exact fit: residuals are 0, measure against the data's variation
        scale = max(np.linalg.norm(Y - Y.mean(axis=0)), 1e-3 * np.linalg.norm(Y))
        assert np.linalg.norm(ref) <= tol * scale
    assert np.linalg.norm(res - ref) <= tol * scale
    assert np.linalg.norm(glm.cleaned_ - ref[-1]) <= tol * scale
    np.testing.assert_allclose(glm.coef_, B.T, rtol=0, atol=1e-6 * np.abs(B).max())


def realistic_run(rng, n_volumes, n_voxels=40, zero_early=True, derivatives=True):
    """Legendre drift + motion (+ derivatives) and data ~1000 with drift and motion effects."""
    drift = drift_regressors(n_volumes, "legendre", order=2)
    motion = np.cumsum(rng.normal(0, 0.05, (n_volumes, 6)), axis=0)
    if zero_early:  # parameters still exactly 0 at the start of the run (rank deficient)
        motion[:10, 2] = 0.0
        motion[:20, 4] = 0.0
    X = np.hstack([drift, motion_regressors(motion, derivatives=derivatives)])
    Y = (1000 + rng.normal(0, 10, (n_volumes, n_voxels))
         + drift[:, 1:] @ rng.normal(0, 15, (2, n_voxels))
         + motion @ rng.normal(0, 20, (6, n_voxels)))
    return X, Y


# ------------------------------------------------------------------ design helpers


def test_legendre_drift_matches_numpy():
    n = 37
    X = drift_regressors(n, "legendre", order=3)
    s = np.linspace(-1, 1, n)
    expected = np.stack([np.ones(n), s, (3 * s**2 - 1) / 2, (5 * s**3 - 3 * s) / 2], axis=1)
    np.testing.assert_allclose(X, expected, atol=1e-12)
    model = DriftModel(n, "legendre", 3)
    for t in (0, 5, n - 1):
        np.testing.assert_allclose(model.row(t), X[t])
        np.testing.assert_allclose(drift_row(t, n, "legendre", 3), X[t])
    assert model.names[0] == "constant" and model.n_regressors == 4


def test_polynomial_same_span_as_legendre():
    n = 30
    P = drift_regressors(n, "polynomial", order=2)
    L = drift_regressors(n, "legendre", order=2)
    np.testing.assert_allclose(P[:, 0], 1.0)
    np.testing.assert_allclose(L - P @ np.linalg.lstsq(P, L, rcond=None)[0], 0, atol=1e-12)


def test_cosine_drift_periods_and_orthogonality():
    n, tr, cutoff = 200, 2.0, 128.0
    X = drift_regressors(n, "cosine", cutoff_s=cutoff, tr=tr)
    k_max = int(np.floor(2 * n * tr / cutoff))  # 6: every period 2 n tr / k >= 128 s
    assert X.shape == (n, 1 + k_max)
    np.testing.assert_allclose(X[:, 0], 1.0)
    t = np.arange(n)
    for k in range(1, k_max + 1):
        np.testing.assert_allclose(X[:, k], np.cos(np.pi * k * (t + 0.5) / n), atol=1e-12)
        assert 2 * n * tr / k >= cutoff
    gram = X.T @ X  # DCT-II columns are orthogonal
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9)
    # rows produced one at a time are the rows of the matrix
    model = DriftModel(n, "cosine", cutoff_s=cutoff, tr=tr)
    np.testing.assert_allclose(np.stack([model.row(i) for i in range(n)]), X)


def test_drift_bad_parameters():
    with pytest.raises(ValueError, match="kind"):
        drift_regressors(10, "spline")
    with pytest.raises(ValueError, match="tr"):
        drift_regressors(10, "cosine")
    with pytest.raises(ValueError, match="order"):
        drift_regressors(10, "legendre", order=-1)
    with pytest.raises(ValueError, match="n_expected"):
        drift_row(0, 1)
    with pytest.raises(ValueError, match="t must be >= 0"):
        DriftModel(10).row(-1)


def test_motion_regressors_derivatives():
    params = np.arange(18, dtype=float).reshape(3, 6) ** 2
    out = motion_regressors(params, derivatives=True)
    assert out.shape == (3, 12)
    np.testing.assert_array_equal(out[:, :6], params)
    np.testing.assert_array_equal(out[0, 6:], 0)
    np.testing.assert_array_equal(out[2, 6:], params[2] - params[1])
    with pytest.raises(ValueError, match="params"):
        motion_regressors(np.zeros((3, 5)))


def test_nuisance_design_rows():
    rng = np.random.default_rng(1)
    n = 12
    motion = rng.normal(size=(n, 6))
    extra = rng.normal(size=(n, 2))
    design = NuisanceDesign(DriftModel(n, "legendre", 2), derivatives=True,
                            n_extra=2)
    rows = np.stack([design.row(t, motion[t], extra[t]) for t in range(n)])
    expected = np.hstack([drift_regressors(n), motion_regressors(motion, True), extra])
    np.testing.assert_allclose(rows, expected)
    assert design.n_regressors == 17
    assert design.names_[:4] == ["constant", "legendre1", "legendre2", "tx"]
    with pytest.raises(ValueError, match="motion"):
        design.row(n, None, extra[0])
    with pytest.raises(ValueError, match="extra"):
        design.row(n, motion[0], np.zeros(3))
    with pytest.raises(ValueError, match="motion contains"):
        design.row(n, np.full(6, np.nan), extra[0])


# --------------------------------------------------------------------- GLM vs lstsq


@pytest.mark.parametrize("mode", ["cumulative", "sliding"])
def test_glm_equals_lstsq_every_step(mode):
    rng = np.random.default_rng(7)
    window = 20
    n_volumes = 3 * window + 7  # the window slides over more than 3 windows
    X, Y = realistic_run(rng, n_volumes)
    assert X.shape[1] == 15  # 3 drift + 6 motion + 6 derivatives
    glm = IncrementalGLM(mode, window if mode == "sliding" else None, keep_data=True)
    saw_deficient = False
    for t in range(n_volumes):
        glm.partial_fit(Y[t], X[t])
        lo = 0 if mode == "cumulative" else max(0, t + 1 - window)
        assert glm.n_rows_ == t + 1 - lo
        check_against_lstsq(glm, X[lo:t + 1], Y[lo:t + 1])
        saw_deficient |= glm.rank_deficient_
    assert saw_deficient  # the warm-up was rank deficient (fewer rows, zero columns)
    assert not glm.rank_deficient_
    lo = n_volumes - glm.n_rows_
    np.testing.assert_allclose(glm.design_, X[lo:])
    xty = Y[lo:].T @ X[lo:]  # derived from the whitened sums: accurate normwise
    assert np.linalg.norm(glm.xty_ - xty) <= 1e-9 * np.linalg.norm(xty)
    np.testing.assert_allclose(glm.xtx_, X[lo:].T @ X[lo:], rtol=1e-9)


def test_sliding_rank_drops_when_column_leaves_window():
    # a column that is nonzero only in a burst: rank falls when the burst leaves the window
    rng = np.random.default_rng(3)
    n, window = 50, 12
    X = np.hstack([drift_regressors(n, order=1), rng.normal(size=(n, 2)), np.zeros((n, 1))])
    X[15:19, -1] = rng.normal(size=4)
    Y = 500 + rng.normal(0, 5, (n, 25)) + X @ rng.normal(0, 3, (X.shape[1], 25))
    glm = IncrementalGLM("sliding", window)
    ranks = []
    for t in range(n):
        glm.partial_fit(Y[t], X[t])
        lo = max(0, t + 1 - window)
        check_against_lstsq(glm, X[lo:t + 1], Y[lo:t + 1])
        ranks.append(glm.rank_)
    assert ranks[20] == 5 and ranks[-1] == 4


def test_exactly_collinear_columns():
    # a duplicated (scaled) column and a motion parameter constant at a nonzero value
    rng = np.random.default_rng(11)
    n = 40
    base = np.hstack([drift_regressors(n, order=2), rng.normal(size=(n, 2))])
    X = np.hstack([base, 3 * base[:, [3]], np.full((n, 1), 0.7)])
    Y = 1000 + rng.normal(0, 10, (n, 15)) + base @ rng.normal(size=(5, 15))
    for mode, window in (("cumulative", None), ("sliding", 15)):
        glm = IncrementalGLM(mode, window, keep_data=True)
        for t in range(n):
            glm.partial_fit(Y[t], X[t])
            lo = 0 if window is None else max(0, t + 1 - window)
            check_against_lstsq(glm, X[lo:t + 1], Y[lo:t + 1])
            assert glm.rank_deficient_


def test_cumulative_residuals_with_caller_data_and_float32():
    rng = np.random.default_rng(5)
    X, Y = realistic_run(rng, 30, zero_early=False, derivatives=False)
    Y32 = Y.astype(np.float32)
    glm = IncrementalGLM()  # cumulative, data not kept
    for t in range(30):
        glm.partial_fit(Y32[t], X[t])
    ref, _, _ = lstsq_residuals(X, Y32.astype(float))
    res = glm.residuals(Y32)
    assert np.linalg.norm(res - ref) <= 1e-8 * np.linalg.norm(ref)
    with pytest.raises(ValueError, match="keep_data"):
        glm.residuals()
    with pytest.raises(ValueError, match="Y must have shape"):
        glm.residuals(Y[:-1])


def test_no_intercept_design():
    # the offset correction is exact even when the constant is not in the design
    rng = np.random.default_rng(2)
    n = 25
    X = rng.normal(size=(n, 3))
    Y = 1000 + rng.normal(0, 10, (n, 8))
    for mode, window in (("cumulative", None), ("sliding", 10)):
        glm = IncrementalGLM(mode, window, keep_data=True)
        for t in range(n):
            glm.partial_fit(Y[t], X[t])
            lo = 0 if window is None else max(0, t + 1 - window)
            check_against_lstsq(glm, X[lo:t + 1], Y[lo:t + 1])


def test_long_sliding_run_stays_accurate():
    # many window turnovers with a drifting baseline: running sums do not degrade
    rng = np.random.default_rng(9)
    n, window = 400, 30
    X, Y = realistic_run(rng, n, n_voxels=10, zero_early=False)
    glm = IncrementalGLM("sliding", window)
    for t in range(n):
        glm.partial_fit(Y[t], X[t])
    check_against_lstsq(glm, X[-window:], Y[-window:])


# ---------------------------------------------------------------------- bad inputs


def test_zero_design_and_single_volume():
    glm = IncrementalGLM()
    y = np.array([3.0, 4.0, 5.0])
    glm.partial_fit(y, np.zeros(2))
    assert glm.rank_ == 0 and glm.rank_deficient_
    np.testing.assert_allclose(glm.cleaned_, y)  # nothing fitted
    np.testing.assert_allclose(glm.coef_, 0)
    glm.partial_fit(y + 1, np.array([1.0, 0.0]))
    assert glm.rank_ == 1
    np.testing.assert_allclose(glm.residuals(np.stack([y, y + 1])), [y, np.zeros(3)],
                               atol=1e-12)


def test_bad_inputs_raise_and_leave_state_unchanged():
    rng = np.random.default_rng(4)
    X, Y = realistic_run(rng, 30, n_voxels=12, zero_early=False, derivatives=False)
    glm = IncrementalGLM("sliding", 10)
    for t in range(15):
        glm.partial_fit(Y[t], X[t])
    bad_y = Y[15].copy()
    bad_y[3] = np.nan
    with pytest.raises(ValueError, match="y contains 1 NaN"):
        glm.partial_fit(bad_y, X[15])
    with pytest.raises(ValueError, match="x contains"):
        glm.partial_fit(Y[15], np.where(np.arange(9) == 2, np.inf, X[15]))
    with pytest.raises(ValueError, match=r"x \(design row\) must have shape \(9,\)"):
        glm.partial_fit(Y[15], X[15, :-1])
    with pytest.raises(ValueError, match=r"y must have shape \(12,\)"):
        glm.partial_fit(Y[15, :-1], X[15])
    assert glm.n_seen_ == 15
    for t in range(15, 30):
        glm.partial_fit(Y[t], X[t])
    check_against_lstsq(glm, X[-10:], Y[-10:])


def test_bad_parameters():
    with pytest.raises(ValueError, match="window"):
        IncrementalGLM("sliding").partial_fit(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="window must be None"):
        IncrementalGLM("cumulative", 5).partial_fit(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="mode"):
        IncrementalGLM("expanding").partial_fit(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="y must be a non-empty 1-D"):
        IncrementalGLM().partial_fit(np.ones((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="partial_fit first"):
        IncrementalGLM().residuals()
