"""``rtfb analyze --pipeline dpabi``: DPARSF's order of steps with DPABI's conventions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtfb.ingest.nifti import iter_nifti_volumes
from rtfb.metrics import alff, degree_centralities, falff, reho, seed_fc, vmhc, zalff
from rtfb.offline.subject import AnalysisConfig, process_subject
from rtfb.preprocess import bandpass
from rtfb.preprocess.masks import load_mask
from rtfb.preprocess.pipeline import Preprocessor

from ._cohort_data import write_tiny_cohort

TR = 2.0
BAND = (0.01, 0.1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_tiny_cohort(tmp_path_factory.mktemp("bids"), 1, 1)


def _cleaned(bold):
    volumes = list(iter_nifti_volumes(bold))
    pre = Preprocessor(n_expected=len(volumes), tr=TR).fit(volumes[0])
    raw = np.stack([pre.transform(v).uncleaned.copy() for v in volumes])
    return pre.run_residuals(raw).T, pre.mask_, pre.affine_


def test_dpabi_pipeline_order_and_sidecars(cohort, tmp_path):
    bold = cohort / "sub-01/func/sub-01_task-rest_bold.nii.gz"
    config = AnalysisConfig(pipeline="dpabi", band=BAND)
    paths = process_subject(bold, TR, tmp_path, config)
    data, mask, affine = _cleaned(bold)

    def full(values):
        out = np.zeros(mask.shape)
        out[mask] = values
        return out

    # ALFF before the filter (DPABI's padded definition), the rest after it
    a = full(alff(data, TR, BAND, convention="dpabi"))
    filt = bandpass(data, TR, BAND, convention="dpabi")
    grid = np.zeros(mask.shape + (filt.shape[1],))
    grid[mask] = filt
    dc_b, dc_w = degree_centralities(grid, mask, 0.25, convention="dpabi")
    roi = load_mask(cohort / "derivatives/truth/roi-left_insula.nii.gz", affine, mask.shape)
    expected = {
        "ALFF": a, "fALFF": full(falff(data, TR, BAND, convention="dpabi")),
        "zALFF": zalff(a, mask, convention="dpabi"),
        "ReHo": reho(grid, mask, 27, convention="dpabi"), "DCbinary": dc_b, "DCweighted": dc_w,
        "VMHC": vmhc(grid, mask, affine, convention="dpabi"),
        "FCLeftInsula": full(seed_fc(grid[roi & mask].mean(axis=0), filt, convention="dpabi")),
    }
    for key, exp in expected.items():
        got = np.asarray(nib.load(paths[key]).dataobj)
        np.testing.assert_array_equal(got, exp.astype(np.float32), err_msg=key)
    # the filter changes the maps: ReHo of the unfiltered series is a different map
    unfiltered = np.zeros_like(grid)
    unfiltered[mask] = data
    assert np.abs(reho(unfiltered, mask, 27, convention="dpabi") - expected["ReHo"]).max() > 0.01
    reho_side = json.loads(Path(str(paths["ReHo"]).replace(".nii.gz", ".json")).read_text())
    alff_side = json.loads(Path(str(paths["ALFF"]).replace(".nii.gz", ".json")).read_text())
    for side in (reho_side, alff_side):
        assert side["Convention"] == "dpabi" and side["Pipeline"]["Name"] == "dpabi"
        assert any("band-pass 0.01-0.1 Hz" in step for step in side["Pipeline"]["Steps"])
    assert reho_side["Input"] == "cleaned series band-passed 0.01-0.1 Hz"
    assert alff_side["Input"] == "cleaned series (no temporal filter)"
    assert alff_side["Band"] == [0.01, 0.1]


def test_bad_pipeline_rejected():
    with pytest.raises(ValueError, match="'pipeline' parameter"):
        AnalysisConfig(pipeline="cpac2")


def _rtfb():
    exe = Path(sys.executable).parent / "rtfb"
    if not exe.is_file():
        pytest.skip("rtfb console script not installed next to the interpreter")
    return str(exe)


def test_cli_pipeline_and_band(cohort, tmp_path):
    out = tmp_path / "deriv"
    proc = subprocess.run([_rtfb(), "analyze", str(cohort), "--out", str(out), "--scheduler",
                           "synchronous", "--quiet", "--no-group", "--pipeline", "dpabi",
                           "--band", "0.01", "0.1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sides = sorted(out.glob("rtfb/sub-*/func/*_desc-DCbinary_map.json"))
    assert len(sides) == 2
    side = json.loads(sides[0].read_text())
    assert side["Convention"] == "dpabi"
    assert side["Input"] == "cleaned series band-passed 0.01-0.1 Hz"
    bad = subprocess.run([_rtfb(), "analyze", str(cohort), "--out", str(out), "--band", "0.1",
                          "0.01"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "--band must be LOW HIGH in Hz with 0 <= LOW < HIGH" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
