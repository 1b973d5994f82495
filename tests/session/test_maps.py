"""Whole-brain maps off the feedback path: MapWriter order and overload policy, the maps
equal the batch metric functions on the window, a session writes every block-end map and a
replay reproduces them bit for bit.
"""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest

from rtfb.config import load_protocol
from rtfb.ingest import Volume
from rtfb.metrics import alff, falff, reho
from rtfb.session import maps as maps_module
from rtfb.session.maps import MapJob, MapWriter
from rtfb.session.metric_engine import MetricEngine, window_map
from rtfb.session.record_reader import load_record
from rtfb.session.replay import replay_session
from rtfb.session.runner import Session
from simulator import make_subject
from tests.session._sources import ListSource

pytestmark = pytest.mark.timeout(300)

TR, BAND = 2.0, (0.01, 0.2)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.fixture
def small_mask():
    mask = np.zeros((6, 5, 4), bool)
    mask[1:5, 1:4, 1:3] = True
    return mask


@pytest.mark.parametrize("name", ["alff", "falff", "reho"])
def test_window_map_equals_batch_function(name, rng, small_mask):
    window = rng.normal(size=(24, int(small_mask.sum()))).cumsum(axis=0)
    got = window_map(window, small_mask, name, tr=TR, band=BAND, neighborhood=27)
    assert (got[~small_mask] == 0).all()
    if name == "reho":
        data = np.zeros(small_mask.shape + (window.shape[0],))
        data[small_mask] = window.T
        expected = reho(data, small_mask, 27)[small_mask]
    else:
        expected = (alff if name == "alff" else falff)(window.T, TR, BAND)
    np.testing.assert_allclose(got[small_mask], expected, rtol=1e-10, atol=1e-12)


def test_engine_map_window_is_its_window(rng, small_mask):
    # without a cleaner the window handed to the map writer is the last 16 samples
    engine = MetricEngine("alff", small_mask, {"roi": small_mask}, roi="roi", window=16,
                          tr=TR, band=BAND, maps=("alff", "reho"))
    rows = rng.normal(size=(20, int(small_mask.sum())))
    for k, row in enumerate(rows):
        engine.partial_fit(row)
        if k < 15:
            assert engine.map_window() is None  # warm-up: no map
    np.testing.assert_array_equal(engine.map_window(), rows[-16:])


def _job(index, *, keep=True, baseline=False, value=1.0, n=4):
    return MapJob(index, "block", np.full((8, n), value), baseline=baseline, keep=keep)


def test_writer_keeps_block_ends_and_coalesces_periodic_jobs(tmp_path, monkeypatch):
    mask = np.zeros((2, 2, 1), bool) | True
    gate, started, computed = threading.Event(), threading.Event(), []

    def fake_map(clean, mask, name, **kw):  # the first job blocks until released
        started.set()
        gate.wait(60)
        computed.append(int(clean[0, 0]))
        out = np.zeros(mask.shape)
        out[mask] = clean[0, 0]
        return out

    monkeypatch.setattr(maps_module, "window_map", fake_map)
    writer = MapWriter(tmp_path, ["alff"], mask, np.eye(4), tr=TR, band=BAND)
    assert writer.submit(_job(0, baseline=True, value=0)) is None
    assert started.wait(60)  # the writer is busy with job 0 from now on
    assert writer.submit(_job(1, keep=False, value=1)) is None
    assert writer.submit(_job(2, keep=False, value=2)) == 1  # replaces the waiting one
    assert writer.submit(_job(3, keep=False, value=3)) == 2
    assert writer.submit(_job(4, value=4)) is None  # a block end: kept
    assert writer.submit(_job(5, keep=False, value=5)) is None  # not behind a periodic one
    assert writer.pending == 4
    gate.set()
    writer.close(timeout=60)
    assert computed == [0, 3, 4, 5]  # in order, nothing kept was lost
    assert writer.n_skipped_ == 2 and writer.n_written_ == 4
    names = sorted(p.name for p in tmp_path.glob("*.nii.gz"))
    assert names == [f"alff-change_block_vol-{i:05d}.nii.gz" for i in (0, 3, 4, 5)]
    # change maps are relative to the baseline job's map (value 0 here)
    last = np.asarray(nib.load(tmp_path / "alff-change_block_vol-00005.nii.gz").dataobj)
    assert np.allclose(last, 5.0)


