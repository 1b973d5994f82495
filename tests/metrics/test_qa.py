"""Running tSNR and DVARS spikes against scipy / numpy written out independently."""

import numpy as np
import pytest
from scipy import stats

from rtfb.metrics.qa import RunningQA, dvars, tsnr


def _series(rng, n_vox=300, n=60):
    base = rng.uniform(200, 1000, n_vox)[:, None]
    return (base + rng.normal(0, 1, (n_vox, n)) * rng.uniform(2, 20, n_vox)[:, None]
            ).astype(np.float32)


def test_batch_tsnr_matches_scipy_variation(rng):
    ts = _series(rng)
    expected = 1.0 / stats.variation(ts.astype(float), axis=1, ddof=1)
    np.testing.assert_allclose(tsnr(ts), expected, rtol=1e-5)
    assert np.isnan(tsnr(np.ones((2, 5)))).all()  # zero variance
    with pytest.raises(ValueError, match="at least 2"):
        tsnr(np.ones((3, 1)))


def test_running_tsnr_equals_batch_on_volumes_so_far(rng):
    ts = _series(rng)
    roi = np.array([3, 10, 11, 50, 299])
    qa = RunningQA({"roi": roi})
    for t in range(ts.shape[1]):
        qa.partial_fit(ts[:, t])
        if t == 0:
            assert qa.tsnr_ == {"brain": None, "roi": None} and qa.dvars_ is None
            continue
        x = ts[:, : t + 1].astype(float)
        oracle = 1.0 / stats.variation(x, axis=1, ddof=1)
        assert qa.tsnr_["brain"] == pytest.approx(oracle.mean(), rel=1e-9)
        assert qa.tsnr_["roi"] == pytest.approx(oracle[roi].mean(), rel=1e-9)
        d = np.sqrt(np.mean((x[:, -1] - x[:, -2]) ** 2))
        assert qa.dvars_ == pytest.approx(d, rel=1e-9)
    np.testing.assert_allclose(dvars(ts)[-1], qa.dvars_, rtol=1e-6)
    assert qa.n_ == ts.shape[1]


def test_spike_flags_only_the_corrupted_volume(rng):
    ts = _series(rng, n=80)
    ts[:, 40] += rng.normal(0, 60, ts.shape[0]).astype(np.float32)  # one spike
    qa = RunningQA()
    spikes = []
    for t in range(ts.shape[1]):
        qa.partial_fit(ts[:, t])
        if qa.spike_:
            spikes.append(t)
    # the spike volume jumps up; the next one (back to normal) jumps down as much: DVARS
    # sees both transitions, like every DVARS-based detector
    assert spikes[0] == 40 and set(spikes) <= {40, 41}
    assert qa.n_spikes_ == len(spikes)
    summary = qa.summary()
    assert set(summary) == {"tsnr", "dvars", "dvars_z", "spike"}


def test_no_spikes_in_clean_noise(rng):
    qa = RunningQA()
    for x in _series(rng, n=200).T:
        qa.partial_fit(x)
    assert qa.n_spikes_ == 0


def test_checks(rng):
    qa = RunningQA({"roi": np.array([5])})
    with pytest.raises(ValueError, match="outside"):
        qa.partial_fit(np.ones(3))
    qa = RunningQA().partial_fit(np.ones(4))
    with pytest.raises(ValueError, match="expected 4"):
        qa.partial_fit(np.ones(5))
    with pytest.raises(ValueError, match="1D"):
        RunningQA().partial_fit(np.ones((2, 2)))
