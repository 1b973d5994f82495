import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine
from nibabel.processing import resample_from_to

from rtfb.ingest.volume import Volume
from rtfb.preprocess.masks import (
    compute_brain_mask,
    load_mask,
    mni_roi_to_native,
    resample_roi,
    sphere_roi,
)
from rtfb.preprocess.registration import _euler, register_to_mni

DATA = Path(__file__).parents[2].parent / "shared" / "data" / "pyneal"
TEMPLATE = DATA / "MNI152_T1_2mm_brain.nii.gz"


def grid(zoom=3.0, shape=(20, 22, 18), origin=(-30.0, -33.0, -27.0)):
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = origin
    return affine, shape


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# ---------------------------------------------------------------------- brain mask


def synthetic_head(rng, shape=(40, 44, 36)):
    """Bright ellipsoid brain with a dark 'ventricle', dim scalp ring, noisy background."""
    c = (np.array(shape) - 1) / 2
    ijk = np.indices(shape).transpose(1, 2, 3, 0) - c
    r = np.sqrt(((ijk / (np.array(shape) * 0.35)) ** 2).sum(-1))
    brain = r <= 1
    data = np.where(brain, 800.0, 0.0)
    data[(r > 1.15) & (r <= 1.25)] = 150.0  # scalp, separated from the brain by a dark gap
    ventricle = ((ijk / np.array([3, 5, 3])) ** 2).sum(-1) <= 1
    data[ventricle] = 60.0
    data += np.abs(rng.normal(0, 15, shape))
    return data.astype(np.float32), brain


def test_compute_brain_mask_fills_holes_and_drops_scalp(rng):
    data, brain = synthetic_head(rng)
    mask = compute_brain_mask(data)
    assert mask.dtype == bool and mask.shape == data.shape
    assert dice(mask, brain) > 0.95
    assert mask[tuple(s // 2 for s in data.shape)]  # dark ventricle filled
    assert not mask[0].any()  # background / scalp excluded
    # same result from a NIfTI image
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    np.testing.assert_array_equal(compute_brain_mask(img), mask)


def test_compute_brain_mask_bad_input():
    with pytest.raises(ValueError, match="reference contains"):
        compute_brain_mask(np.full((10, 10, 10), np.nan))


# ------------------------------------------------------------------- load / resample


def test_load_mask_same_and_other_grid(tmp_path):
    affine, shape = grid()
    mask = np.zeros(shape, bool)
    mask[5:12, 6:14, 4:10] = True
    path = tmp_path / "brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), path)
    np.testing.assert_array_equal(load_mask(path, affine, shape), mask)
    # the same mask at 1.5 mm comes back (nearest neighbour) to the 3 mm grid
    fine_affine = affine.copy()
    fine_affine[:3, :3] /= 2
    fine_affine[:3, 3] -= 0.75
    fine = resample_from_to(nib.Nifti1Image(mask.astype(np.float32), affine),
                            (tuple(2 * s for s in shape), fine_affine), order=0)
    np.testing.assert_array_equal(load_mask(fine, affine, shape), mask)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), tmp_path / "empty.nii.gz")
    with pytest.raises(ValueError, match="'empty.nii.gz' is empty"):
        load_mask(tmp_path / "empty.nii.gz", affine, shape)
    with pytest.raises(FileNotFoundError, match="missing.nii"):
        load_mask(tmp_path / "missing.nii", affine, shape)


def test_resample_box_roi_exactly():
    # an ROI drawn at 1 mm whose edges fall on 3 mm voxel boundaries: exactly 3x3x3 voxels
    affine, shape = grid(origin=(0.0, 0.0, 0.0))
    roi = np.zeros((40, 40, 40), np.uint8)
    roi[8:17, 8:17, 8:17] = 1  # centres 8..16 mm: the box [7.5, 16.5) = voxels 3, 4, 5
    out = resample_roi(nib.Nifti1Image(roi, np.eye(4)), affine, shape)
    expected = np.zeros(shape, bool)
    expected[3:6, 3:6, 3:6] = True
    np.testing.assert_array_equal(out, expected)


