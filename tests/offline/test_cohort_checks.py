"""Cohort checks: runs of another length or TR, clinical scores, degrees of freedom, quiet Dask.

The end-to-end test runs the installed ``rtfb`` console script (as a user would) on a tiny
simulator cohort with one short run, a local Dask cluster and the group stage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from rtfb.offline.bids import BIDSError, load_dataset, read_participants
from rtfb.offline.group_common import model_warnings
from rtfb.offline.stats import two_sample_design

from .test_bids import _participants, _run

RTFB = shutil.which("rtfb", path=str(Path(sys.executable).parent))


@pytest.fixture
def four(tmp_path):
    for sub in ("sub-01", "sub-02", "sub-03", "sub-04"):
        _run(tmp_path, sub, n=8)
    _participants(tmp_path, [("sub-01", "patient", "5"), ("sub-02", "patient", "7"),
                             ("sub-03", "control", "0"), ("sub-04", "control", "n/a")],
                  ("participant_id", "group", "vas"))
    return tmp_path


def test_short_run_excluded_with_reason(four):
    _run(four, "sub-02", n=3)
    ds = load_dataset(four)
    assert ds.subjects == ["sub-01", "sub-03", "sub-04"]
    (path, why), = ds.excluded.items()
    assert path.name == "sub-02_task-rest_bold.nii.gz"
    assert "3 volumes instead of 8" in why
    assert ds.dropped == ("sub-02",)
    assert list(ds.participants.index) == ["sub-01", "sub-03", "sub-04"]
    assert any("sub-02_task-rest_bold.nii.gz" in w for w in ds.warnings)
    assert any("sub-02" in w and "dropped" in w for w in ds.warnings)


def test_other_tr_refused_when_asked(four):
    _run(four, "sub-03", n=8, tr=2.5)
    with pytest.raises(BIDSError, match=r"sub-03_task-rest_bold\.nii\.gz: TR 2\.5 s instead "
                                        r"of 2 s"):
        load_dataset(four, mismatched_runs="refuse")
    assert "TR 2.5 s" in next(iter(load_dataset(four).excluded.values()))


@pytest.mark.parametrize("value, message", [
    ("abc", r"line 3 \(sub-02\): vas must be a number or n/a, got 'abc'"),
    ("-5", r"line 3 \(sub-02\): vas must be on the VAS scale 0-10 .*got '-5'"),
    ("101", r"line 3 \(sub-02\): vas must be on the VAS scale 0-100 .*got '101'"),
    ("inf", r"line 3 \(sub-02\): vas must be a finite number"),
])
def test_bad_vas_refused_with_file_and_line(four, value, message):
    _participants(four, [("sub-01", "patient", "5"), ("sub-02", "patient", value),
                         ("sub-03", "control", "0"), ("sub-04", "control", "1")],
                  ("participant_id", "group", "vas"))
    with pytest.raises(BIDSError, match=r"participants\.tsv, " + message):
        load_dataset(four)


def test_vas_scale(four):
    rows = [("sub-01", "patient", "55"), ("sub-02", "patient", "70"),
            ("sub-03", "control", "0"), ("sub-04", "control", "5")]
    _participants(four, rows, ("participant_id", "group", "vas"))
    assert read_participants(four / "participants.tsv")["vas"].max() == 70  # 0-100 inferred
    (four / "participants.json").write_text(json.dumps({"vas": {"Maximum": 10}}))
    with pytest.raises(BIDSError, match=r"line 2 \(sub-01\): vas must be on the VAS scale "
                                        r"0-10"):
        read_participants(four / "participants.tsv")
    (four / "participants.json").write_text(json.dumps({"vas": {"Maximum": 7}}))
    with pytest.raises(BIDSError, match=r"participants\.json: vas\.Maximum must be 10 or 100"):
        read_participants(four / "participants.tsv")


def test_bad_age_refused(four):
    _participants(four, [("sub-01", "patient", "40"), ("sub-02", "patient", "forty"),
                         ("sub-03", "control", "30"), ("sub-04", "control", "35")],
                  ("participant_id", "group", "age"))
    with pytest.raises(BIDSError, match=r"line 3 \(sub-02\): age must be a number"):
        load_dataset(four)
    _participants(four, [("sub-01", "patient", "-1"), ("sub-02", "patient", "40"),
                         ("sub-03", "control", "30"), ("sub-04", "control", "35")],
                  ("participant_id", "group", "age"))
    with pytest.raises(BIDSError, match=r"line 2 \(sub-01\): age must be > 0 years"):
        load_dataset(four)


def test_model_warnings_small_df_and_permutations():
    # 6 subjects, two covariates: df 2 (the blank-map case)
    rng = np.random.default_rng(0)
    design, contrast = two_sample_design([1, 1, 1, 0, 0, 0], rng.normal(size=(6, 2)))
    text = " ".join(model_warnings("patients > controls", design, contrast, 170.0, 0.05, 1000))
    assert "only 2 residual degrees of freedom" in text and "170" in text
    # plain 3 vs 2 two-sample test: C(5, 2) = 10 distinct label permutations < 1 / 0.05
    design, contrast = two_sample_design([1, 1, 1, 0, 0])
    text = " ".join(model_warnings("x", design, contrast, 9.0, 0.05, 1000))
    assert "only 10 distinct permutations" in text
    design, contrast = two_sample_design(np.r_[np.ones(10), np.zeros(10)])
    assert model_warnings("x", design, contrast, 3.0, 0.05, 1000) == []


def test_cli_refuses_bad_vas_without_traceback(four, tmp_path):
    assert RTFB is not None, "the rtfb console script is not installed in this venv"
    _participants(four, [("sub-01", "patient", "5"), ("sub-02", "patient", "abc"),
                         ("sub-03", "control", "0"), ("sub-04", "control", "1")],
                  ("participant_id", "group", "vas"))
    proc = subprocess.run([RTFB, "analyze", str(four), "--out", str(tmp_path / "d"),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"{four / 'participants.tsv'}, line 3 (sub-02)" in proc.stderr
    assert not (tmp_path / "d" / "rtfb").exists()  # refused before any work


def test_cli_cohort_checks_end_to_end(tmp_path):
    """Short run excluded and reported, df warning, group progress, quiet Dask shutdown."""
    from simulator.cohort import write_cohort

    bids = tmp_path / "bids"
    write_cohort(bids, 4, 3, seed=5, shape=(16, 16, 10), n_volumes=40)
    short = bids / "sub-04/func/sub-04_task-rest_bold.nii.gz"
    img = nib.load(short)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :10], img.affine, img.header), short)
    out = tmp_path / "deriv"
    proc = subprocess.run(
        [RTFB, "analyze", str(bids), "--out", str(out), "--n-workers", "2", "--metrics",
         "alff", "--permutations", "50", "--ica-components", "none", "--atlas", "none",
         "--classify-metric", ""],
        capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    assert "still alive" not in text and "killing" not in text.lower()
    assert "distributed" not in proc.stderr and "Warning" not in proc.stderr  # Dask is quiet
    assert f"warning: excluded {short}: 10 volumes instead of 40" in proc.stdout
    assert "sub-04" in proc.stdout and "dropped" in proc.stdout
    # 3 patients + 3 controls with age and sex: df 2, flagged on the terminal and the report
    assert "warning: patients > controls: only 2 residual degrees of freedom" in proc.stdout
    assert "group: " in text  # the group stage's progress
    report = (out / "report.html").read_text()
    warnings = report[report.index('id="warnings"'):report.index('id="methods"')]
    assert "only 2 residual degrees of freedom" in warnings
    assert "sub-04_task-rest_bold.nii.gz" in warnings
    subjects = pd.read_csv(out / "group" / "subjects.tsv", sep="\t")
    assert "sub-04" not in set(subjects["participant_id"]) and len(subjects) == 6
    assert not (out / "rtfb" / "sub-04").exists()
