"""Spatial normalisation (dipy): known warps recovered, cache, and ``rtfb analyze`` on
subjects acquired on different grids."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

pytest.importorskip("dipy")

from rtfb.offline.normalise import (  # noqa: E402
    load_registration,
    load_template,
    mean_epi,
    register,
    warped_dice,
)

RES = 8  # mm: the MNI template at 8 mm keeps each registration to a few seconds


@pytest.fixture(scope="module")
def template():
    return load_template("mni", RES)


def _rotation(degrees):
    """Rx @ Ry @ Rz (intrinsic x-y-z Euler angles in degrees)."""
    return Rotation.from_euler("XYZ", degrees, degrees=True).as_matrix()


# a known affine: template point x is at T x in the "subject" (rotation, scaling, shift)
KNOWN = np.eye(4)
KNOWN[:3, :3] = _rotation((6.0, -4.0, 8.0)) @ np.diag([1.05, 0.95, 1.02])
KNOWN[:3, 3] = (5.0, -7.0, 4.0)


def _subject_grid(template):
    """An LAS grid of 1.1x the template's voxel size, its own field of view and origin."""
    vox = RES * 1.1
    shape = tuple(int(n) for n in np.array(template.shape) * RES / vox + 4)
    affine = np.diag([-vox, vox, vox, 1.0])
    affine[:3, 3] = [(shape[0] - 1) / 2 * vox, -(shape[1] - 1) / 2 * vox - 18,
                     -(shape[2] - 1) / 2 * vox + 10]
    return shape, affine


def _displacement(shape, max_mm, seed=0):
    rng = np.random.default_rng(seed)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
                      for _ in range(3)])
    return field * (max_mm / np.abs(field).max())


def _subject_image(template, image, shape, affine, displacement=None, order=1):
    """The template seen in the subject: voxel v holds template(T^-1 (A v + d(v)))."""
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    world = affine[:3, :3] @ ijk + affine[:3, 3:]
    if displacement is not None:
        world = world + displacement.reshape(3, -1)
    x = np.linalg.inv(KNOWN) @ np.vstack([world, np.ones(world.shape[1])])
    vox = (np.linalg.inv(template.affine) @ x)[:3]
    return ndimage.map_coordinates(image, vox, order=order, mode="constant").reshape(shape)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_known_affine_recovered(template):
    shape, affine = _subject_grid(template)
    moving = _subject_image(template, template.image, shape, affine)
    reg = register(moving, affine, template, nonlinear=False)
    # every template brain point goes where the known affine sends it, within a voxel
    ijk = np.argwhere(template.mask).T
    x = template.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    error = np.linalg.norm((reg.affine @ x - KNOWN @ x)[:3], axis=0)
    assert np.median(error) < 0.25 * RES and error.max() < RES
    # the warped image is the subject image resampled with the known affine (scipy)
    ijk_all = np.vstack([np.indices(template.shape).reshape(3, -1),
                         np.ones(template.mask.size)])
    expected = ndimage.map_coordinates(
        moving, (np.linalg.inv(affine) @ KNOWN @ template.affine @ ijk_all)[:3],
        order=1).reshape(template.shape)
    back = reg.warp(moving)
    r = np.corrcoef(back[template.mask], expected[template.mask])[0, 1]
    assert r > 0.95
    assert [s["Name"] for s in reg.info["Steps"]] == ["affine"]
    assert reg.info["Steps"][0]["Sequence"] == ["centres of mass", "translation", "rigid",
                                               "affine"]


