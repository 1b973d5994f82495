"""``rtfb analyze DERIV --input fmriprep``: fMRIPrep-layout runs, nilearn confound strategies.

The dataset is the simulator's cohort written in fMRIPrep's layout with planted nuisance
signals whose time courses are confound columns (simulator.fmriprep): the oracle is the
*raw* synthetic run cleaned by numpy least squares on the same regressors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtfb.metrics import alff
from rtfb.offline.bids import BIDSError, find_runs
from rtfb.offline.fmriprep import load_fmriprep_confounds, preprocess_fmriprep_run

RTFB = shutil.which("rtfb", path=str(Path(sys.executable).parent))
BOLD = "sub-01/func/sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
RAW = "sourcedata/raw/sub-01/func/sub-01_task-rest_bold.nii.gz"
MOTION24 = {f"{p}{s}" for p in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
            for s in ("", "_derivative1", "_power2", "_derivative1_power2")}


@pytest.fixture(scope="module")
def fmriprep_dir(tmp_path_factory):
    from simulator.fmriprep import write_fmriprep

    root = tmp_path_factory.mktemp("fmriprep")
    write_fmriprep(root, 2, 2, seed=3, shape=(16, 16, 10), n_volumes=40)
    return root


def test_runs_found_only_in_mni_space(fmriprep_dir):
    other = fmriprep_dir / BOLD.replace("MNI152NLin2009cAsym", "T1w")
    shutil.copy(fmriprep_dir / BOLD, other)
    try:
        runs = find_runs(fmriprep_dir, input="fmriprep")
        assert [r.subject for r in runs] == ["sub-01", "sub-02", "sub-03", "sub-04"]
        assert all("space-MNI152NLin2009cAsym" in r.path.name for r in runs)
        assert runs[0].tr == 2.0
    finally:
        other.unlink()
    with pytest.raises(BIDSError, match="desc-preproc_bold"):
        find_runs(fmriprep_dir / "sourcedata" / "raw", input="fmriprep")


@pytest.mark.parametrize("strategy, expected", [
    ("simple", MOTION24 | {"white_matter", "csf"}),
    ("simple+gsr", MOTION24 | {"white_matter", "csf", "global_signal"}),
    ("motion24-wmcsf", MOTION24 | {"white_matter", "csf"}),
    ("compcor", MOTION24 | {f"a_comp_cor_{k:02d}" for k in range(5)}),
])
def test_strategy_columns(fmriprep_dir, strategy, expected):
    confounds, sample_mask, desc = load_fmriprep_confounds(fmriprep_dir / BOLD, strategy)
    cosines = {c for c in confounds.columns if c.startswith("cosine")}
    assert set(confounds.columns) - cosines == expected
    assert bool(cosines) == (strategy != "motion24-wmcsf")  # high-pass except motion24-wmcsf
    assert sample_mask is None and desc["Strategy"] == strategy


def test_scrubbing_censors_the_spike(fmriprep_dir):
    _, sample_mask, _ = load_fmriprep_confounds(fmriprep_dir / BOLD, "scrubbing")
    assert sorted(set(range(40)) - set(sample_mask)) == [7]  # FD 0.9 mm planted at volume 7


def _oracle(fmriprep_dir, strategy, mask):
    """The raw (nuisance-free) run, least-squares cleaned on [1, t, confounds] (retained)."""
    confounds, sample_mask, _ = load_fmriprep_confounds(fmriprep_dir / BOLD, strategy)
    kept = np.arange(40) if sample_mask is None else np.asarray(sample_mask)
    raw = np.asarray(nib.load(fmriprep_dir / RAW).dataobj, dtype=float)[mask][:, kept].T
    X = np.column_stack([np.ones(kept.size), np.arange(kept.size),
                         confounds.to_numpy(float)[kept]])
    return (raw - X @ np.linalg.lstsq(X, raw, rcond=None)[0]).T


@pytest.mark.parametrize("strategy", ["simple", "scrubbing", "compcor"])
def test_cleaning_removes_the_planted_nuisance(fmriprep_dir, strategy):
    pre = preprocess_fmriprep_run(fmriprep_dir / BOLD, 2.0, strategy)
    expected = _oracle(fmriprep_dir, strategy, pre["mask"])
    assert pre["data"].shape == expected.shape
    # float32 files of values ~1000 with a planted nuisance of SD 30: agreement to 1e-6 of
    # the signal level (the nuisance alone would leave residuals of ~30)
    np.testing.assert_allclose(pre["data"], expected, atol=1e-3)
    assert pre["censored"].sum() == (1 if strategy == "scrubbing" else 0)
    assert pre["preprocessing"]["Confounds"]["Strategy"] == strategy


def test_cli_fmriprep_end_to_end(fmriprep_dir, tmp_path):
    assert RTFB is not None
    out = tmp_path / "deriv"
    roi = fmriprep_dir / "sourcedata/raw/derivatives/truth/roi-left_insula.nii.gz"
    proc = subprocess.run(
        [RTFB, "analyze", str(fmriprep_dir), "--input", "fmriprep", "--confounds",
         "compcor", "--out", str(out), "--scheduler", "synchronous", "--quiet",
         "--seed-roi", f"li={roi}", "--metrics", "alff", "--covariates",
         "--permutations", "20", "--ica-components", "none", "--atlas", "none",
         "--classify-metric", ""], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 runs" in proc.stdout and "Traceback" not in proc.stderr
    func = out / "rtfb/sub-01/func"
    stem = "sub-01_task-rest_space-MNI152NLin2009cAsym"
    sidecars = sorted(func.glob(f"{stem}_desc-*_map.json"))
    assert len(sidecars) >= 8
    for path in sidecars:  # the strategy is named in every sidecar
        conf = json.loads(path.read_text())["Preprocessing"]["Confounds"]
        assert conf["Strategy"] == "compcor" and "a_comp_cor_00" in conf["Columns"]
    # the ALFF map is the batch kernel on the oracle-cleaned raw run
    mask = np.asarray(nib.load(func / f"{stem}_desc-brain_mask.nii.gz").dataobj) > 0
    got = np.asarray(nib.load(func / f"{stem}_desc-ALFF_map.nii.gz").dataobj)[mask]
    np.testing.assert_allclose(got, alff(_oracle(fmriprep_dir, "compcor", mask), 2.0),
                               rtol=1e-4, atol=1e-4)
    assert (out / "group" / "alff_patVsCon_t.nii.gz").is_file()
    # a confound strategy without --input fmriprep is refused
    proc = subprocess.run([RTFB, "analyze", str(fmriprep_dir), "--out", str(tmp_path / "x"),
                           "--confounds", "simple"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--input fmriprep" in proc.stderr
