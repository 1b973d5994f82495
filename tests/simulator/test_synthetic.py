"""Synthetic subjects: determinism, geometry and planted ground truth, checked independently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from simulator import make_subject, write_subject

SHAPE = (20, 20, 12)
N_VOL = 120
TR = 2.0
ROI_NAMES = {"left_insula", "right_insula", "seed", "target", "homogeneous"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def subject():
    return make_subject(SHAPE, N_VOL, tr=TR, seed=3)


@pytest.fixture(scope="module")
def moving_subject():
    return make_subject(SHAPE, N_VOL, tr=TR, seed=5, motion=True)


def _detrend(ts):
    """Remove the least-squares line along the last axis."""
    t = np.arange(ts.shape[-1], dtype=float)
    t -= t.mean()
    c = ts - ts.mean(axis=-1, keepdims=True)
    return c - (c @ t / (t @ t))[..., None] * t


def _roi_mean(subject, name):
    return subject.data[subject.rois[name]].astype(np.float64).mean(axis=0)


def test_same_seed_same_output():
    a = make_subject(SHAPE, 40, seed=7, motion=True)
    b = make_subject(SHAPE, 40, seed=7, motion=True)
    c = make_subject(SHAPE, 40, seed=8, motion=True)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.truth == b.truth
    assert not np.array_equal(a.data, c.data)


def test_shapes_dtypes_affine(subject):
    assert subject.data.shape == (*SHAPE, N_VOL)
    assert subject.data.dtype == np.float32
    assert subject.mask.shape == SHAPE and subject.mask.dtype == bool
    assert subject.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(subject.affine), [3.0, 3.0, 3.0, 1.0])
    centre = (np.asarray(SHAPE) - 1) / 2.0
    np.testing.assert_allclose(subject.affine @ [*centre, 1.0], [0, 0, 0, 1], atol=1e-12)
    assert subject.tr == TR
    json.dumps(subject.truth)  # serialisable


def test_baseline_inside_brain(subject):
    mean_img = subject.data.mean(axis=-1)
    core = ndimage.binary_erosion(subject.mask, iterations=2)
    assert 900 < np.median(mean_img[core]) < 1100
    assert mean_img[core].std() > 10  # spatial variation
    assert np.abs(mean_img[~subject.mask]).mean() < 300


def test_rois_nonempty_disjoint_inside_mask(subject):
    assert set(subject.rois) == ROI_NAMES
    total = np.zeros(SHAPE, dtype=int)
    for roi in subject.rois.values():
        assert roi.dtype == bool and roi.shape == SHAPE
        assert roi.any()
        assert not (roi & ~subject.mask).any()
        total += roi
    assert total.max() == 1
    for name, roi in subject.rois.items():
        assert subject.truth["roi_voxels"][name] == roi.sum()


def test_insulae_mirror_across_midline(subject):
    left, right = subject.rois["left_insula"], subject.rois["right_insula"]
    np.testing.assert_array_equal(left[::-1], right)
    np.testing.assert_array_equal(subject.mask[::-1], subject.mask)
    x_left = (subject.affine @ np.c_[np.argwhere(left), np.ones(left.sum())].T)[0]
    x_right = (subject.affine @ np.c_[np.argwhere(right), np.ones(right.sum())].T)[0]
    assert (x_left < 0).all() and (x_right > 0).all()  # RAS+: left is -x
    np.testing.assert_allclose(np.sort(x_left), np.sort(-x_right))


def test_left_insula_spectral_peak(subject):
    f0 = subject.truth["alff"]["frequency_hz"]
    series = _detrend(_roi_mean(subject, "left_insula"))
    amp = np.abs(np.fft.rfft(series))
    freqs = np.fft.rfftfreq(N_VOL, d=TR)
    peak = freqs[1:][np.argmax(amp[1:])]
    assert abs(peak - f0) <= 1.0 / (N_VOL * TR)
    # amplitude of the planted sinusoid, from the two bins around f0
    assert 0.6 * subject.truth["alff"]["amplitude"] < 2 * amp.max() / N_VOL


def test_alff_higher_in_left_insula(subject):
    """ALFF (METHODS.md) by plain numpy: left insula vs its mirror and the rest of the brain."""
    ts = _detrend(subject.data[subject.mask].astype(np.float64))
    amp = 2 * np.abs(np.fft.rfft(ts, axis=-1)[:, 1:]) / N_VOL
    freqs = np.fft.rfftfreq(N_VOL, d=TR)[1:]
    alff = amp[:, (freqs >= 0.01) & (freqs <= 0.08)].mean(axis=1)
    roi = {name: r[subject.mask] for name, r in subject.rois.items()}
    rest = ~(roi["left_insula"] | roi["seed"] | roi["target"])
    assert alff[roi["left_insula"]].mean() > 1.5 * alff[rest].mean()
    assert alff[roi["left_insula"]].mean() > 1.5 * alff[roi["right_insula"]].mean()


def test_seed_target_correlation(subject):
    fc = subject.truth["fc"]
    r = np.corrcoef(_roi_mean(subject, "seed"), _roi_mean(subject, "target"))[0, 1]
    assert abs(r - fc["expected_roi_correlation"]) < 0.1
    assert abs(r - fc["correlation"]) < 0.15
    # a region without planted signal is not correlated with the seed
    r_ins = np.corrcoef(_roi_mean(subject, "seed"), _roi_mean(subject, "right_insula"))[0, 1]
    assert abs(r_ins) < 0.3


@pytest.mark.parametrize("rho", [0.6, -0.3])
def test_planted_correlation_exact_without_noise(rho):
    s = make_subject(SHAPE, N_VOL, seed=1, noise_sigma=0.0, drift_fraction=0.0,
                     fc_correlation=rho)
    r = np.corrcoef(_roi_mean(s, "seed"), _roi_mean(s, "target"))[0, 1]
    assert abs(r - rho) < 1e-3
    assert s.truth["fc"]["correlation"] == rho


def test_homogeneous_region_neighbours_correlate(subject):
    """Correlation of each voxel with its +x neighbour: high in the homogeneous ROI only."""
    ts = _detrend(subject.data.astype(np.float64))
    ts /= np.linalg.norm(ts, axis=-1, keepdims=True)
    corr = (ts[:-1] * ts[1:]).sum(axis=-1)  # voxel (i, j, k) with (i + 1, j, k)
    homo = subject.rois["homogeneous"]
    pairs_in = homo[:-1] & homo[1:]
    others = np.zeros(SHAPE, dtype=bool)
    for roi in subject.rois.values():
        others |= ndimage.binary_dilation(roi, iterations=2)
    brain = subject.mask & ~others
    pairs_out = brain[:-1] & brain[1:]
    assert pairs_in.sum() > 5 and pairs_out.sum() > 100
    expected = subject.truth["reho"]["neighbour_correlation"]
    assert abs(corr[pairs_in].mean() - expected) < 0.15
    assert abs(corr[pairs_out].mean()) < 0.05


def test_motion_within_bounds(moving_subject, subject):
    motion = moving_subject.truth["motion"]
    params = np.asarray(motion["parameters"])
    assert params.shape == (N_VOL, 6)
    assert motion["order"] == ["tx", "ty", "tz", "rx", "ry", "rz"]
    np.testing.assert_array_equal(params[0], 0.0)
    assert np.abs(params[:, :3]).max() <= 3.0
    assert np.abs(params[:, 3:]).max() <= 3.0
    assert np.abs(params).max() > 0.1  # it does move
    assert np.abs(np.diff(params, axis=0)).max() < 0.5  # smooth
    assert subject.truth["motion"] is None


def test_motion_matches_recorded_parameters():
    """Undo the recorded motion with an independent resampler: volume t returns to volume 0."""
    s = make_subject(SHAPE, 60, seed=2, motion=True, noise_sigma=0.0, drift_fraction=0.0,
                     alff_amplitude=0.0, fc_amplitude=0.0, max_translation=2.0,
                     max_rotation=2.0)
    params = np.asarray(s.truth["motion"]["parameters"])
    t = int(np.argmax(np.abs(params).sum(axis=1)))
    rot = Rotation.from_euler("XYZ", params[t, 3:], degrees=True).as_matrix()  # Rx Ry Rz
    vox = np.argwhere(np.ones(SHAPE, dtype=bool))
    world = (s.affine @ np.c_[vox, np.ones(len(vox))].T)[:3]
    moved = rot @ world + params[t, :3, None]  # where each reference point went
    coords = np.linalg.solve(s.affine, np.r_[moved, np.ones((1, moved.shape[1]))])[:3]
    undone = ndimage.map_coordinates(s.data[..., t], coords, order=3).reshape(SHAPE)
    core = ndimage.binary_erosion(s.mask, iterations=3)
    ref = s.data[..., 0]
    err_undone = np.sqrt(np.mean((undone - ref)[core] ** 2))
    err_raw = np.sqrt(np.mean((s.data[..., t] - ref)[core] ** 2))
    assert err_raw > 5.0
    assert err_undone < 0.2 * err_raw


def test_bad_parameters():
    with pytest.raises(ValueError, match="shape"):
        make_subject((8, 8, 8), 40)
    with pytest.raises(ValueError, match="fc_correlation"):
        make_subject(SHAPE, 40, fc_correlation=1.5)
    with pytest.raises(ValueError, match="volumes"):
        make_subject(SHAPE, 8)


def test_write_subject_round_trip(subject, tmp_path):
    written = write_subject(subject, tmp_path / "sub")
    assert set(written) == {"bold", "mask", "truth", "truth_series"} | {f"roi-{n}"
                                                                        for n in ROI_NAMES}
    series = np.load(written["truth_series"])
    for name in ("left_insula", "seed", "target"):
        np.testing.assert_array_equal(series[name], subject.series[name])
    img = nib.load(written["bold"])
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), subject.data)
    np.testing.assert_allclose(img.affine, subject.affine)
    assert img.header.get_zooms() == pytest.approx((3.0, 3.0, 3.0, TR))
    assert img.header["pixdim"][4] == pytest.approx(TR)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    mask = nib.load(written["mask"])
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(mask.dataobj).astype(bool), subject.mask)
    for name, roi in subject.rois.items():
        img = nib.load(tmp_path / "sub" / f"roi-{name}.nii.gz")
        assert img.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(img.dataobj).astype(bool), roi)
        np.testing.assert_allclose(img.affine, subject.affine)
    assert json.loads(written["truth"].read_text()) == subject.truth


def test_cli_subject(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "subject", "--out", str(out), "--shape", "16", "16",
         "10", "--volumes", "30", "--tr", "1.5", "--seed", "4", "--motion"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bold.nii.gz" in proc.stdout and "truth.json" in proc.stdout
    img = nib.load(out / "bold.nii.gz")
    assert img.shape == (16, 16, 10, 30)
    assert img.header.get_zooms()[3] == pytest.approx(1.5)
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] == 4 and len(truth["motion"]["parameters"]) == 30
    assert (out / "roi-left_insula.nii.gz").exists()


def test_cli_bad_shape(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "subject", "--out", str(tmp_path), "--shape", "4",
         "4", "4"], capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "shape" in proc.stderr
