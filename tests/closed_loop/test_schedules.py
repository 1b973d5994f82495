"""Feedback schedules in closed loop: intermittent, sham, shaping, ROI difference, ROI-to-ROI FC.

Each runs protocol -> virtual participant -> stream -> watcher -> session -> ZeroMQ ->
headless display (a short 160-volume run on a small grid).
"""

import json

import numpy as np
import pytest

from tests.closed_loop._loop import (
    block_contrasts,
    predicted_bar,
    recorded,
    run_loop,
    truth_metric,
    write_protocol,
)

BLOCKS = [("baseline", 40, False)] + [("regulate", 30, True), ("rest", 30, False)] * 2
ALFF = ('kind = "alff"\nroi = "insula"\nwindow = 20\nband = [0.01, 0.1]',
        'baseline = "block:baseline"\ndirection = "down"\nchange = "relative"\nscale = 0.3\n')


def _shown(loop):
    return {v["index"]: v["feedback"] for v in loop["record"].volumes}


def _display_values(loop):
    out = {}
    for r in loop["display"].messages:
        if r.topic == "feedback":
            m = r.message
            out[m["volume_index"]] = (m["value"], m["display"]["show_bar"], m["target"])
    return out


def test_intermittent_end_of_block(tmp_path):
    metric, feedback = ALFF
    path = write_protocol(tmp_path, metric=metric, blocks=BLOCKS,
                          feedback=feedback + 'schedule = "intermittent"\nevery = 0')
    loop = run_loop(tmp_path, path, "responder")
    protocol = loop["protocol"]
    ends = {b.stop - 1 for b in protocol.blocks if b.feedback}
    shown = _shown(loop)
    assert {i for i, v in shown.items() if v is not None} == ends
    for v in loop["record"].volumes:  # the value shown is the real one at that volume
        if v["index"] in ends:
            assert v["feedback"] == v["feedback_value"]
    display = _display_values(loop)
    assert {i for i, (_, bar, _) in display.items() if bar} == ends
    # the end-of-block bar is where the truth and the mapping put it
    pred = predicted_bar(loop, truth_metric(loop))
    for i in sorted(ends):
        assert shown[i] == pytest.approx(pred[i], abs=0.15), (i, shown[i], pred[i])
    assert min(shown[i] for i in ends) > 0.6  # the responder's effect is visible


def test_intermittent_every_k(tmp_path):
    metric, feedback = ALFF
    path = write_protocol(tmp_path, metric=metric, blocks=BLOCKS,
                          feedback=feedback + 'schedule = "intermittent"\nevery = 10')
    loop = run_loop(tmp_path, path, "non-responder")
    starts = [b.start for b in loop["protocol"].blocks if b.feedback]
    expected = {s + k for s in starts for k in (9, 19, 29)}
    assert {i for i, v in _shown(loop).items() if v is not None} == expected


@pytest.mark.slow
def test_sham_shows_another_sessions_series_blind(tmp_path):
    metric, feedback = ALFF
    first = tmp_path / "first"
    first.mkdir()
    source = run_loop(first, write_protocol(first, metric=metric, blocks=BLOCKS,
                                            feedback=feedback), "responder", seed=1)
    second = tmp_path / "second"
    second.mkdir()
    sham_path = write_protocol(second, metric=metric, blocks=BLOCKS,
                               feedback=feedback + f'sham = "{first / "record"}"')
    loop = run_loop(second, sham_path, "non-responder", seed=2)
    src, shown = _shown(source), _shown(loop)
    assert shown == src  # volume by volume, what the other session showed
    assert any(v is not None for v in shown.values())
    own = recorded(loop, "feedback_value")  # the real (non-responder) value is recorded
    assert np.nanstd(own) > 0 and not np.allclose(np.nan_to_num(own), [
        np.nan if v is None else v for v in src], equal_nan=True)
    # blinding: the messages look exactly like a real session's; allocation only in record
    real_keys = {tuple(sorted(m["message"])) for m in source["record"].messages}
    sham_keys = {tuple(sorted(m["message"])) for m in loop["record"].messages}
    assert sham_keys == real_keys
    assert "sham" not in json.dumps([m["message"] for m in loop["record"].messages])
    info = json.loads((second / "record" / "session.json").read_text())
    assert info["feedback_schedule"]["allocation"] == "sham"
    src_info = json.loads((first / "record" / "session.json").read_text())
    assert src_info["feedback_schedule"]["allocation"] == "real"