def test_known_displacement_recovered_by_syn(template, tmp_path):
    shape, affine = _subject_grid(template)
    disp = _displacement(shape, 1.5 * RES)
    moving = _subject_image(template, template.image, shape, affine, disp)
    moving_mask = _subject_image(template, template.mask.astype(float), shape, affine,
                                 disp) > 0.5
    before = _dice(template.mask, ndimage.map_coordinates(
        moving_mask.astype(float), (np.linalg.inv(affine) @ template.affine
                                    @ np.vstack([np.indices(template.shape).reshape(3, -1),
                                                 np.ones(template.mask.size)]))[:3],
        order=1).reshape(template.shape) > 0.5)
    affine_only = register(moving, affine, template, nonlinear=False)
    syn = register(moving, affine, template, nonlinear=True)
    dice_affine = warped_dice(affine_only, moving_mask, template.mask)
    dice_syn = warped_dice(syn, moving_mask, template.mask)
    assert before < 0.9  # the grids alone do not align the brains
    assert dice_syn > 0.95  # measured 0.979 (affine only 0.967, before 0.859)
    assert dice_syn >= dice_affine  # the nonlinear part of the known warp is recovered too
    assert [s["Name"] for s in syn.info["Steps"]] == ["affine", "SyN"]
    # cached: a saved and reloaded registration warps identically
    syn.save(tmp_path / "xfm.npz")
    again = load_registration(tmp_path / "xfm.npz")
    np.testing.assert_array_equal(again.warp(moving), syn.warp(moving))
    assert json.loads((tmp_path / "xfm.json").read_text())["Steps"][1]["Name"] == "SyN"


def test_warp_series_equals_volume_warps(template):
    shape, affine = _subject_grid(template)
    moving = _subject_image(template, template.image, shape, affine)
    reg = register(moving, affine, template, nonlinear=False, affine_iters=(20, 10, 5))
    mask = moving > 0.1
    rng = np.random.default_rng(1)
    data = rng.normal(size=(int(mask.sum()), 3))
    where = reg.warp(mask.astype(float)) > 0.5
    got = reg.warp_series(data, mask, where)
    for t in range(3):
        volume = np.zeros(shape)
        volume[mask] = data[:, t]
        np.testing.assert_allclose(got[:, t], reg.warp(volume)[where], atol=1e-6)


def test_template_and_mean_epi_inputs(tmp_path):
    with pytest.raises(ValueError, match="whole number"):
        load_template("mni", 0)
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not a nifti")
    with pytest.raises(ValueError, match=r"bad\.nii\.gz: unreadable template"):
        load_template(str(bad))
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "run.nii.gz")
    mean, affine = mean_epi(tmp_path / "run.nii.gz")
    np.testing.assert_allclose(mean, data.mean(axis=3))
    nib.save(nib.Nifti1Image(data[..., 0] + 1, np.diag([2.0, 2, 2, 1])), tmp_path / "t.nii.gz")
    tpl = load_template(str(tmp_path / "t.nii.gz"))
    assert tpl.space == "t" and tpl.resolution is None and tpl.shape == (2, 3, 4)


