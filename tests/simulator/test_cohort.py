"""Synthetic BIDS cohort: layout, participants, planted group effect (checked with numpy)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from simulator.cohort import make_cohort_plan, write_cohort

SHAPE = (20, 20, 12)
N_VOL = 60
TR = 2.0
N_PAT, N_CON = 3, 3
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def effect_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "bids"
    write_cohort(out, N_PAT, N_CON, seed=1, shape=SHAPE, n_volumes=N_VOL, tr=TR)
    return out


@pytest.fixture(scope="module")
def null_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort_null") / "bids"
    write_cohort(out, N_PAT, N_CON, seed=1, null=True, shape=SHAPE, n_volumes=N_VOL, tr=TR)
    return out


def _participants(root):
    with open(root / "participants.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _bold(root, pid):
    return root / pid / "func" / f"{pid}_task-rest_bold.nii.gz"


def _alff(ts, tr, band=(0.01, 0.08)):
    """Sum of the single-sided amplitude spectrum in ``band`` (last axis), after detrending."""
    n = ts.shape[-1]
    t = np.arange(n, dtype=float) - (n - 1) / 2
    c = ts - ts.mean(axis=-1, keepdims=True)
    c = c - (c @ t / (t @ t))[..., None] * t
    amp = 2.0 * np.abs(np.fft.rfft(c, axis=-1)) / n
    freqs = np.fft.rfftfreq(n, d=tr)
    keep = (freqs >= band[0]) & (freqs <= band[1])
    return amp[..., keep].sum(axis=-1)


def _roi_alff(root, roi_name):
    roi = np.asarray(nib.load(root / "derivatives/truth" / f"roi-{roi_name}.nii.gz")
                     .dataobj).astype(bool)
    rows = _participants(root)
    values = []
    for row in rows:
        data = np.asarray(nib.load(_bold(root, row["participant_id"])).dataobj)
        values.append(_alff(data[roi].astype(np.float64), TR).mean())  # voxelwise ALFF
    groups = np.array([r["group"] for r in rows])
    vas = np.array([float(r["vas"]) for r in rows])
    return np.array(values), groups, vas


def _welch_t(a, b):
    return (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)


def test_bids_layout(effect_dir):
    desc = json.loads((effect_dir / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and desc["Name"] and desc["DatasetType"] == "raw"
    assert (effect_dir / "participants.json").is_file()
    assert (effect_dir / "README").is_file()
    pids = [r["participant_id"] for r in _participants(effect_dir)]
    assert pids == [f"sub-{i:02d}" for i in range(1, N_PAT + N_CON + 1)]
    subdirs = sorted(p.name for p in effect_dir.glob("sub-*") if p.is_dir())
    assert subdirs == pids
    affines = []
    for pid in pids:
        func = effect_dir / pid / "func"
        assert sorted(p.name for p in func.iterdir()) == [
            f"{pid}_task-rest_bold.json", f"{pid}_task-rest_bold.nii.gz"]
        sidecar = json.loads((func / f"{pid}_task-rest_bold.json").read_text())
        assert sidecar["RepetitionTime"] == TR
        assert sidecar["TaskName"] == "rest"
        img = nib.load(func / f"{pid}_task-rest_bold.nii.gz")
        assert img.shape == (*SHAPE, N_VOL)
        assert img.get_data_dtype() == np.float32
        assert img.header.get_zooms()[3] == pytest.approx(TR)
        assert img.header.get_xyzt_units() == ("mm", "sec")
        affines.append(img.affine)
    for aff in affines[1:]:
        np.testing.assert_array_equal(aff, affines[0])


def test_participants_values(effect_dir):
    rows = _participants(effect_dir)
    assert list(rows[0]) == ["participant_id", "group", "age", "sex", "vas"]
    groups = [r["group"] for r in rows]
    assert groups.count("patient") == N_PAT and groups.count("control") == N_CON
    for r in rows:
        vas = float(r["vas"])
        assert 0.0 <= vas <= 10.0
        if r["group"] == "control":
            assert vas <= 1.0
        else:
            assert 3.0 <= vas <= 9.0
        assert 18 <= int(r["age"]) <= 90
        assert r["sex"] in ("F", "M")


def test_truth_files(effect_dir):
    truth_dir = effect_dir / "derivatives" / "truth"
    truth = json.loads((truth_dir / "truth.json").read_text())
    assert json.loads((truth_dir / "dataset_description.json").read_text())[
        "DatasetType"] == "derivative"
    assert truth["null"] is False
    assert truth["effect"]["roi"] == "left_insula"
    assert truth["effect"]["slope"] > 0
    mask = nib.load(truth_dir / truth["mask"])
    assert mask.shape == SHAPE
    ref = nib.load(_bold(effect_dir, "sub-01"))
    np.testing.assert_array_equal(mask.affine, ref.affine)
    mask_data = np.asarray(mask.dataobj).astype(bool)
    for name, fname in truth["rois"].items():
        roi = np.asarray(nib.load(truth_dir / fname).dataobj).astype(bool)
        assert roi.sum() == truth["roi_voxels"][name] > 0
        assert not (roi & ~mask_data).any()
    rows = {r["participant_id"]: r for r in _participants(effect_dir)}
    eff = truth["effect"]
    for pid, subj in truth["subjects"].items():
        assert subj["group"] == rows[pid]["group"]
        assert subj["vas"] == pytest.approx(float(rows[pid]["vas"]))
        expected = eff["base_amplitude"] + eff["slope"] * subj["vas"]
        assert abs(subj["alff_amplitude"] - expected) < 5 * eff["amplitude_sd"] + 1e-9
        sub_truth = json.loads((truth_dir / pid / f"{pid}_truth.json").read_text())
        assert sub_truth["alff"]["amplitude"] == pytest.approx(subj["alff_amplitude"])
        assert sub_truth["seed"] == subj["seed"]
    seeds = [s["seed"] for s in truth["subjects"].values()]
    assert len(set(seeds)) == len(seeds)


def test_planted_effect_is_measurable(effect_dir):
    alff, groups, vas = _roi_alff(effect_dir, "left_insula")
    patients, controls = alff[groups == "patient"], alff[groups == "control"]
    assert patients.min() > controls.max()
    assert _welch_t(patients, controls) > 4
    assert np.corrcoef(alff, vas)[0, 1] > 0.8
    truth = json.loads((effect_dir / "derivatives/truth/truth.json").read_text())
    planted = np.array([s["alff_amplitude"] for s in truth["subjects"].values()])
    assert np.corrcoef(alff, planted)[0, 1] > 0.9
    # the mirror ROI carries no planted signal: no group difference there
    right, _, _ = _roi_alff(effect_dir, "right_insula")
    assert abs(_welch_t(right[groups == "patient"], right[groups == "control"])) < 2.78
    assert right.mean() < controls.mean()


def test_null_cohort_has_no_effect(null_dir, effect_dir):
    truth = json.loads((null_dir / "derivatives/truth/truth.json").read_text())
    assert truth["null"] is True and truth["effect"]["slope"] == 0.0
    alff, groups, vas = _roi_alff(null_dir, "left_insula")
    t = _welch_t(alff[groups == "patient"], alff[groups == "control"])
    assert abs(t) < 2.78  # two-sided 5 % critical value, 4 degrees of freedom
    # same demographics as the effect cohort of the same seed; only the slope differs
    assert _participants(null_dir) == _participants(effect_dir)
    planted = [s["alff_amplitude"] for s in truth["subjects"].values()]
    base, sd = truth["effect"]["base_amplitude"], truth["effect"]["amplitude_sd"]
    assert all(abs(a - base) < 5 * sd for a in planted)


def test_plan_is_deterministic_and_null_has_same_distribution():
    a = make_cohort_plan(20, 20, seed=5)
    assert a == make_cohort_plan(20, 20, seed=5)
    assert a != make_cohort_plan(20, 20, seed=6)
    null = make_cohort_plan(200, 200, seed=5, null=True)
    amp = np.array([s.alff_amplitude for s in null])
    grp = np.array([s.group for s in null])
    assert abs(_welch_t(amp[grp == "patient"], amp[grp == "control"])) < 3
    eff = make_cohort_plan(200, 200, seed=5)
    amp = np.array([s.alff_amplitude for s in eff])
    assert _welch_t(amp[grp == "patient"], amp[grp == "control"]) > 20


def test_same_seed_same_dataset(tmp_path):
    kwargs = dict(seed=3, shape=SHAPE, n_volumes=40, tr=TR)
    write_cohort(tmp_path / "a", 1, 1, **kwargs)
    write_cohort(tmp_path / "b", 1, 1, **kwargs)
    write_cohort(tmp_path / "c", 1, 1, **{**kwargs, "seed": 4})
    for name in ("participants.tsv", "derivatives/truth/truth.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    bold = "sub-01/func/sub-01_task-rest_bold.nii.gz"
    a = np.asarray(nib.load(tmp_path / "a" / bold).dataobj)
    b = np.asarray(nib.load(tmp_path / "b" / bold).dataobj)
    c = np.asarray(nib.load(tmp_path / "c" / bold).dataobj)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("n_pat,n_con", [(0, 0), (-1, 3)])
def test_bad_group_sizes(n_pat, n_con):
    with pytest.raises(ValueError, match="subject"):
        make_cohort_plan(n_pat, n_con)


def test_subject_kwargs_checked(tmp_path):
    with pytest.raises(ValueError, match="alff_amplitude"):
        write_cohort(tmp_path, 1, 1, alff_amplitude=3.0)


def test_cli(tmp_path):
    out = tmp_path / "bids"
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "cohort", "--patients", "1", "--controls", "1",
         "--out", str(out), "--shape", *map(str, SHAPE), "--volumes", "40", "--tr", "1.5",
         "--seed", "2", "--null"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sub-02" in proc.stdout and "null" in proc.stdout
    sidecar = json.loads((out / "sub-01/func/sub-01_task-rest_bold.json").read_text())
    assert sidecar["RepetitionTime"] == 1.5
    assert json.loads((out / "derivatives/truth/truth.json").read_text())["null"] is True


def test_varied_grids_keep_the_truth_in_the_common_space(tmp_path):
    """Each run on its own grid and pose; brought back with the truth's pose (scipy), it is
    the run the shared-grid cohort of the same seed writes (plus the constant anatomy)."""
    from scipy import ndimage

    from simulator.grids import GRID_CHOICES

    shape, n_vol = (16, 16, 10), 40
    shared = write_cohort(tmp_path / "shared", 2, 2, seed=5, shape=shape, n_volumes=n_vol)
    varied = write_cohort(tmp_path / "varied", 2, 2, seed=5, shape=shape, n_volumes=n_vol,
                          varied_grids=True)
    assert shared["grids"] == "shared" and varied["grids"] == "varied"
    truth_dir = tmp_path / "varied" / "derivatives" / "truth"
    template = nib.load(truth_dir / "template.nii.gz")
    common = np.asarray(varied["affine"])
    assert template.shape == shape and np.allclose(template.affine, common)
    assert not (tmp_path / "shared" / "derivatives" / "truth" / "template.nii.gz").exists()
    roi = np.asarray(nib.load(truth_dir / "roi-left_insula.nii.gz").dataobj) > 0
    mask = np.asarray(nib.load(truth_dir / "mask.nii.gz").dataobj) > 0
    inner = ndimage.binary_erosion(mask, iterations=2)
    ijk = np.vstack([np.indices(shape).reshape(3, -1), np.ones(int(np.prod(shape)))])
    orientations = set()
    for i, (sid, entry) in enumerate(varied["subjects"].items()):
        img = nib.load(tmp_path / "varied" / entry["bold"])
        grid = entry["grid"]
        zooms, orientation = GRID_CHOICES[i % len(GRID_CHOICES)]
        assert img.shape[:3] == tuple(grid["shape"]) and np.allclose(img.affine, grid["affine"])
        assert np.allclose(img.header.get_zooms()[:3], zooms)
        assert "".join(nib.aff2axcodes(img.affine)) == orientation
        orientations.add(orientation)
        pose = np.asarray(grid["pose"])
        assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3))  # rigid
        assert np.abs(grid["rotation_deg"]).max() <= 6 and np.abs(grid["translation_mm"]).max() <= 4
        # run voxel coordinates of every common-grid voxel, from the truth only
        coords = (np.linalg.inv(img.affine) @ pose @ common @ ijk)[:3]
        data = np.asarray(img.dataobj)
        back = np.stack([ndimage.map_coordinates(data[..., t], coords, order=1)
                         for t in range(n_vol)], axis=-1).reshape(*shape, n_vol)
        ref = np.asarray(nib.load(tmp_path / "shared" / shared["subjects"][sid]["bold"])
                         .dataobj)
        # the planted insula signal is where the truth says (demeaned ROI means agree)
        a = back[roi].mean(axis=0)
        b = ref[roi].mean(axis=0)
        assert np.corrcoef(a - a.mean(), b - b.mean())[0, 1] > 0.9
        # the temporal mean is the template's anatomy inside the brain
        r = np.corrcoef(back.mean(axis=3)[inner], np.asarray(template.dataobj)[inner])[0, 1]
        assert r > 0.8
    assert orientations == {"RAS", "LAS"}


def test_t1w_images_in_their_own_pose(tmp_path):
    from scipy import ndimage

    truth = write_cohort(tmp_path, 1, 1, seed=5, shape=(16, 16, 10), n_volumes=20,
                         varied_grids=True, t1w=True)
    truth_dir = tmp_path / "derivatives" / "truth"
    template = nib.load(truth_dir / "template_T1w.nii.gz")
    epi_template = np.asarray(nib.load(truth_dir / "template.nii.gz").dataobj)
    mask = np.asarray(nib.load(truth_dir / "mask.nii.gz").dataobj) > 0
    inner = ndimage.binary_erosion(mask, iterations=2)
    # opposite contrast to the EPI template inside the brain
    assert np.corrcoef(np.asarray(template.dataobj)[inner], epi_template[inner])[0, 1] < -0.9
    ijk = np.vstack([np.indices(mask.shape).reshape(3, -1), np.ones(mask.size)])
    for sid, entry in truth["subjects"].items():
        img = nib.load(tmp_path / entry["t1w"]["image"])
        grid = entry["t1w"]["grid"]
        assert "".join(nib.aff2axcodes(img.affine)) == "RAS"
        assert np.allclose(img.header.get_zooms(), 2.0)
        assert not np.allclose(grid["pose"], entry["grid"]["pose"])  # moved between scans
        coords = (np.linalg.inv(img.affine) @ np.asarray(grid["pose"]) @ template.affine
                  @ ijk)[:3]
        back = ndimage.map_coordinates(np.asarray(img.dataobj), coords, order=1)
        r = np.corrcoef(back.reshape(mask.shape)[inner],
                        np.asarray(template.dataobj)[inner])[0, 1]
        assert r > 0.95, sid
    with pytest.raises(ValueError, match="varied_grids"):
        write_cohort(tmp_path / "x", 1, 1, t1w=True)