def test_resample_oblique_sphere_matches_analytic_sphere():
    # a 10 mm sphere drawn on a rotated 1 mm grid, resampled to the 3 mm grid, selects the
    # voxels whose centres are within 10 mm of the centre
    affine, shape = grid()
    centre = np.array([4.0, -5.0, 6.0])
    rot = np.eye(4)
    rot[:3, :3] = _euler(*np.deg2rad([20, -10, 30]))
    src_affine = rot.copy()
    src_affine[:3, 3] = centre - rot[:3, :3] @ np.full(3, 15.0)
    ijk = np.indices((31, 31, 31)).reshape(3, -1).T
    inside = np.linalg.norm(apply_affine(src_affine, ijk) - centre, axis=1) <= 10
    roi_img = nib.Nifti1Image(inside.reshape(31, 31, 31).astype(np.uint8), src_affine)
    out = resample_roi(roi_img, affine, shape)
    expected = sphere_roi(centre, 10.0, affine, shape)
    assert dice(out, expected) > 0.9
    assert abs(int(out.sum()) - int(expected.sum())) <= 0.1 * expected.sum()


def test_resample_roi_label_and_errors(tmp_path):
    affine, shape = grid()
    atlas = np.zeros(shape, np.int16)
    atlas[2:5, 2:5, 2:5] = 3
    atlas[10:14, 10:14, 10:14] = 7
    img = nib.Nifti1Image(atlas, affine)
    assert resample_roi(img, affine, shape, label=7).sum() == 64
    with pytest.raises(ValueError, match="'insula' is empty in its own image"):
        resample_roi(img, affine, shape, label=5, name="insula")
    far = affine.copy()
    far[:3, 3] += 500.0  # the ROI image lives 500 mm away from the functional grid
    path = tmp_path / "far_roi.nii.gz"
    nib.save(nib.Nifti1Image(atlas, far), path)
    with pytest.raises(ValueError, match="'far_roi.nii.gz' lies outside the field of view"):
        resample_roi(path, affine, shape)
    tiny = np.zeros((40, 40, 40), np.uint8)
    tiny[20, 20, 20] = 1  # one 1 mm voxel at world (1.5, 1.5, 1.5): between 3 mm centres
    tiny_img = nib.Nifti1Image(tiny, np.diag([1, 1, 1, 1.0]) + np.eye(4, k=3) * -18.5)
    with pytest.raises(ValueError, match="is empty after resampling.*lower the threshold"):
        resample_roi(tiny_img, affine, shape, name="tiny")
    with pytest.raises(ValueError, match="threshold"):
        resample_roi(img, affine, shape, threshold=1.5)
    # partly outside the field of view: kept, with a warning
    shifted = affine.copy()
    shifted[0, 3] -= 3 * 11  # half of the label-7 block falls outside
    with pytest.warns(UserWarning, match="outside the field of view"):
        part = resample_roi(nib.Nifti1Image(atlas, shifted), affine, shape, label=7)
    assert 0 < part.sum() < 64


def test_sphere_roi_against_brute_force():
    affine, shape = grid()
    centre = np.array([1.0, 2.0, -3.0])
    out = sphere_roi(centre, 7.0, affine, shape)
    expected = np.zeros(shape, bool)
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                xyz = affine[:3, :3] @ [i, j, k] + affine[:3, 3]
                expected[i, j, k] = np.linalg.norm(xyz - centre) <= 7.0
    np.testing.assert_array_equal(out, expected)
    # a radius below the voxel size at a voxel centre: exactly that voxel
    single = sphere_roi(affine[:3, 3] + 3.0 * np.array([4, 5, 6]), 1.0, affine, shape)
    assert single.sum() == 1 and single[4, 5, 6]
    with pytest.raises(ValueError, match="lies outside the field of view"):
        sphere_roi([300.0, 0, 0], 5.0, affine, shape, name="far sphere")
    with pytest.raises(ValueError, match="smaller than the functional voxels"):
        sphere_roi(affine[:3, 3] + 1.5, 0.5, affine, shape)


# ------------------------------------------------------------------ MNI registration


def known_transform():
    transform = np.eye(4)
    transform[:3, :3] = _euler(*np.deg2rad([7.0, -5.0, 6.0])) @ np.diag([1.05, 0.95, 1.03])
    transform[:3, 3] = [8.0, -6.0, 7.0]
    return transform


