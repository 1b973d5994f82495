"""Protocol keys of the feedback schedules and the new fed-back metrics (validated)."""

import copy

import pytest

from rtfb.config import ProtocolError, load_protocol
from tests.config.test_protocol import FULL, MONITOR, write


def _with(tmp_path, feedback=None, metric=None, base=FULL):
    d = copy.deepcopy(base)
    d["feedback"].update(feedback or {})
    if metric is not None:
        d["metric"] = metric
    return load_protocol(write(tmp_path, d))


def _record(folder):
    folder.mkdir()
    (folder / "volumes.jsonl").write_text('{"index": 0, "feedback": null, "target": 0.8}\n')
    return folder


def test_defaults_are_continuous_real_feedback(tmp_path):
    fb = _with(tmp_path).feedback
    assert (fb.schedule, fb.every, fb.sham, fb.shaping) == ("continuous", 0, None, False)


def test_intermittent_every(tmp_path):
    fb = _with(tmp_path, {"schedule": "intermittent", "every": 10}).feedback
    assert (fb.schedule, fb.every) == ("intermittent", 10)


def test_sham_and_shaping_from_resolve_records(tmp_path):
    rec = _record(tmp_path / "previous")
    fb = _with(tmp_path, {"sham": "previous"}).feedback
    assert fb.sham == rec.resolve()
    fb = _with(tmp_path, {"shaping": True, "shaping_from": str(rec), "shaping_step": 0.1}
               ).feedback
    assert fb.shaping and fb.shaping_from == rec.resolve() and fb.shaping_step == 0.1


def test_roi_difference_and_roi_fc(tmp_path):
    m = _with(tmp_path, metric={"kind": "psc", "roi": "a", "subtract_roi": "b",
                                "window": 10}).metric
    assert m.subtract_roi == "b" and m.rois == ("a", "b")
    m = _with(tmp_path, {"change": "difference"},
              metric={"kind": "roi_fc", "seed": "a", "target": "b", "window": 30}).metric
    assert m.kind == "roi_fc" and m.rois == ("a", "b")


@pytest.mark.parametrize(("feedback", "metric", "key", "match"), [
    ({"schedule": "sometimes"}, None, "feedback.schedule", "'continuous', 'intermittent'"),
    ({"every": 5}, None, "feedback.every", "schedule = 'intermittent'"),
    ({"schedule": "intermittent", "every": 41}, None, "feedback.every",
     "longer than every feedback block"),
    ({"schedule": "intermittent", "every": -1}, None, "feedback.every", "integer >= 0"),
    ({"sham": "nowhere"}, None, "feedback.sham", "not a recorded session folder"),
    ({"sham": 3}, None, "feedback.sham", "path of a recorded session folder"),
    ({"shaping_step": 0.1}, None, "feedback.shaping_step", "shaping = true"),
    ({"shaping": True, "shaping_step": 0.9}, None, "feedback.shaping_step", "(0, 0.5]"),
    ({"shaping": True, "shaping_success": 0}, None, "feedback.shaping_success", "(0, 1]"),
    ({}, {"kind": "alff", "roi": "a", "subtract_roi": "a"}, "metric.subtract_roi",
     "must differ"),
    ({}, {"kind": "alff", "roi": "a", "subtract_roi": "c"}, "metric.subtract_roi",
     "not defined"),
    ({}, {"kind": "roi_fc", "seed": "a", "target": "b", "subtract_roi": "a"},
     "metric.subtract_roi", "kind is psc, alff, falff or reho"),
    ({}, {"kind": "roi_fc", "roi": "a"}, "metric.roi", "use seed and target"),
])
def test_bad_keys(tmp_path, feedback, metric, key, match):
    with pytest.raises(ProtocolError) as info:
        _with(tmp_path, feedback, metric)
    assert info.value.key == key, str(info.value)
    assert match in str(info.value)


def test_sham_needs_participant_feedback(tmp_path):
    _record(tmp_path / "previous")
    with pytest.raises(ProtocolError, match="feedback.sham: a monitoring protocol"):
        _with(tmp_path, {"sham": "previous"}, base=MONITOR)


def test_sham_with_shaping_is_refused(tmp_path):
    _record(tmp_path / "previous")
    with pytest.raises(ProtocolError, match="feedback.shaping: true together with sham"):
        _with(tmp_path, {"sham": "previous", "shaping": True})
