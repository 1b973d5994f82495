"""FeedbackMapper against hand-computed values."""

import math

import numpy as np
import pytest

from rtfb.feedback.mapping import FeedbackMapper


def test_before_baseline_returns_none():
    m = FeedbackMapper()
    assert m.transform(5.0) is None
    assert m.baseline_ is None and m.value_ is None


@pytest.mark.parametrize("kw, baseline, metric, expected", [
    ({}, 100.0, 100.0, 0.5),                             # no change: half bar
    ({}, 100.0, 110.0, 0.55),                            # +10 %: 0.5 + 0.5 * 0.1
    ({}, 100.0, 90.0, 0.45),
    ({"direction": "down"}, 100.0, 90.0, 0.55),          # decrease rewarded
    ({"direction": "down"}, 100.0, 110.0, 0.45),
    ({"scale": 0.2}, 100.0, 110.0, 0.75),                # 0.1 / 0.2 = 0.5 -> 0.75
    ({"scale": 0.2}, 100.0, 130.0, 1.0),                 # 1.25 clipped
    ({"scale": 0.2}, 100.0, 60.0, 0.0),                  # -0.5 -> clipped at 0
    ({"clip": (0.1, 0.9)}, 100.0, 300.0, 0.9),
    ({"clip": (0.1, 0.9)}, 100.0, 0.0, 0.1),
    ({}, -2.0, -1.0, 0.75),                              # (-1 + 2) / |-2| = 0.5
    ({"direction": "down"}, -2.0, -1.0, 0.25),
    ({}, 0.0, 0.2, 0.6),                                 # zero baseline: absolute change
    ({"direction": "down", "scale": 0.5}, 0.0, 0.2, 0.3),  # -0.2 / 0.5 = -0.4 -> 0.3
])
def test_transform_hand_computed(kw, baseline, metric, expected):
    m = FeedbackMapper(**kw).set_baseline(baseline)
    assert m.transform(metric) == pytest.approx(expected, abs=1e-12)


def test_smoothing_weights_new_value():
    m = FeedbackMapper(smoothing=0.5).set_baseline(100.0)
    assert m.transform(110.0) == pytest.approx(0.55)          # first value as is
    assert m.transform(130.0) == pytest.approx(0.5 * 0.65 + 0.5 * 0.55)  # 0.60
    assert m.transform(100.0) == pytest.approx(0.5 * 0.5 + 0.5 * 0.60)  # 0.55
    assert m.value_ == pytest.approx(0.55)


def test_smoothing_applies_after_clipping():
    m = FeedbackMapper(scale=0.1, smoothing=0.25).set_baseline(1.0)
    assert m.transform(1.0) == 0.5
    assert m.transform(5.0) == pytest.approx(0.25 * 1.0 + 0.75 * 0.5)  # clipped 1.0 first


def test_nan_gives_none_and_keeps_state():
    m = FeedbackMapper(smoothing=0.5).set_baseline(100.0)
    m.transform(110.0)
    assert m.transform(math.nan) is None
    assert m.transform(np.float32("nan")) is None
    assert m.value_ == pytest.approx(0.55)
    assert m.transform(90.0) == pytest.approx(0.5 * 0.45 + 0.5 * 0.55)


def test_reset_and_baseline_from_values():
    m = FeedbackMapper(smoothing=0.5).set_baseline([98.0, np.nan, 102.0, 100.0])
    assert m.baseline_ == pytest.approx(100.0)
    m.transform(120.0)
    m.reset()
    assert m.transform(110.0) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="no finite"):
        m.set_baseline([np.nan, np.inf])
    with pytest.raises(ValueError, match="1D"):
        m.set_baseline(np.ones((2, 2)))


@pytest.mark.parametrize("kw, err", [
    ({"direction": "sideways"}, ValueError),
    ({"scale": 0}, ValueError),
    ({"scale": "1"}, TypeError),
    ({"clip": (0.5, 0.5)}, ValueError),
    ({"clip": (-0.1, 1)}, ValueError),
    ({"clip": 1}, ValueError),
    ({"smoothing": 0}, ValueError),
    ({"smoothing": 1.5}, ValueError),
    ({"target": 1.2}, ValueError),
])
def test_invalid_parameters(kw, err):
    with pytest.raises(err):
        FeedbackMapper(**kw)


def test_transform_rejects_non_numbers():
    m = FeedbackMapper().set_baseline(1.0)
    with pytest.raises(TypeError):
        m.transform("1.0")
    assert "direction='up'" in repr(m)


def test_difference_change_for_metrics_near_zero():
    from rtfb.feedback.mapping import FeedbackMapper

    mapper = FeedbackMapper(direction="down", scale=0.3, change="difference").set_baseline(0.02)
    # z drops by 0.15 below a baseline of 0.02: half of `scale` -> 0.5 + 0.25
    assert mapper.transform(-0.13) == pytest.approx(0.75)
    relative = FeedbackMapper(direction="down", scale=0.3).set_baseline(0.02)
    assert relative.transform(-0.13) == 1.0  # -750 %: clipped, why "difference" exists
    with pytest.raises(ValueError, match="'change' parameter: 'ratio'"):
        FeedbackMapper(change="ratio")
