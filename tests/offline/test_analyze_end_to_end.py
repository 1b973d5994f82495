"""rtfb analyze on simulator cohorts: the planted left-insula ALFF effect is found."""

import nibabel as nib
import numpy as np
import pandas as pd

from rtfb.cli import main
from simulator.cohort import write_cohort


def _cohort(tmp_path, null):
    bids = tmp_path / ("null" if null else "planted")
    write_cohort(bids, n_patients=8, n_controls=8, null=null, seed=3, shape=(16, 16, 10),
                 n_volumes=64, tr=2.0, slope=6.0)
    return bids


def _run(bids, tmp_path, capsys):
    out = tmp_path / f"deriv-{bids.name}"
    code = main(["analyze", str(bids), "--out", str(out), "--scheduler", "synchronous",
                 "--quiet", "--metrics", "alff", "--permutations", "500",
                 "--ica-components", "none", "--atlas", "none", "--classify-permutations",
                 "19"])
    text = capsys.readouterr().out
    assert code == 0, text
    return out, text


def test_planted_insula_effect_found(planted_cohort):
    bids, out, text = planted_cohort.bids, planted_cohort.deriv, planted_cohort.stdout
    assert "group analysis" in text and "ICA components" in text and "graph of" in text
    truth_roi = nib.load(bids / "derivatives" / "truth" / "roi-left_insula.nii.gz")
    roi = np.asarray(truth_roi.dataobj) > 0
    p_fwe = np.asarray(nib.load(out / "group" / "alff_patVsCon_pfwe.nii.gz").dataobj)
    t_map = np.asarray(nib.load(out / "group" / "alff_patVsCon_t.nii.gz").dataobj)
    significant = (p_fwe < 0.05) & (t_map > 0)
    assert significant[roi].mean() > 0.5  # most of the planted ROI survives FWE
    assert significant[~roi].sum() <= 0.05 * (~roi).sum()
    clusters = pd.read_csv(out / "group" / "clusters.tsv", sep="\t")
    top = clusters[clusters["contrast"] == "patVsCon"].iloc[0]
    peak = np.round(np.linalg.inv(truth_roi.affine) @ [top.peak_x, top.peak_y, top.peak_z, 1])
    assert roi[tuple(peak[:3].astype(int))]
    assert (out / "report.html").exists()
    # every subject has its maps in the derivatives layout
    maps = sorted((out / "rtfb").glob("sub-*/func/*_desc-ALFF_map.nii.gz"))
    assert len(maps) == 16
    # the nested-CV classifier of the ALFF maps is clearly above chance
    row = _classification(out)
    assert row["value"] >= 0.8 and row["ci_low"] > row["chance"] == 0.5
    assert row["p_value"] < 0.05


def _classification(out):
    table = pd.read_csv(out / "group" / "classification.tsv", sep="\t")
    row = table.set_index("analysis").loc["patients vs controls"]
    assert 0 <= row["ci_low"] <= row["value"] <= row["ci_high"] <= 1
    return row


def test_resume_skips_finished_subjects(planted_cohort):
    bids, out = planted_cohort.bids, planted_cohort.deriv
    before = {p: p.stat().st_mtime_ns for p in (out / "rtfb").glob("sub-*/func/*ALFF_map*")}
    assert before
    assert main(["analyze", str(bids), "--out", str(out), "--scheduler", "synchronous",
                 "--quiet", "--no-group"]) == 0
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before


def test_null_cohort_finds_nothing_in_the_roi(tmp_path, capsys):
    bids = _cohort(tmp_path, null=True)
    out, _ = _run(bids, tmp_path, capsys)
    p_fwe = np.asarray(nib.load(out / "group" / "alff_patVsCon_pfwe.nii.gz").dataobj)
    roi = np.asarray(nib.load(bids / "derivatives" / "truth" /
                              "roi-left_insula.nii.gz").dataobj) > 0
    assert not (p_fwe[roi] < 0.05).any()
    # no leakage: on the null cohort the accuracy is at chance, within its interval
    row = _classification(out)
    assert row["ci_low"] <= row["chance"] <= row["ci_high"]
    assert row["p_value"] > 0.05


def test_bad_scheduler_address(tmp_path, capsys, planted_cohort):
    bids = planted_cohort.bids
    code = main(["analyze", str(bids), "--out", str(tmp_path / "d"), "--scheduler",
                 "tcp://127.0.0.1:9", "--quiet", "--no-group"])
    assert code == 2
    assert "tcp://127.0.0.1:9" in capsys.readouterr().err