@pytest.fixture(scope="module")
def registered():
    """The FSL MNI152 2 mm brain moved by a known affine onto a 3.5 x 3.5 x 4 mm EPI grid."""
    if not TEMPLATE.exists():
        pytest.skip(f"{TEMPLATE} not available")
    template = nib.load(TEMPLATE)
    truth = known_transform()  # MNI mm -> native mm
    moved = nib.Nifti1Image(template.get_fdata().astype(np.float32), truth @ template.affine)
    shape = (64, 64, 40)
    epi_affine = np.diag([3.5, 3.5, 4.0, 1.0])
    epi_affine[:3, 3] = [-112.0, -127.0, -70.0]
    epi = resample_from_to(moved, (shape, epi_affine), order=1)
    data = epi.get_fdata()
    noise = np.random.default_rng(0).normal(0, 0.02 * data.max(), shape)
    epi = nib.Nifti1Image((data + noise * (data > 0)).astype(np.float32), epi_affine)
    t0 = time.perf_counter()
    estimate, info = register_to_mni(epi, return_info=True)  # default: nilearn's template
    seconds = time.perf_counter() - t0
    brain = apply_affine(template.affine, np.argwhere(template.get_fdata() > 0))
    return dict(template=template, truth=truth, estimate=estimate, info=info,
                seconds=seconds, epi=epi, brain=brain)


def test_register_to_mni_recovers_known_affine(registered):
    err = np.linalg.norm(apply_affine(registered["estimate"], registered["brain"])
                         - apply_affine(registered["truth"], registered["brain"]), axis=1)
    # nilearn's MNI152 2009 template vs FSL's 6th-generation MNI152: ~1.5 mm apart on
    # average, so the error includes the difference between the two templates
    assert err.mean() < 2.0
    assert np.percentile(err, 95) < 3.0
    assert err.max() < 3.5
    assert registered["seconds"] < 20  # ~0.5 s warm; first call loads nilearn's template
    assert registered["info"]["correlation_ratio"] > 0.9


def test_register_to_mni_same_template_is_sub_millimetre(registered):
    epi = registered["epi"]
    volume = Volume(epi.get_fdata(), epi.affine, index=0)  # a Volume is accepted too
    estimate = register_to_mni(volume, template=registered["template"], dof=9)
    err = np.linalg.norm(apply_affine(estimate, registered["brain"])
                         - apply_affine(registered["truth"], registered["brain"]), axis=1)
    assert err.max() < 1.0


def test_mni_sphere_lands_on_the_right_voxel(registered):
    epi = registered["epi"]
    insula = np.array([38.0, 4.0, 2.0])  # right anterior insula, MNI mm
    target = apply_affine(np.linalg.inv(epi.affine), apply_affine(registered["truth"], insula))
    voxel = tuple(np.round(target).astype(int))
    roi = mni_roi_to_native((insula, 6.0), registered["estimate"], epi.affine, epi.shape)
    assert roi[voxel]
    centroid = apply_affine(epi.affine, np.argwhere(roi).mean(axis=0))
    assert np.linalg.norm(centroid - apply_affine(registered["truth"], insula)) < 3.0
    # the same ROI as an MNI image on the template grid
    tpl = registered["template"]
    ijk = np.indices(tpl.shape).reshape(3, -1).T
    ball = np.linalg.norm(apply_affine(tpl.affine, ijk) - insula, axis=1) <= 6.0
    ball_img = nib.Nifti1Image(ball.reshape(tpl.shape).astype(np.uint8), tpl.affine)
    roi_img = mni_roi_to_native(ball_img, registered["estimate"], epi.affine, epi.shape)
    assert roi_img[voxel]
    assert dice(roi_img, roi) > 0.6


def test_mni_roi_errors(registered):
    epi = registered["epi"]
    with pytest.raises(ValueError, match="outside the field of view"):
        mni_roi_to_native(([0.0, 0.0, 300.0], 8.0), registered["estimate"], epi.affine,
                          epi.shape, name="sky")
    tpl = registered["template"]
    far = np.zeros(tpl.shape, np.uint8)
    far[:3, :3, :3] = 1  # a corner of the template box, outside the EPI field of view
    shifted = tpl.affine.copy()
    shifted[:3, 3] += 200.0
    with pytest.raises(ValueError, match="'corner' .*outside the field of view"):
        mni_roi_to_native(nib.Nifti1Image(far, shifted), registered["estimate"], epi.affine,
                          epi.shape, name="corner")
    with pytest.raises(ValueError, match="dof"):
        register_to_mni(epi, dof=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="mni_to_native must have shape"):
            mni_roi_to_native(([0.0, 0.0, 0.0], 8.0), np.eye(3), epi.affine, epi.shape)
