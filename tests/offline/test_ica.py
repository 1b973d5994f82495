import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from rtfb.offline.ica import GroupICA, dual_regression


def _planted(n_subjects=6, n_time=80, n_voxels=400, n_sources=3, noise=0.5, seed=0):
    """Sparse, non-Gaussian spatial maps shared by all subjects, independent time courses."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((n_sources, n_voxels))
    for k in range(n_sources):
        support = rng.choice(n_voxels, n_voxels // 8, replace=False)
        maps[k, support] = 1.0 + rng.exponential(1.0, support.size)
    subjects, courses = [], []
    for _ in range(n_subjects):
        tc = rng.standard_normal((n_time, n_sources))
        courses.append(tc)
        subjects.append(tc @ maps + noise * rng.standard_normal((n_time, n_voxels)) + 100.0)
    return subjects, maps, courses


def _match(estimated, truth):
    r = np.corrcoef(np.vstack([truth, estimated]))[: len(truth), len(truth):]
    return np.abs(r).max(axis=1), np.abs(r).argmax(axis=1), r


def test_group_ica_recovers_planted_maps():
    subjects, maps, _ = _planted()
    model = GroupICA(n_components=3, random_state=0).fit(subjects)
    assert model.components_.shape == (3, 400)
    best, idx, r = _match(model.components_, maps)
    assert np.all(best > 0.8), best
    assert len(set(idx)) == 3  # one component per planted map
    # Sign convention: heaviest tail positive -> positive correlation with the planted map.
    assert np.all(r[np.arange(3), idx] > 0)
    np.testing.assert_allclose(model.components_.std(axis=1), 1.0)
    assert model.explained_variance_ratio_.shape == (3,)


def test_dual_regression_subject_maps_and_timecourses():
    subjects, maps, courses = _planted(seed=1)
    model = GroupICA(n_components=3, random_state=0).fit(subjects)
    _, idx, _ = _match(model.components_, maps)
    assert model.subject_maps_.shape == (6, 3, 400)
    assert len(model.subject_timecourses_) == 6
    for s in range(6):
        for k in range(3):
            rmap = np.corrcoef(model.subject_maps_[s, idx[k]], maps[k])[0, 1]
            rtc = np.corrcoef(model.subject_timecourses_[s][:, idx[k]], courses[s][:, k])[0, 1]
            assert rmap > 0.8 and rtc > 0.8
    # transform on new subjects with the same maps.
    new, _, _ = _planted(n_subjects=2, n_time=60, seed=5)
    out = model.transform(new)
    assert out.shape == (2, 3, 400)
    np.testing.assert_allclose(model.transform(subjects), model.subject_maps_)
    assert [tc.shape for tc in model.timecourses(new)] == [(60, 3), (60, 3)]


def test_dual_regression_exact_on_noiseless_data():
    rng = np.random.default_rng(2)
    maps = rng.standard_normal((2, 50))
    tc = rng.standard_normal((30, 2))
    tc -= tc.mean(axis=0)
    x = tc @ maps
    est_tc, est_maps = dual_regression(x, maps)
    # Maps are centred over voxels before stage 1; the time courses remain exact here up to
    # the removal of the voxel-mean component, so compare by correlation.
    for k in range(2):
        assert np.corrcoef(est_tc[:, k], tc[:, k])[0, 1] > 0.99
    np.testing.assert_allclose(est_tc / est_tc.std(axis=0) @ est_maps, x, atol=1e-8)


def test_group_ica_errors():
    model = GroupICA(n_components=3)
    with pytest.raises(NotFittedError):
        model.transform([np.ones((10, 5))])
    with pytest.raises(ValueError, match="same number of voxels"):
        model.fit([np.ones((10, 5)), np.ones((10, 6))])
    with pytest.raises(ValueError, match="at least one"):
        model.fit([])
    with pytest.raises(ValueError, match="fewer than n_components"):
        model.fit([np.random.default_rng(0).standard_normal((2, 20))])
    with pytest.raises(ValueError, match=">= 1"):
        GroupICA(n_components=0).fit([np.ones((10, 5))])
    with pytest.raises(ValueError, match="NaN"):
        model.fit([np.full((10, 5), np.nan)])
    subjects, _, _ = _planted(n_subjects=2, n_voxels=100)
    fitted = GroupICA(n_components=3, random_state=0).fit(subjects)
    with pytest.raises(ValueError, match="voxels"):
        fitted.transform([np.ones((10, 99))])
