"""``[metric] convention``: validated in the protocol, passed to the real-time ALFF state."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from rtfb.config import ProtocolError, load_protocol
from rtfb.metrics import alff, falff
from rtfb.session.metric_engine import MetricEngine

from .test_protocol import MINIMAL, MONITOR, write


def test_dpabi_convention_loads(tmp_path):
    d = copy.deepcopy(MINIMAL)
    d["metric"]["convention"] = "dpabi"
    assert load_protocol(write(tmp_path, d)).metric.convention == "dpabi"
    assert load_protocol(write(tmp_path, MINIMAL)).metric.convention == "rtfb"
    d = copy.deepcopy(MONITOR)  # ALFF in the maps
    d["metric"]["convention"] = "dpabi"
    assert load_protocol(write(tmp_path, d)).metric.convention == "dpabi"


def test_bad_or_useless_convention_rejected(tmp_path):
    d = copy.deepcopy(MINIMAL)
    d["metric"]["convention"] = "cpac"
    with pytest.raises(ProtocolError) as info:
        load_protocol(write(tmp_path, d))
    assert info.value.key == "metric.convention" and "'rtfb', 'dpabi'" in str(info.value)
    d["metric"] = {"kind": "reho", "roi": "a", "convention": "dpabi"}
    with pytest.raises(ProtocolError, match="only used when kind or maps include 'alff'"):
        load_protocol(write(tmp_path, d))
    # DPABI pads to the next power of two: a window of 5 at TR 2 s pads to 8 (bins 0.0625 Hz
    # apart) and has no bin in 0.01-0.05 Hz
    d["metric"] = {"kind": "alff", "roi": "a", "convention": "dpabi", "window": 5,
                   "band": [0.01, 0.05]}
    with pytest.raises(ProtocolError, match="too short for the band"):
        load_protocol(write(tmp_path, d))


@pytest.mark.parametrize("kind", ["alff", "falff"])
def test_engine_dpabi_alff_equals_batch(rng, kind):
    shape, window, n_total = (5, 4, 3), 20, 45
    mask = np.ones(shape, bool)
    roi = np.zeros(shape, bool)
    roi[1:3, 1:3, 1] = True
    series = 500 + np.cumsum(rng.normal(size=(n_total, mask.sum())), axis=0)
    engine = MetricEngine(kind, mask, {"a": roi}, roi="a", window=window, tr=2.0,
                          convention="dpabi", maps=("alff",) if kind == "falff" else ())
    func = alff if kind == "alff" else falff
    roi_cols = roi[mask]
    for t in range(n_total):
        value = engine.partial_fit(series[t])[kind]
        if t + 1 < window:
            assert np.isnan(value)
            continue
        win = series[t + 1 - window:t + 1, roi_cols].T
        assert value == pytest.approx(func(win, 2.0, convention="dpabi").mean(), rel=1e-9)
    # a different value from rtfb's definition on the same window (20 samples padded to 32)
    assert value != pytest.approx(func(win, 2.0).mean(), rel=1e-3)