def test_t1w_route_composes_known_transforms(template, tmp_path):
    """The T1 (template under KNOWN) to the template, the mean EPI (inverted contrast, moved
    by a known rigid Q, LAS grid) rigidly to the T1: template x -> EPI world Q KNOWN x."""
    from rtfb.offline.template_space import find_t1w, normalise_run

    q = np.eye(4)
    q[:3, :3] = _rotation((-5.0, 3.0, 4.0))
    q[:3, 3] = (-4.0, 6.0, 3.0)
    # T1: 4 mm RAS grid; the template seen under KNOWN
    t1_shape = tuple(int(n) for n in np.array(template.shape) * RES / 4 + 6)
    t1_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    t1_affine[:3, 3] = -(np.array(t1_shape) - 1) / 2 * 4.0 + (0, -18, 10)
    t1 = _subject_image(template, template.image, t1_shape, t1_affine)
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    nib.save(nib.Nifti1Image(t1.astype(np.float32), t1_affine), anat / "sub-01_T1w.nii.gz")
    # EPI: T2*-like contrast (bright where the T1 is dark inside the head), moved by Q
    shape, epi_affine = _subject_grid(template)
    world_to_t1 = np.linalg.inv(q)
    ijk = np.vstack([np.indices(shape).reshape(3, -1), np.ones(int(np.prod(shape)))])
    t1_vox = (np.linalg.inv(t1_affine) @ world_to_t1 @ epi_affine @ ijk)[:3]
    t1_at_epi = ndimage.map_coordinates(t1, t1_vox, order=1).reshape(shape)
    epi = np.where(t1_at_epi > 0.05, 1.5 - t1_at_epi, 0.0)
    func = tmp_path / "sub-01" / "func"
    func.mkdir()
    bold = func / "sub-01_task-rest_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.repeat(epi[..., None], 3, axis=3).astype(np.float32),
                             epi_affine), bold)
    assert find_t1w(bold) == anat / "sub-01_T1w.nii.gz"
    mask = epi > 0.1
    pre = {"data": np.ones((int(mask.sum()), 2)), "mask": mask, "affine": epi_affine}
    (tmp_path / "out").mkdir()
    out, space = normalise_run(pre, bold, template, tmp_path / "out", "sub-01_task-rest",
                               t1w=find_t1w(bold))
    assert space["Method"] == ["affine (T1w to template)", "SyN (T1w to template)",
                               "rigid (mean EPI to T1w)"]
    assert out["data"].shape == (int(out["mask"].sum()), 2) and out["mask"].sum() > 0
    reg = load_registration(tmp_path / "out" / space["Transform"])
    x = np.vstack([np.argwhere(template.mask).T, np.ones(int(template.mask.sum()))])
    expected = (np.linalg.inv(epi_affine) @ q @ KNOWN @ template.affine @ x)[:3]
    error_mm = np.linalg.norm(epi_affine[:3, :3] @ (reg.sampling_coordinates(template.mask)
                                                    - expected), axis=0)
    aff = np.asarray(reg.info["AffineTemplateToRun"])
    err_aff = np.linalg.norm(((aff - q @ KNOWN) @ template.affine @ x)[:3], axis=0)
    assert np.median(err_aff) < 0.25 * RES  # measured 1.3 mm
    assert np.median(error_mm) < 0.4 * RES  # with SyN: measured 2.1 mm


def test_registration_summary_flags_low_dice(tmp_path):
    from rtfb.offline.template_space import DICE_WARNING, registration_summary

    results = {}
    for i, dice in enumerate((0.9, DICE_WARNING - 0.1, 0.88)):
        xfm = tmp_path / f"sub-0{i}_xfm.npz"
        xfm.with_suffix(".json").write_text(json.dumps({
            "Template": {"Description": "TPL"}, "Steps": [{"Name": "affine"}, {"Name": "SyN"}],
            "Seconds": 2.0 + i, "MaskDice": dice}))
        results[f"sub-0{i}_task-rest"] = {"xfm": xfm, "boldref": tmp_path / f"ref{i}.nii.gz"}
    results["sub-09_task-rest"] = {"ALFF": tmp_path / "x"}  # not normalised: ignored
    note, warnings = registration_summary(results)
    assert note.startswith("normalised 3 runs to TPL (dipy affine + SyN")
    assert "3.0 s per run (median)" in note and "lowest 0.65 (sub-01_task-rest)" in note
    assert warnings == [f"sub-01_task-rest: registration to the template doubtful (brain-mask "
                        f"Dice 0.65 < {DICE_WARNING}); check {tmp_path / 'ref1.nii.gz'}"]
    assert registration_summary({"sub-09": {"ALFF": tmp_path / "x"}}) == (None, [])


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """8 patients + 8 controls, each on its own grid and head pose (simulator truth)."""
    from simulator.cohort import write_cohort

    bids = tmp_path_factory.mktemp("varied") / "bids"
    truth = write_cohort(bids, 8, 8, seed=3, shape=(16, 16, 10), n_volumes=64, tr=2.0,
                         slope=6.0, varied_grids=True)
    return bids, truth


