"""Report content: per-block summary, metric labels/baseline, latency axis, ROI overlay."""

import numpy as np
import pytest

from rtfb.session import report_blocks
from rtfb.session.record_reader import load_record
from rtfb.session.report import build_report_html, write_report
from tests.session._fake_record import write_fake_session

PROTOCOL = {"metric": {"kind": "alff", "roi": "left_insula"},
            "feedback": {"baseline": "block:baseline"}}


def _volumes():
    out = []
    blocks = [(0, "baseline", 4), (1, "regulate", 4), (2, "rest", 2)]
    i = 0
    metric = [None, 2.0, 2.0, 2.0, 1.0, 1.5, 1.0, 1.5, 3.0, 3.0]
    shown = [None] * 4 + [0.9, 0.5, 0.8, None] + [None] * 2
    for b, cond, n in blocks:
        for _ in range(n):
            out.append({"index": i, "block": {"index": b, "condition": cond},
                        "metrics": {"alff": metric[i]}, "feedback": shown[i],
                        "target": 0.75})
            i += 1
    return out


def test_block_rows_by_hand():
    rows = report_blocks.block_rows(_volumes(), PROTOCOL, {i: 0.75 for i in range(10)})
    assert [r["condition"] for r in rows] == ["baseline", "regulate", "rest"]
    reg = rows[1]
    assert reg["volumes"] == "4–7" and reg["n_shown"] == 3
    assert reg["mean_feedback"] == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert reg["time_above_target"] == pytest.approx(2 / 3)
    assert reg["metric_mean"] == pytest.approx(1.25)
    assert reg["metric_change"] == pytest.approx(-0.75)  # baseline mean 2.0 (warm-up skipped)
    assert reg["metric_change_percent"] == pytest.approx(-37.5)
    assert np.isnan(rows[0]["mean_feedback"]) and rows[2]["metric_change"] == pytest.approx(1)


def test_metric_labels_name_roi_and_unit():
    assert report_blocks.metric_label(PROTOCOL, "alff") == "alff\nleft_insula\n(signal units)"
    fc = {"metric": {"kind": "roi_fc", "seed": "a", "target": "b"}}
    assert report_blocks.metric_label(fc, "roi_fc") == "roi_fc\na → b\n(Fisher z)"
    diff = {"metric": {"kind": "psc", "roi": "a", "subtract_roi": "b"}}
    assert report_blocks.metric_label(diff, "psc") == "psc\na − b\n(%)"
    assert report_blocks.metric_label(diff, "psc_b") == "psc_b\nb\n(%)"
    assert report_blocks.baseline_value(_volumes(), PROTOCOL, "alff") == pytest.approx(2.0)


def test_latency_axis_is_log_only_with_a_slow_outlier():
    rng = np.random.default_rng(0)
    normal = rng.uniform(5, 15, 300)
    bins, log = report_blocks.latency_bins(normal, float(np.median(normal)))
    assert not log and np.ndim(bins) == 0
    slow = np.append(normal, 3300.0)  # volume 0 took 3.3 s
    bins, log = report_blocks.latency_bins(slow, float(np.median(slow)))
    assert log and bins[0] <= normal.min() and bins[-1] >= 3300.0
    counts, _ = np.histogram(slow, bins)
    assert (counts > 0).sum() >= 5  # the normal volumes spread over several bars, not one


def test_report_has_block_table_and_roi_overlay(tmp_path):
    folder = write_fake_session(tmp_path / "s")["dir"]
    html = build_report_html(load_record(folder))
    assert 'id="blocks"' in html and "time above target" in html
    # with recorded ROIs, the placement figure appears
    import nibabel as nib

    from tests.session._fake_record import AFFINE, SHAPE

    (folder / "rois").mkdir(exist_ok=True)
    roi = np.zeros(SHAPE, np.uint8)
    roi[3:5, 3:5, 2:4] = 1
    nib.save(nib.Nifti1Image(roi, AFFINE), folder / "rois" / "roi-left_insula.nii.gz")
    text = write_report(folder).read_text()
    assert 'id="rois"' in text and 'alt="ROIs over the mean EPI"' in text
