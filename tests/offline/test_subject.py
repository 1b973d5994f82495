"""One run: the real-time Preprocessor offline, then the batch kernels, written as BIDS
derivatives; resume and overwrite."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import rtfb
from rtfb.ingest.nifti import iter_nifti_volumes
from rtfb.metrics import alff, degree_centrality, falff, malff, reho, seed_fc, vmhc, zalff
from rtfb.offline import subject as subject_mod
from rtfb.offline.subject import AnalysisConfig, default_seeds, process_subject
from rtfb.preprocess.masks import load_mask
from rtfb.preprocess.pipeline import Preprocessor

from ._cohort_data import N_VOLUMES, SHAPE, write_tiny_cohort

TR = 2.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_tiny_cohort(tmp_path_factory.mktemp("bids"), 1, 1)


@pytest.fixture(scope="module")
def processed(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("deriv")
    bold = cohort / "sub-01/func/sub-01_task-rest_bold.nii.gz"
    return bold, out, process_subject(bold, TR, out)


def _expected(bold, cohort):
    """Preprocessor fed volume by volume, then the kernels: computed here independently."""
    volumes = list(iter_nifti_volumes(bold))
    pre = Preprocessor(n_expected=len(volumes), tr=TR).fit(volumes[0])
    raw = np.stack([pre.transform(v).uncleaned.copy() for v in volumes])
    data = pre.run_residuals(raw).T  # checked against lstsq in tests/preprocess
    mask, affine = pre.mask_, pre.affine_
    grid = np.zeros(mask.shape + (data.shape[1],))
    grid[mask] = data

    def full(values):
        out = np.zeros(mask.shape)
        out[mask] = values
        return out

    a = full(alff(data, TR, (0.01, 0.08)))
    exp = {"ALFF": a, "fALFF": full(falff(data, TR, (0.01, 0.08))), "mALFF": malff(a, mask),
           "zALFF": zalff(a, mask), "ReHo": reho(grid, mask, 27),
           "DCbinary": degree_centrality(grid, mask, 0.25, weighted=False),
           "DCweighted": degree_centrality(grid, mask, 0.25, weighted=True),
           "VMHC": vmhc(grid, mask, affine), "mask": mask}
    for name, key in (("left_insula", "FCLeftInsula"), ("right_insula", "FCRightInsula")):
        roi = load_mask(cohort / f"derivatives/truth/roi-{name}.nii.gz", affine, mask.shape)
        exp[key] = full(seed_fc(grid[roi & mask].mean(axis=0), data))
    return exp, affine


def test_maps_equal_kernels_on_preprocessed_data(processed, cohort):
    bold, out, paths = processed
    expected, affine = _expected(bold, cohort)
    assert set(expected) <= set(paths)
    for key, exp in expected.items():
        img = nib.load(paths[key])
        np.testing.assert_allclose(img.affine, affine)
        got = np.asarray(img.dataobj)
        assert got.shape == SHAPE
        dtype = np.uint8 if key == "mask" else np.float32
        np.testing.assert_array_equal(got, exp.astype(dtype), err_msg=key)
    assert np.abs(expected["ALFF"]).max() > 0 and np.abs(expected["FCLeftInsula"]).max() > 0


def test_layout_and_sidecars(processed, cohort):
    bold, out, paths = processed
    func = out / "rtfb/sub-01/func"
    for metric in ("ALFF", "fALFF", "mALFF", "zALFF", "ReHo", "FCLeftInsula", "FCRightInsula",
                   "DCbinary", "DCweighted", "VMHC"):
        path = func / f"sub-01_task-rest_desc-{metric}_map.nii.gz"
        assert paths[metric] == path and path.is_file()
        meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert meta["Metric"] == metric
        assert meta["RepetitionTime"] == TR and meta["Window"] == "whole run"
        assert meta["NumberOfVolumes"] == N_VOLUMES
        assert meta["GeneratedBy"][0] == {"Name": "rtfb", "Version": rtfb.__version__}
        pp = meta["Preprocessing"]
        assert pp["glm"] == "cumulative" and pp["realign"] is True
        assert meta["Sources"] == [str(bold)]
    alff_meta = json.loads((func / "sub-01_task-rest_desc-ALFF_map.json").read_text())
    assert alff_meta["Band"] == [0.01, 0.08] and alff_meta["Kernel"] == "rtfb.metrics.alff"
    reho_meta = json.loads((func / "sub-01_task-rest_desc-ReHo_map.json").read_text())
    assert reho_meta["Neighborhood"] == 27
    fc_meta = json.loads((func / "sub-01_task-rest_desc-FCLeftInsula_map.json").read_text())
    assert fc_meta["Seed"]["Definition"].endswith("roi-left_insula.nii.gz")
    dc_meta = json.loads((func / "sub-01_task-rest_desc-DCweighted_map.json").read_text())
    assert dc_meta["Threshold"] == 0.25 and dc_meta["Weighted"] is True
    assert paths["mask"] == func / "sub-01_task-rest_desc-brain_mask.nii.gz"
    conf = paths["confounds"].read_text().splitlines()
    assert conf[0].split("\t")[:3] == ["trans_x", "trans_y", "trans_z"]
    assert len(conf) == N_VOLUMES + 1
    done = json.loads(paths["done"].read_text())
    assert paths["done"] == out / "rtfb/sub-01/sub-01_task-rest_done.json"
    assert done["skipped"] == {} and set(done["outputs"]) == set(paths) - {"done"}
    assert not list(func.glob(".tmp*"))


def test_resume_skip_and_overwrite(cohort, tmp_path, monkeypatch):
    bold = cohort / "sub-02/func/sub-02_task-rest_bold.nii.gz"
    calls = []
    real = subject_mod.preprocess_run

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(subject_mod, "preprocess_run", counting)
    first = process_subject(bold, TR, tmp_path)
    mtime = first["ALFF"].stat().st_mtime_ns
    assert process_subject(bold, TR, tmp_path) == first and len(calls) == 1
    assert first["ALFF"].stat().st_mtime_ns == mtime
    again = process_subject(bold, TR, tmp_path, overwrite=True)
    assert len(calls) == 2 and again == first
    # another configuration is not "done"
    process_subject(bold, TR, tmp_path, AnalysisConfig(dc_threshold=0.3))
    assert len(calls) == 3
    # a missing output (or marker) means not done
    first["ReHo"].unlink()
    process_subject(bold, TR, tmp_path, AnalysisConfig(dc_threshold=0.3))
    assert len(calls) == 4 and first["ReHo"].is_file()


def test_vmhc_skipped_on_asymmetric_grid(cohort, tmp_path):
    img = nib.load(cohort / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    affine = img.affine.copy()
    affine[0, 3] += 20.0
    bold = tmp_path / "bids/sub-07/func/sub-07_task-rest_bold.nii.gz"
    bold.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), bold)
    centre = affine @ np.r_[np.array(SHAPE) / 2, 1]
    config = AnalysisConfig(seeds={"middle": tuple(centre[:3])})
    paths = process_subject(bold, TR, tmp_path / "deriv", config)
    assert "VMHC" not in paths and "FCMiddle" in paths
    done = json.loads(paths["done"].read_text())
    assert "not symmetric" in done["skipped"]["VMHC"]
    meta = json.loads(paths["FCMiddle"].with_name(
        "sub-07_task-rest_desc-FCMiddle_map.json").read_text())
    assert meta["Seed"]["Definition"]["RadiusMM"] == 6.0


def test_default_seeds(cohort, tmp_path):
    assert default_seeds(cohort) == {
        "left_insula": str(cohort / "derivatives/truth/roi-left_insula.nii.gz"),
        "right_insula": str(cohort / "derivatives/truth/roi-right_insula.nii.gz")}
    assert default_seeds(tmp_path) == {"left_insula": (-38.0, 4.0, 2.0),
                                       "right_insula": (38.0, 4.0, 2.0)}


def test_bad_inputs(cohort, tmp_path):
    with pytest.raises(ValueError, match="expected a BIDS name"):
        process_subject(tmp_path / "run.nii.gz", TR, tmp_path)
    bold = cohort / "sub-01/func/sub-01_task-rest_bold.nii.gz"
    far = AnalysisConfig(seeds={"far": (500.0, 0.0, 0.0)})
    with pytest.raises(ValueError, match="far"):
        process_subject(bold, TR, tmp_path, far)