def _analyze(bids, out, *extra):
    import contextlib
    import io

    from rtfb.cli import main

    buffer = io.StringIO()  # what the user sees: stdout and stderr (errors)
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(["analyze", str(bids), "--out", str(out), "--scheduler", "synchronous",
                     "--quiet", "--metrics", "alff", "--permutations", "200",
                     "--ica-components", "none", "--atlas", "none",
                     "--classify-metric", "", *extra])
    return code, buffer.getvalue()


def test_different_grids_refused_without_normalisation(varied, tmp_path):
    bids, _ = varied
    code, text = _analyze(bids, tmp_path / "d")
    assert code == 2
    assert text.count("\n") == 1 and "4 different grids" in text
    assert "mm LAS" in text and "mm RAS" in text and "sub-16_task-rest" in text
    assert "--normalise mni" in text
    assert not (tmp_path / "d" / "rtfb").exists()  # refused before any work


def test_analyze_normalised_recovers_planted_effect(varied, tmp_path):
    bids, truth = varied
    truth_dir = bids / "derivatives" / "truth"
    out = tmp_path / "deriv"
    code, text = _analyze(bids, out, "--normalise", str(truth_dir / "template.nii.gz"))
    assert code == 0, text
    assert "normalised 16 runs to template image" in text
    assert "doubtful" not in text
    roi_img = nib.load(truth_dir / "roi-left_insula.nii.gz")
    roi = np.asarray(roi_img.dataobj) > 0
    t_img = nib.load(out / "group" / "alff_patVsCon_t.nii.gz")
    assert t_img.shape == roi.shape and np.allclose(t_img.affine, roi_img.affine)
    t_map = np.asarray(t_img.dataobj)
    p_fwe = np.asarray(nib.load(out / "group" / "alff_patVsCon_pfwe.nii.gz").dataobj)
    significant = (p_fwe < 0.05) & (t_map > 0)
    assert significant[roi].mean() >= 0.4  # measured 0.5 (12 ROI voxels)
    assert significant[~roi].sum() <= 2
    assert t_map[roi].max() > t_map[~roi].max()
    # sidecars say which template and transform; the transforms match the planted poses
    mask = np.asarray(nib.load(truth_dir / "mask.nii.gz").dataobj) > 0
    ijk = np.vstack([np.argwhere(mask).T, np.ones(int(mask.sum()))])
    for sid, entry in truth["subjects"].items():
        func = out / "rtfb" / sid / "func"
        sidecar = json.loads((func / f"{sid}_task-rest_space-template_desc-ALFF_map.json")
                             .read_text())
        space = sidecar["SpatialNormalisation"]
        assert space["Name"] == "template" and space["Method"] == ["affine", "SyN"]
        reg = load_registration(func / space["Transform"])
        grid = entry["grid"]
        run_affine = np.asarray(grid["affine"])
        expected = (np.linalg.inv(run_affine) @ np.asarray(grid["pose"])
                    @ roi_img.affine @ ijk)[:3]
        error_mm = np.linalg.norm(run_affine[:3, :3] @ (reg.sampling_coordinates(mask)
                                                        - expected), axis=0)
        assert np.median(error_mm) < min(grid["voxel_size"]) / 2, sid
    # a rerun with other options recomputes the maps but reuses the transform
    from rtfb.offline.subject import AnalysisConfig, process_subject

    xfm = (out / "rtfb" / "sub-01" / "func"
           / "sub-01_task-rest_from-boldref_to-template_mode-image_xfm.npz")
    before = xfm.stat().st_mtime_ns
    config = AnalysisConfig(band=(0.01, 0.1), normalise=str(truth_dir / "template.nii.gz"),
                            atlas="")
    paths = process_subject(bids / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz", 2.0,
                            out, config)
    assert xfm.stat().st_mtime_ns == before and paths["xfm"] == xfm
    sidecar = json.loads(paths["ALFF"].with_name(
        paths["ALFF"].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Band"] == [0.01, 0.1] and sidecar["SpatialNormalisation"]["Reused"]


def test_cli_input_errors(varied, tmp_path, capsys):
    bids, _ = varied
    template = str(bids / "derivatives" / "truth" / "template.nii.gz")
    code, text = _analyze(bids, tmp_path / "d", "--normalise", template,
                          "--normalise-from", "t1w")
    assert code == 2 and "--normalise-from t1w: no sub-XX/[ses-YY/]anat/" in text
    assert "sub-01_task-rest, sub-02_task-rest" in text
    code, text = _analyze(bids, tmp_path / "d", "--normalise-from", "t1w")
    assert code == 2 and "applies with --normalise only" in text
    from rtfb.cli import main

    with pytest.raises(SystemExit) as err:  # an argparse error: one line on stderr
        main(["analyze", str(bids), "--out", str(tmp_path / "d"), "--normalise",
              str(tmp_path / "nope.nii.gz")])
    assert err.value.code == 2 and "nope.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "d" / "rtfb").exists()


def test_rerun_in_another_space_removes_the_old_maps(varied, tmp_path):
    import shutil

    from rtfb.offline.subject import AnalysisConfig, process_subject

    bids, _ = varied
    other = tmp_path / "other.nii.gz"
    shutil.copy(bids / "derivatives" / "truth" / "template.nii.gz", other)
    bold = bids / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz"
    func = tmp_path / "d" / "rtfb" / "sub-02" / "func"
    first = process_subject(bold, 2.0, tmp_path / "d", AnalysisConfig(
        normalise=str(bids / "derivatives" / "truth" / "template.nii.gz"),
        registration="affine", atlas=""))
    assert first["ALFF"].name == "sub-02_task-rest_space-template_desc-ALFF_map.nii.gz"
    second = process_subject(bold, 2.0, tmp_path / "d", AnalysisConfig(
        normalise=str(other), registration="affine", atlas=""))
    names = {p.name for p in func.iterdir()}
    assert second["ALFF"].name in names and second["xfm"].name in names
    assert not [n for n in names if "space-template" in n or "to-template" in n]
    assert len([n for n in names if n.endswith("_desc-ALFF_map.nii.gz")]) == 1


def test_analyze_through_t1w_recovers_the_poses(tmp_path):
    """CLI ``--normalise-from t1w`` on simulator subjects with a T1w in their own pose."""
    from simulator.cohort import write_cohort

    bids = tmp_path / "bids"
    truth = write_cohort(bids, 1, 1, seed=3, shape=(16, 16, 10), n_volumes=40,
                         varied_grids=True, t1w=True)
    truth_dir = bids / "derivatives" / "truth"
    code, text = _analyze(bids, tmp_path / "d", "--no-group", "--normalise",
                          str(truth_dir / "template_T1w.nii.gz"), "--normalise-from", "t1w")
    assert code == 0, text
    assert "each subject's T1w -> " in text and "mean EPI rigidly to the T1w" in text
    mask_img = nib.load(truth_dir / "mask.nii.gz")
    mask = np.asarray(mask_img.dataobj) > 0
    ijk = np.vstack([np.argwhere(mask).T, np.ones(int(mask.sum()))])
    for sid, entry in truth["subjects"].items():
        func = tmp_path / "d" / "rtfb" / sid / "func"
        reg = load_registration(func / f"{sid}_task-rest_from-boldref_to-templateT1w_mode-"
                                       "image_xfm.npz")
        assert reg.info["Registered"].startswith(f"T1w {sid}_T1w.nii.gz")
        run_affine = np.asarray(entry["grid"]["affine"])
        expected = (np.linalg.inv(run_affine) @ np.asarray(entry["grid"]["pose"])
                    @ mask_img.affine @ ijk)[:3]
        error_mm = np.linalg.norm(run_affine[:3, :3] @ (reg.sampling_coordinates(mask)
                                                        - expected), axis=0)
        # measured 0.95 and 1.22 mm (3 and 2.5 mm voxels)
        assert np.median(error_mm) < 0.6 * min(entry["grid"]["voxel_size"]), sid
