import numpy as np
import pytest

from rtfb.preprocess.fd import FramewiseDisplacement, framewise_displacement


def loop_oracle(params, radius=50.0):
    fd = [0.0]
    for prev, cur in zip(params[:-1], params[1:], strict=True):
        total = 0.0
        for i in range(3):
            total += abs(cur[i] - prev[i])
        for i in range(3, 6):
            total += radius * abs(cur[i] - prev[i]) * np.pi / 180.0
        fd.append(total)
    return np.array(fd)


def test_hand_computed_cases():
    params = np.array([
        [0, 0, 0, 0, 0, 0],
        [1, -2, 0.5, 0, 0, 0],  # translations only: 1 + 2 + 0.5
        [1, -2, 0.5, 1, 0, 0],  # 1 degree: 50 * pi / 180
        [0, -2, 0.5, 1, -2, 0.5],  # 1 mm + (2 + 0.5) degrees
        [0, -2, 0.5, 1, -2, 0.5],  # no motion
    ], dtype=float)
    expected = [0.0, 3.5, 50 * np.pi / 180, 1 + 2.5 * 50 * np.pi / 180, 0.0]
    np.testing.assert_allclose(framewise_displacement(params), expected, rtol=1e-12)
    # the radius scales only the rotation part
    np.testing.assert_allclose(framewise_displacement(params, radius=80.0)[2],
                               80 * np.pi / 180, rtol=1e-12)


def test_random_matches_loop_oracle(rng):
    params = np.cumsum(rng.normal(0, 0.2, (30, 6)), axis=0)
    np.testing.assert_allclose(framewise_displacement(params, 45.0),
                               loop_oracle(params, 45.0), rtol=1e-12)
    assert framewise_displacement(params[:1]).tolist() == [0.0]


def test_incremental_equals_batch_and_flags(rng):
    params = np.cumsum(rng.normal(0, 0.15, (40, 6)), axis=0)
    params[20] += 2.0  # a jerk: flagged on the way in and on the way back
    batch = framewise_displacement(params)
    state = FramewiseDisplacement(threshold=0.5)
    flags = []
    for t, p in enumerate(params):
        assert state.partial_fit(p) is state
        assert state.fd_ == pytest.approx(batch[t], rel=1e-12, abs=1e-15)
        assert state.censored_ == (batch[t] > 0.5)
        flags.append(state.censored_)
    assert state.n_seen_ == 40
    assert state.n_censored_ == int((batch > 0.5).sum()) == sum(flags)
    assert flags[20] and flags[21] and not flags[0]


def test_threshold_is_strict():
    state = FramewiseDisplacement(threshold=1.0)
    state.partial_fit(np.zeros(6)).partial_fit([1.0, 0, 0, 0, 0, 0])
    assert state.fd_ == 1.0 and not state.censored_


def test_bad_inputs():
    with pytest.raises(ValueError, match="params must have shape"):
        framewise_displacement(np.zeros((5, 3)))
    bad = np.zeros((4, 6))
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="params contains 1 NaN"):
        framewise_displacement(bad)
    with pytest.raises(ValueError, match="radius"):
        framewise_displacement(np.zeros((3, 6)), radius=0)
    state = FramewiseDisplacement()
    state.partial_fit(np.zeros(6))
    with pytest.raises(ValueError, match="params6 must have shape"):
        state.partial_fit(np.zeros(7))
    with pytest.raises(ValueError, match="params6 contains"):
        state.partial_fit([np.nan, 0, 0, 0, 0, 0])
    assert state.n_seen_ == 1  # unchanged by the rejected inputs
    with pytest.raises(ValueError, match="threshold"):
        FramewiseDisplacement(threshold=-1).partial_fit(np.zeros(6))