@pytest.mark.slow
def test_shaping_adapts_within_and_across_runs(tmp_path):
    metric, feedback = ALFF
    shaping = feedback + "target = 0.6\nshaping = true\nshaping_step = 0.1\n"
    run1 = tmp_path / "run1"
    run1.mkdir()
    loop1 = run_loop(run1, write_protocol(run1, metric=metric, blocks=BLOCKS,
                                          feedback=shaping), "responder")

    def check_rule(loop, start):
        target = start
        for b in loop["protocol"].blocks:
            vols = loop["record"].volumes[b.start:b.stop]
            assert all(v["target"] == pytest.approx(target) for v in vols), b
            if not b.feedback:
                continue
            shown = [v["feedback"] for v in vols if v["feedback"] is not None]
            rate = np.mean([s >= target for s in shown])
            target = min(1.0, target + 0.1) if rate >= 0.5 else max(0.0, target - 0.1)
        return target

    final = check_rule(loop1, 0.6)
    assert len({round(v["target"], 9) for v in loop1["record"].volumes}) > 1  # it adapted
    run2 = tmp_path / "run2"
    run2.mkdir()
    loop2 = run_loop(run2, write_protocol(
        run2, metric=metric, blocks=BLOCKS,
        feedback=shaping + f'shaping_from = "{run1 / "record"}"'), "responder", run=2)
    assert loop2["record"].volumes[0]["target"] == pytest.approx(final)
    check_rule(loop2, final)


def test_roi_difference_psc(tmp_path):
    path = write_protocol(
        tmp_path, blocks=BLOCKS, preprocess='glm = "none"',
        metric='kind = "psc"\nroi = "insula"\nsubtract_roi = "target"\nwindow = 30',
        feedback='baseline = "block:baseline"\ndirection = "up"\nchange = "difference"\n'
                 'scale = 1.0')
    loop = _run_and_check_contrast(tmp_path, path, {"psc_change": 5.0})
    for v in loop["record"].volumes:
        m = v["metrics"]
        if m["psc"] is not None:
            assert m["psc"] == pytest.approx(m["psc_insula"] - m["psc_target"], abs=1e-12)


def test_roi_to_roi_connectivity(tmp_path):
    path = write_protocol(
        tmp_path, blocks=BLOCKS,
        metric='kind = "roi_fc"\nseed = "seed"\ntarget = "target"\nwindow = 30',
        feedback='baseline = "block:baseline"\ndirection = "up"\nchange = "difference"\n'
                 'scale = 0.6')
    _run_and_check_contrast(tmp_path, path, {"fc_z_change": 1.0}, max_motion=0.3)


def _run_and_check_contrast(tmp_path, path, model_kwargs, **kw):
    loop = run_loop(tmp_path, path, "responder", model_kwargs=model_kwargs, **kw)
    rec = block_contrasts(loop["protocol"], recorded(loop, "feedback_value"),
                          baseline_level=0.5)
    pred = block_contrasts(loop["protocol"], predicted_bar(loop, truth_metric(loop)),
                           baseline_level=0.5)
    for (r_reg, r_before), (p_reg, p_before) in zip(rec, pred, strict=True):
        assert (r_reg - r_before) == pytest.approx(p_reg - p_before, abs=0.12), (rec, pred)
    assert pred[0][0] - pred[0][1] > 0.15 and rec[0][0] - rec[0][1] > 0.1, (rec, pred)
    return loop