def test_writer_reports_a_saving_error(tmp_path):
    mask = np.ones((2, 2, 1), bool)
    writer = MapWriter(tmp_path / "missing-folder", ["alff"], mask, np.eye(4), tr=TR,
                       band=BAND)
    writer.submit(_job(0, n=4))
    with pytest.raises(OSError):
        writer.close(timeout=60)


# ---------------------------------------------------------------------------- session


PROTOCOL = """
[session]
name = "maps_test"
tr = 2.0
volumes = 36
participant_feedback = false

[[blocks]]
condition = "baseline"
volumes = 14
cue = "Rest"

[[blocks]]
condition = "needling"
volumes = 12
cue = "Rest"

[[blocks]]
condition = "post"
volumes = 10
cue = "Rest"

[preprocess]
realign = false
smoothing_fwhm = 0.0
glm = "cumulative"

[rois.insula]
file = "{roi}"
space = "native"

[metric]
kind = "alff"
roi = "insula"
window = 10
band = [0.01, 0.2]
whole_brain = true
maps = ["alff", "reho"]

[feedback]
baseline = "block:baseline"
change = "relative"
scale = 0.2

[output]
zmq_address = "tcp://127.0.0.1:5599"
write_maps_every = 5
"""


def _monitoring_session(tmp_path):
    """The maps protocol and its 36 volumes (ROI from the synthetic subject)."""
    subj = make_subject(shape=(20, 20, 12), n_volumes=36, seed=3)
    roi = tmp_path / "roi.nii.gz"
    nib.save(nib.Nifti1Image(subj.rois["left_insula"].astype(np.uint8), subj.affine), roi)
    path = tmp_path / "protocol.toml"
    path.write_text(PROTOCOL.format(roi=roi))
    vols = [Volume(subj.data[..., t], subj.affine, t, tr=TR) for t in range(36)]
    return load_protocol(path), vols


def test_session_writes_every_block_end_map_and_replay_reproduces_them(tmp_path):
    protocol, vols = _monitoring_session(tmp_path)
    out = Session(protocol, tmp_path / "session").run(ListSource(vols))
    files = {p.name for p in (out / "maps").glob("*.nii.gz")}
    # block ends (13, 25, 35) are always written; periodic ones (every 5) may be skipped
    for name in ("alff", "reho"):
        assert f"{name}-change_baseline_vol-00013.nii.gz" in files
        assert f"{name}-change_needling_vol-00025.nii.gz" in files
        assert f"{name}-change_post_vol-00035.nii.gz" in files
        assert f"{name}-map_baseline_vol-00009.nii.gz" in files or \
            "maps of volume 9 skipped" in (out / "events.jsonl").read_text()
    zero = np.asarray(nib.load(out / "maps" / "alff-change_baseline_vol-00013.nii.gz").dataobj)
    assert (zero == 0).all()  # the baseline block's end is the baseline itself
    post = np.asarray(nib.load(out / "maps" / "reho-change_post_vol-00035.nii.gz").dataobj)
    assert np.isfinite(post).all() and np.abs(post).max() > 0
    assert "maps_error" not in (out / "events.jsonl").read_text()

    # a replay is not live: it writes every map (none skipped), equal bit for bit
    replayed = replay_session(out, tmp_path / "replay")
    replayed_files = {p.name for p in (replayed / "maps").glob("*.nii.gz")}
    # 2 maps x (block ends 13, 25, 35 and every 5th volume once the window is full: 9, 14,
    # 19, 24, 29, 34)
    assert len(replayed_files) == 2 * 9
    assert replayed_files >= files
    for name in sorted(files):
        a = np.asarray(nib.load(out / "maps" / name).dataobj)
        b = np.asarray(nib.load(replayed / "maps" / name).dataobj)
        np.testing.assert_array_equal(a, b)


def test_a_failing_map_never_stops_the_session(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("no map today")

    monkeypatch.setattr(maps_module, "window_map", broken)
    protocol, vols = _monitoring_session(tmp_path)
    session = Session(protocol, tmp_path / "session")
    out = session.run(ListSource(vols))
    assert session.end_reason == "finished"
    record = load_record(out)
    assert [v["index"] for v in record.volumes] == list(range(36))
    assert all(np.isfinite(v["metrics"]["alff"]) for v in record.volumes[9:])
    errors = [e for e in record.events if e.get("code") == "maps_error"]
    assert len(errors) == 1 and "no map today" in errors[0]["message"]

