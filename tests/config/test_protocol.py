"""Protocol files -> validated frozen dataclasses (rtfb.config)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import re
import sys
from pathlib import Path

import pytest

from rtfb.config import (
    Block,
    FeedbackConfig,
    MetricConfig,
    MniSphere,
    OutputConfig,
    PreprocessConfig,
    Protocol,
    ProtocolError,
    RoiConfig,
    SessionConfig,
    load_protocol,
    loads_protocol,
    parse_protocol,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROTOCOLS = Path(__file__).resolve().parents[2] / "protocols"


# ----------------------------------------------------------------------- a tiny TOML writer


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dumps(d: dict, path: tuple = ()) -> str:
    scalars, tables, arrays = [], [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            scalars.append(f"{_key(k)} = {_value(v)}")
    lines = scalars
    for k, v in tables:
        dotted = ".".join(_key(p) for p in (*path, k))
        lines += [f"[{dotted}]", dumps(v, (*path, k))]
    for k, items in arrays:
        dotted = ".".join(_key(p) for p in (*path, k))
        for item in items:
            lines += [f"[[{dotted}]]", dumps(item, (*path, k))]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, data: dict, name: str = "protocol.toml") -> Path:
    path = tmp_path / name
    path.write_text(dumps(data), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- fixtures

SPHERE = {"center": [-38.0, 4.0, 2.0], "radius": 6.0}

MINIMAL = {
    "session": {"name": "mini", "tr": 2.0, "volumes": 100},
    "rois": {"a": {"mni_sphere": SPHERE}},
    "metric": {"kind": "alff", "roi": "a"},
    "feedback": {"direction": "up"},
}

# with blocks, a baseline, two ROIs and every table
FULL = {
    "session": {"name": "full", "tr": 2.0, "volumes": 150, "participant_feedback": True},
    "blocks": [
        {"condition": "baseline", "volumes": 70, "cue": "Rest"},
        {"condition": "regulate", "volumes": 40, "cue": "Go", "feedback": True},
        {"condition": "rest", "volumes": 40},
    ],
    "preprocess": {"realign": True, "glm": "cumulative"},
    "rois": {"a": {"mni_sphere": SPHERE},
             "b": {"mni_sphere": {"center": [38.0, 4.0, 2.0], "radius": 6.0}}},
    "metric": {"kind": "alff", "roi": "a", "window": 64, "band": [0.01, 0.08]},
    "feedback": {"baseline": "block:baseline", "direction": "down", "scale": 0.2},
    "output": {"zmq_address": "tcp://127.0.0.1:5556"},
}

MONITOR = {
    "session": {"name": "mon", "tr": 2.0, "participant_feedback": False},
    "blocks": [{"condition": "baseline", "volumes": 100}, {"condition": "needling", "volumes": 50}],
    "rois": {"a": {"mni_sphere": SPHERE}},
    "metric": {"kind": "alff", "roi": "a", "window": 64, "whole_brain": True,
               "maps": ["alff", "reho"]},
    "feedback": {"baseline": "block:baseline"},
    "output": {"write_maps_every": 10},
}


# --------------------------------------------------------------------- shipped protocols


def test_shipped_protocols_are_the_three_expected():
    names = sorted(p.name for p in PROTOCOLS.glob("*.toml"))
    assert names == ["acupuncture_monitoring.toml", "insula_acc_psc_difference.toml",
                     "insula_alff_downregulation.toml", "insula_alff_intermittent.toml",
                     "insula_alff_sham.toml", "insula_alff_shaping.toml",
                     "insula_mpfc_roi_fc.toml", "insula_seed_fc.toml"]


@pytest.mark.parametrize("path", sorted(PROTOCOLS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_protocols_load(path):
    protocol = load_protocol(path)
    assert protocol.session.name == path.stem
    assert protocol.path == path.resolve()
    assert protocol.source == str(path)
    assert len(protocol.sha256) == 64
    assert sum(b.volumes for b in protocol.blocks) == protocol.session.volumes
    assert protocol.session.description
    for name in protocol.metric.rois:
        assert protocol.rois[name].simulator_roi  # every shipped protocol runs --simulate


def test_insula_alff_downregulation():
    p = load_protocol(PROTOCOLS / "insula_alff_downregulation.toml")
    assert p.session.tr == 2.0 and p.session.volumes == 450
    assert p.session.participant_feedback
    conditions = [b.condition for b in p.blocks]
    assert conditions[0] == "baseline"
    assert conditions[1:] == ["regulate", "rest"] * 3
    assert [b.feedback for b in p.blocks] == [c == "regulate" for c in conditions]
    assert all(b.cue for b in p.blocks)
    assert p.metric.kind == "alff" and p.metric.roi == "left_insula"
    assert p.metric.band == (0.01, 0.08)
    roi = p.rois["left_insula"]
    assert roi.kind == "mni_sphere"
    assert roi.mni_sphere == MniSphere(center=(-38.0, 4.0, 2.0), radius=6.0)
    assert p.feedback.direction == "down"
    assert p.feedback.baseline == "block:baseline" and p.baseline_block is p.blocks[0]
    assert p.feedback.change == "relative"
    assert p.baseline_block.stop >= p.metric.window


def test_insula_seed_fc():
    p = load_protocol(PROTOCOLS / "insula_seed_fc.toml")
    assert p.metric.kind == "seed_fc"
    assert p.metric.seed == "left_insula" and p.metric.roi is None
    assert p.metric.target in p.rois and p.metric.target != p.metric.seed
    assert p.rois["left_insula"].mni_sphere.center == (-38.0, 4.0, 2.0)
    assert p.rois[p.metric.target].mni_sphere.center == (0.0, 52.0, -6.0)
    assert p.feedback.direction in ("up", "down")
    assert p.feedback.change == "difference"
    assert p.baseline_block.condition == "baseline"
    assert p.preprocess.motion_regressors
    assert p.preprocess.interpolation == "cubic"  # voxel-wise FC (docs/methods.md)


def test_acupuncture_monitoring():
    p = load_protocol(PROTOCOLS / "acupuncture_monitoring.toml")
    assert [b.condition for b in p.blocks] == ["baseline", "needling", "post"]
    assert not p.session.participant_feedback
    assert not any(b.feedback for b in p.blocks)
    assert p.metric.whole_brain and p.metric.maps == ("alff", "reho")
    assert p.baseline_block is p.blocks[0]  # operator view and change maps
    assert p.metric.window <= p.blocks[0].volumes
    assert p.output.write_maps_every == 0


# ---------------------------------------------------------------------------- defaults


def test_minimal_protocol_gets_defaults(tmp_path):
    p = load_protocol(write(tmp_path, MINIMAL))
    assert p.session == SessionConfig(name="mini", tr=2.0, volumes=100, description="",
                                      participant_feedback=True)
    # no [[blocks]]: one block over the whole run, with feedback
    assert p.blocks == (Block(index=0, condition="run", volumes=100, start=0, cue="",
                              feedback=True),)
    assert p.preprocess == PreprocessConfig()
    assert p.preprocess.realign and p.preprocess.motion_regressors
    assert p.preprocess.brain_mask == "auto" and p.preprocess.glm_window is None
    assert p.rois["a"] == RoiConfig(name="a", mni_sphere=MniSphere((-38.0, 4.0, 2.0), 6.0))
    assert p.metric == MetricConfig(kind="alff", roi="a", window=64)
    assert p.feedback == FeedbackConfig(direction="up", baseline="none", change="difference",
                                        scale=1.0, clip=(0.0, 1.0), smoothing=1.0, target=0.75)
    assert p.output == OutputConfig(zmq_address="tcp://127.0.0.1:5556", write_maps_every=0)


def test_contextual_defaults(tmp_path):
    d = copy.deepcopy(FULL)
    p = load_protocol(write(tmp_path, d))
    assert p.feedback.change == "relative"  # alff with a baseline block
    assert p.feedback.baseline_block == 0
    d["metric"] = {"kind": "seed_fc", "seed": "a", "target": "b", "window": 30}
    p = load_protocol(write(tmp_path, d))
    assert p.feedback.change == "difference"  # z can be ~0: never divided by
    assert p.metric.rois == ("a", "b")
    d["preprocess"] = {"glm": "sliding"}
    assert load_protocol(write(tmp_path, d)).preprocess.glm_window == 30
    d["preprocess"] = {"glm": "none"}
    pre = load_protocol(write(tmp_path, d)).preprocess
    assert pre.drift == "none" and not pre.motion_regressors
    d["preprocess"] = {"realign": False, "glm": "cumulative"}
    pre = load_protocol(write(tmp_path, d)).preprocess
    assert not pre.motion_regressors and pre.drift == "legendre"
    d["preprocess"] = {"drift": "cosine", "drift_cutoff": 100.0}
    assert load_protocol(write(tmp_path, d)).preprocess.drift_cutoff == 100.0


def test_session_volumes_from_blocks(tmp_path):
    d = copy.deepcopy(FULL)
    del d["session"]["volumes"]
    p = load_protocol(write(tmp_path, d))
    assert p.session.volumes == p.n_volumes == 150
    assert [(b.start, b.stop) for b in p.blocks] == [(0, 70), (70, 110), (110, 150)]


def test_block_at():
    p = load_protocol(PROTOCOLS / "insula_alff_downregulation.toml")
    assert p.block_at(0).condition == "baseline"
    assert p.block_at(89).index == 0 and p.block_at(90).index == 1
    assert p.block_at(449).index == len(p.blocks) - 1
    assert p.block_at(450) is None
    with pytest.raises(ValueError, match="volume_index"):
        p.block_at(-1)


def test_monitoring_protocol(tmp_path):
    p = load_protocol(write(tmp_path, MONITOR))
    assert p.session.volumes == 150
    assert p.metric.maps == ("alff", "reho") and p.output.write_maps_every == 10
    assert p.metric.neighborhood == 27
    # direction defaults to "up" without participant feedback; relative change by default
    assert p.feedback == FeedbackConfig(direction="up", baseline="block:baseline",
                                        baseline_block=0, change="relative")
    # [feedback] may be left out entirely
    d = copy.deepcopy(MONITOR)
    del d["feedback"]
    p = load_protocol(write(tmp_path, d))
    assert p.feedback == FeedbackConfig(direction="up") and p.baseline_block is None


def test_loads_and_parse_agree(tmp_path):
    text = dumps(FULL)
    assert tomllib.loads(text) == FULL  # the test writer is faithful
    a = loads_protocol(text)
    b = parse_protocol(tomllib.loads(text))
    assert a == b and a.source == "<string>" and a.path is None and a.sha256 is None
    c = load_protocol(write(tmp_path, FULL))
    assert dataclasses.replace(c, source="<string>", path=None) == a


# -------------------------------------------------------------------------- file paths


def _with_file_roi(value, space="native"):
    d = copy.deepcopy(MINIMAL)
    d["rois"]["a"] = {"file": value, "space": space}
    return d


def test_relative_roi_file_resolved_against_protocol_folder(tmp_path, monkeypatch):
    (tmp_path / "masks").mkdir()
    roi_file = tmp_path / "masks" / "insula.nii.gz"
    roi_file.write_bytes(b"")
    mask_file = tmp_path / "masks" / "brain.nii.gz"
    mask_file.write_bytes(b"")
    d = _with_file_roi("masks/insula.nii.gz", space="mni")
    d["preprocess"] = {"brain_mask": "masks/brain.nii.gz"}
    path = write(tmp_path, d)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = load_protocol(path)
    assert p.rois["a"].file == roi_file.resolve()
    assert p.rois["a"].kind == "file" and p.rois["a"].space == "mni"
    assert p.preprocess.brain_mask == mask_file.resolve()
    # absolute paths are kept
    p = load_protocol(write(tmp_path, _with_file_roi(str(roi_file))))
    assert p.rois["a"].file == roi_file.resolve()
    # parse_protocol resolves against base_dir
    p = parse_protocol(_with_file_roi("masks/insula.nii.gz"), base_dir=tmp_path)
    assert p.rois["a"].file == roi_file.resolve()


def test_missing_relative_roi_file(tmp_path):
    path = write(tmp_path, _with_file_roi("masks/missing.nii.gz"))
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    msg = str(info.value)
    assert str(path) in msg and "rois.a.file" in msg and info.value.key == "rois.a.file"
    assert "file not found" in msg and str(tmp_path / "masks" / "missing.nii.gz") in msg


def test_simulator_only_roi(tmp_path):
    d = copy.deepcopy(MINIMAL)
    d["rois"]["a"] = {"simulator_roi": "left_insula"}
    roi = load_protocol(write(tmp_path, d)).rois["a"]
    assert roi.kind == "simulator" and roi.simulator_roi == "left_insula"


# ---------------------------------------------------------------------------- bad inputs


def _set(d, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d.setdefault(p, {})
    if isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value


def _del(d, dotted):
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d[p]
    del d[last]


def S(dotted, value, base=None):  # noqa: N802 - set a value
    return lambda d: _set(d, dotted, value), base


def D(dotted, base=None):  # noqa: N802 - delete a key
    return lambda d: _del(d, dotted), base


def M(*edits, base=None):  # noqa: N802 - several edits
    def apply(d):
        for edit, _ in edits:
            edit(d)
    return apply, base


BAD = [
    # missing required keys
    ("missing-session", D("session"), "session", "required table"),
    ("missing-name", D("session.name"), "session.name", "required key is missing"),
    ("missing-tr", D("session.tr"), "session.tr", "a number > 0"),
    ("missing-volumes-no-blocks", D("session.volumes"), "session.volumes", "no [[blocks]]"),
    ("missing-metric", D("metric"), "metric", "required table"),
    ("missing-kind", D("metric.kind"), "metric.kind", "one of 'psc'"),
    ("missing-roi", D("metric.roi"), "metric.roi", "required key is missing"),
    ("missing-feedback", D("feedback"), "feedback", "participant_feedback"),
    ("missing-direction", D("feedback.direction"), "feedback.direction", "'up', 'down'"),
    ("missing-block-volumes", D("blocks.1.volumes", FULL), "blocks[1].volumes", "missing"),
    ("missing-condition", D("blocks.0.condition", FULL), "blocks[0].condition", "missing"),
    ("missing-radius", D("rois.a.mni_sphere.radius"), "rois.a.mni_sphere.radius", "missing"),
    # unknown keys at each level
    ("unknown-top", S("extra", 1), "extra", "Allowed keys in the top level"),
    ("unknown-session", S("session.foo", 1), "session.foo", "Allowed keys in [session]"),
    ("unknown-block", S("blocks.2.duration", 3, FULL), "blocks[2].duration", "volumes"),
    ("unknown-preprocess", S("preprocess.smoothing", 6.0), "preprocess.smoothing",
     "did you mean 'smoothing_fwhm'"),
    ("unknown-roi-key", S("rois.a.sphere", SPHERE), "rois.a.sphere", "mni_sphere"),
    ("unknown-sphere-key", S("rois.a.mni_sphere.centre", [0, 0, 0]),
     "rois.a.mni_sphere.centre", "did you mean 'center'"),
    ("unknown-metric", S("metric.windows", 30), "metric.windows", "did you mean 'window'"),
    ("unknown-feedback", S("feedback.threshold", 1), "feedback.threshold", "Allowed keys"),
    ("unknown-output", S("output.port", 5556), "output.port", "zmq_address"),
    # wrong types
    ("tr-string", S("session.tr", "2.0"), "session.tr", "got string '2.0'"),
    ("tr-bool", S("session.tr", True), "session.tr", "got boolean"),
    ("volumes-float", S("session.volumes", 100.0), "session.volumes", "an integer"),
    ("name-pattern", S("session.name", "My Protocol"), "session.name", "[a-z0-9_]+"),
    ("pf-string", S("session.participant_feedback", "yes"), "session.participant_feedback",
     "a boolean"),
    ("session-not-table", S("session", 3), "session", "expected a table"),
    ("blocks-not-array", S("blocks", 3), "blocks", "array of tables"),
    ("block-not-table", S("blocks", [{"condition": "a", "volumes": 100}, 5]), "blocks[1]",
     "expected a table"),
    ("condition-spaces", S("blocks.0.condition", "pre needle", FULL), "blocks[0].condition",
     "a label"),
    ("realign-int", S("preprocess.realign", 1), "preprocess.realign", "got integer 1"),
    ("interpolation", S("preprocess.interpolation", "nearest"), "preprocess.interpolation",
     "'linear', 'cubic'"),
    ("drift-kind", S("preprocess.drift", "spline"), "preprocess.drift", "'legendre'"),
    ("roi-not-table", S("rois.a", 5), "rois.a", "expected a table"),
    ("roi-bad-name", S("rois.Left Insula", {"mni_sphere": SPHERE}), "rois.Left Insula",
     "ROI names"),
    ("center-2d", S("rois.a.mni_sphere.center", [1.0, 2.0]), "rois.a.mni_sphere.center",
     "an array of 3 numbers"),
    ("kind", S("metric.kind", "bold"), "metric.kind", "got string 'bold'"),
    ("band-short", S("metric.band", [0.01]), "metric.band", "an array of 2 numbers"),
    ("maps-unknown", S("metric.maps", ["alff", "vmhc"]), "metric.maps", "'reho'"),
    ("direction", S("feedback.direction", "sideways"), "feedback.direction", "'up', 'down'"),
    ("clip-string", S("feedback.clip", "0,1"), "feedback.clip", "got string"),
    ("zmq-address", S("output.zmq_address", "localhost:5556"), "output.zmq_address",
     "tcp://host:port"),
    ("zmq-port", S("output.zmq_address", "tcp://127.0.0.1:99999"), "output.zmq_address",
     "1..65535"),
    # zero / negative / out of range numbers
    ("tr-zero", S("session.tr", 0), "session.tr", "> 0"),
    ("tr-negative", S("session.tr", -2.0), "session.tr", "got -2"),
    ("tr-nan", S("session.tr", float("nan")), "session.tr", "got float nan"),
    ("volumes-zero", S("session.volumes", 0), "session.volumes", ">= 1"),
    ("block-volumes-zero", S("blocks.1.volumes", 0, FULL), "blocks[1].volumes", ">= 1"),
    ("window-zero", S("metric.window", 0), "metric.window", ">= 3"),
    ("window-2-alff", S("metric.window", 2), "metric.window", ">= 3"),
    ("radius-negative", S("rois.a.mni_sphere.radius", -1.0), "rois.a.mni_sphere.radius",
     "> 0"),
    ("scale-zero", S("feedback.scale", 0.0), "feedback.scale", "> 0"),
    ("smoothing-zero", S("feedback.smoothing", 0.0), "feedback.smoothing", "in (0, 1]"),
    ("smoothing-above-1", S("feedback.smoothing", 1.5), "feedback.smoothing", "in (0, 1]"),
    ("target-above-1", S("feedback.target", 1.2), "feedback.target", "in [0, 1]"),
    ("clip-reversed", S("feedback.clip", [0.8, 0.2]), "feedback.clip", "low < high"),
    ("clip-range", S("feedback.clip", [-0.5, 1.0]), "feedback.clip", "each in [0, 1]"),
    ("target-outside-clip", M(S("feedback.clip", [0.0, 0.5]), S("feedback.target", 0.75)),
     "feedback.target", "outside clip"),
    ("fd-zero", S("preprocess.fd_threshold", 0.0), "preprocess.fd_threshold", "> 0"),
    ("fwhm-negative", S("preprocess.smoothing_fwhm", -1.0), "preprocess.smoothing_fwhm",
     ">= 0"),
    ("reference-negative", S("preprocess.reference_volume", -1), "preprocess.reference_volume",
     ">= 0"),
    ("reference-past-end", S("preprocess.reference_volume", 100), "preprocess.reference_volume",
     "< session.volumes"),
    ("drift-order-negative", S("preprocess.drift_order", -1), "preprocess.drift_order", ">= 0"),
    ("neighborhood", M(S("metric.kind", "reho"), S("metric.neighborhood", 8)),
     "metric.neighborhood", "7, 19, 27"),
    ("write-maps-negative", S("output.write_maps_every", -1, MONITOR),
     "output.write_maps_every", ">= 0"),
    # window vs TR vs band
    ("window-too-short-for-band", S("metric.window", 6), "metric.window",
     "too short for the band"),
    ("window-longer-than-run", S("metric.window", 200), "metric.window", "longer than the run"),
    ("band-above-nyquist", S("metric.band", [0.01, 0.3]), "metric.band", "Nyquist"),
    ("band-reversed", S("metric.band", [0.08, 0.01]), "metric.band", "low < high"),
    ("band-for-reho", M(S("metric.kind", "reho"), S("metric.band", [0.01, 0.1])), "metric.band",
     "only used when"),
    # seed_fc
    ("fc-without-seed", M(S("metric.kind", "seed_fc"), D("metric.roi"),
                          S("metric.target", "a")), "metric.seed", "missing"),
    ("fc-without-target", M(S("metric.kind", "seed_fc"), D("metric.roi"),
                            S("metric.seed", "a")), "metric.target", "missing"),
    ("fc-with-roi", M(S("metric.kind", "seed_fc"), S("metric.seed", "a"),
                      S("metric.target", "a")), "metric.roi", "seed and target"),
    ("fc-seed-is-target", M(S("metric.kind", "seed_fc"), D("metric.roi"), S("metric.seed", "a"),
                            S("metric.target", "a")), "metric.target", "must differ"),
    ("seed-for-alff", S("metric.seed", "a"), "metric.seed", "only used when kind = 'seed_fc'"),
    # ROIs
    ("unknown-roi", S("metric.roi", "b"), "metric.roi", "not defined in [rois]"),
    ("unknown-fc-target", M(S("metric.kind", "seed_fc"), D("metric.roi"),
                            S("metric.seed", "a"), S("metric.target", "mpfc")),
     "metric.target", "'mpfc' is not defined"),
    ("roi-two-definitions", S("rois.a.file", "a.nii.gz"), "rois.a", "two definitions"),
    ("roi-no-definition", S("rois.a", {}), "rois.a", "no definition"),
    ("space-without-file", S("rois.a.space", "mni"), "rois.a.space", "only used when file"),
    ("roi-file-missing", S("rois.a", {"file": "x.nii.gz"}), "rois.a.file", "file not found"),
    ("brain-mask-missing", S("preprocess.brain_mask", "nope.nii.gz"), "preprocess.brain_mask",
     "file not found"),
    ("brain-mask-type", S("preprocess.brain_mask", 1), "preprocess.brain_mask", '"auto"'),
    # blocks and baselines
    ("blocks-total", S("session.volumes", 140, FULL), "blocks", "70 + 40 + 40 = 150"),
    ("blocks-empty", S("blocks", []), "blocks", "non-empty"),
    ("baseline-missing-block", S("feedback.baseline", "block:nope", FULL), "feedback.baseline",
     "no block has condition 'nope'"),
    ("baseline-syntax", S("feedback.baseline", "baseline", FULL), "feedback.baseline",
     '"block:<condition>"'),
    ("baseline-no-blocks", S("feedback.baseline", "block:baseline"), "feedback.baseline",
     "conditions: 'run'"),
    ("baseline-after-feedback", S("feedback.baseline", "block:rest", FULL),
     "feedback.baseline", "must end before the first feedback block"),
    ("baseline-shorter-than-window", S("metric.window", 100, FULL), "feedback.baseline",
     "first full metric window"),
    ("relative-without-baseline", S("feedback.change", "relative"), "feedback.change",
     "needs a baseline block"),
    ("no-feedback-block", S("blocks.1.feedback", False, FULL), "blocks",
     "no block has feedback = true"),
    ("feedback-block-in-monitoring", S("blocks.1.feedback", True, MONITOR),
     "blocks[1].feedback", "participant_feedback is false"),
    ("maps-without-whole-brain", S("metric.whole_brain", False, MONITOR), "metric.maps",
     "whole_brain = true"),
    ("whole-brain-without-maps", S("metric.maps", [], MONITOR), "metric.maps",
     "at least one map"),
    ("maps-baseline-window", S("blocks", [{"condition": "settle", "volumes": 60},
                                          {"condition": "baseline", "volumes": 50},
                                          {"condition": "needling", "volumes": 40}], MONITOR),
     "metric.window", "does not fit in the baseline block"),
    ("maps-baseline-missing", S("feedback.baseline", "block:pre", MONITOR),
     "feedback.baseline", "no block has condition 'pre'"),
    ("monitoring-direction", S("feedback.direction", "left", MONITOR), "feedback.direction",
     "'up', 'down'"),
    ("write-maps-without-whole-brain", S("output.write_maps_every", 5),
     "output.write_maps_every", "whole_brain"),
    # preprocessing consistency
    ("motion-without-realign", M(S("preprocess.realign", False),
                                 S("preprocess.motion_regressors", True)),
     "preprocess.motion_regressors", "no motion parameters"),
    ("interpolation-without-realign", M(S("preprocess.realign", False),
                                        S("preprocess.interpolation", "cubic")),
     "preprocess.interpolation", "realign = true"),
    ("glm-without-regressors", M(S("preprocess.drift", "none"),
                                 S("preprocess.motion_regressors", False)),
     "preprocess.glm", "needs regressors"),
    ("drift-with-glm-none", M(S("preprocess.glm", "none"), S("preprocess.drift", "legendre")),
     "preprocess.drift", "glm is not 'none'"),
    ("glm-window-cumulative", S("preprocess.glm_window", 30), "preprocess.glm_window",
     "glm = 'sliding'"),
    ("glm-window-too-short", M(S("preprocess.glm", "sliding"), S("preprocess.glm_window", 1)),
     "preprocess.glm_window", ">= 2"),
    ("drift-order-with-cosine", M(S("preprocess.drift", "cosine"),
                                  S("preprocess.drift_order", 3)),
     "preprocess.drift_order", "'legendre' or 'polynomial'"),
]


@pytest.mark.parametrize(("mutate", "key", "match"), [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_protocol(tmp_path, mutate, key, match):
    edit, base = mutate
    d = copy.deepcopy(MINIMAL if base is None else base)
    edit(d)
    path = write(tmp_path, d, name="bad_protocol.toml")
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    err = info.value
    msg = str(err)
    assert isinstance(err, ValueError)
    assert err.source == str(path) and msg.startswith(str(path) + ": ")
    assert err.key == key, msg
    assert f": {key}: " in msg
    assert match in msg, msg


def test_bad_cases_start_from_valid_bases(tmp_path):
    for base in (MINIMAL, FULL, MONITOR):
        load_protocol(write(tmp_path, base))


def test_missing_space_for_file_roi(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    d = copy.deepcopy(MINIMAL)
    d["rois"]["a"] = {"file": "x.nii.gz"}
    with pytest.raises(ProtocolError, match=r"rois\.a\.space: required key is missing; "
                                            r"expected one of 'mni', 'native'"):
        load_protocol(write(tmp_path, d))


def test_parse_protocol_names_source():
    d = copy.deepcopy(MINIMAL)
    d["feedback"]["direction"] = "sideways"
    with pytest.raises(ProtocolError, match=r"^<string>: feedback\.direction: expected one of"):
        parse_protocol(d)
    with pytest.raises(ProtocolError, match=r"^mine\.toml: feedback\.direction"):
        parse_protocol(d, source="mine.toml")


def test_toml_syntax_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[session]\nname = \"x\"\ntr = \n", encoding="utf-8")
    with pytest.raises(ProtocolError, match=r"broken\.toml: invalid TOML: .*line 3") as info:
        load_protocol(path)
    assert info.value.key is None


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ProtocolError, match=r"nope\.toml: protocol file not found"):
        load_protocol(tmp_path / "nope.toml")
    with pytest.raises(ProtocolError, match="cannot read"):
        load_protocol(tmp_path)  # a folder
    path = tmp_path / "latin1.toml"
    path.write_bytes("[session]\nname = \"caf\xe9\"\n".encode("latin-1"))
    with pytest.raises(ProtocolError, match=r"latin1\.toml: not UTF-8"):
        load_protocol(path)


def test_protocol_error_pickles():
    err = ProtocolError("p.toml", "metric.window", "expected an integer, got string 'x'.")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.key == "metric.window" and back.source == "p.toml"


# ----------------------------------------------------------------------------- frozen


def test_dataclasses_are_frozen():
    p = load_protocol(PROTOCOLS / "insula_alff_downregulation.toml")
    objects = [p, p.session, p.blocks[0], p.preprocess, p.rois["left_insula"], p.metric,
               p.feedback, p.output]
    for obj in objects:
        field = dataclasses.fields(obj)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)
    assert isinstance(p.blocks, tuple) and isinstance(p.metric.band, tuple)
    with pytest.raises(TypeError):
        p.rois["x"] = p.rois["left_insula"]
    assert isinstance(p, Protocol)


def test_protocol_is_hashable_and_picklable():
    p = load_protocol(PROTOCOLS / "acupuncture_monitoring.toml")
    back = pickle.loads(pickle.dumps(p))
    assert back == p and hash(back) == hash(p)
    assert dict(back.rois) == dict(p.rois)


def test_copied_protocol_loads_with_original_base_dir(tmp_path):
    (tmp_path / "insula.nii.gz").write_bytes(b"")
    original = write(tmp_path, _with_file_roi("insula.nii.gz"))
    record = tmp_path / "record"
    record.mkdir()
    copy_path = record / "protocol.toml"
    copy_path.write_bytes(original.read_bytes())
    with pytest.raises(ProtocolError, match="rois.a.file: file not found"):
        load_protocol(copy_path)
    p = load_protocol(copy_path, base_dir=tmp_path)
    assert p.rois["a"].file == (tmp_path / "insula.nii.gz").resolve()
    assert p.sha256 == load_protocol(original).sha256
