"""Atlases shipped without internet (nilearn package data), user atlases, names in outputs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from rtfb.cli import main
from rtfb.offline.atlases import COORDINATE_ATLASES, resolve_atlas
from rtfb.offline.subject import AnalysisConfig, process_subject

from ._cohort_data import write_tiny_cohort


@pytest.mark.parametrize("name, n_rois", [("dosenbach2010", 160), ("seitzman2018", 300)])
def test_coordinate_atlas_spheres_at_the_published_centres(tmp_path, name, n_rois):
    from nilearn import datasets

    path, desc = resolve_atlas(name, tmp_path)
    assert desc["Regions"] == n_rois and desc["Reference"] == COORDINATE_ATLASES[name][1]
    img = nib.load(path)
    labels = np.asarray(img.dataobj)
    assert set(np.unique(labels)) <= set(range(n_rois + 1))
    rois = getattr(datasets, COORDINATE_ATLASES[name][0])()["rois"]
    xyz = np.column_stack([np.asarray(rois[c], float) for c in ("x", "y", "z")])
    com = np.asarray(ndimage.center_of_mass(labels > 0, labels, np.arange(1, n_rois + 1)))
    com_mm = com @ img.affine[:3, :3].T + img.affine[:3, 3]
    err = np.linalg.norm(com_mm - xyz, axis=1)
    # 5 mm spheres on a 2 mm grid: the centroid is the centre unless a close neighbour
    # takes part of the sphere
    assert np.median(err) < 0.5 and (err < 2.0).mean() > 0.9
    # an ROI at least 10 mm from every other is exactly the brute-force 5 mm sphere
    world = np.indices(labels.shape).reshape(3, -1).T @ img.affine[:3, :3].T + img.affine[:3, 3]
    gaps = np.linalg.norm(xyz[:, None] - xyz[None], axis=2) + np.eye(n_rois) * 1e9
    isolated = np.flatnonzero(gaps.min(1) >= 10)[:5]
    assert isolated.size
    for k in isolated:
        sphere = np.linalg.norm(world - xyz[k], axis=1) <= 5.0
        np.testing.assert_array_equal(labels.ravel() == k + 1, sphere)
    table = pd.read_csv(path.replace(".nii.gz", ".tsv"), sep="\t")
    assert len(table) == n_rois and table["name"].is_unique
    with open(path.replace(".nii.gz", ".json")) as fh:
        meta = json.load(fh)
    assert "nilearn" in meta["Source"] and meta["License"]


def test_user_atlas_with_names_table_names_the_time_series(tmp_path):
    bids = write_tiny_cohort(tmp_path / "bids", 1, 0)
    truth = bids / "derivatives" / "truth"
    labels_tsv = tmp_path / "my_names.tsv"
    names = pd.read_csv(truth / "atlas.tsv", sep="\t")
    names.assign(name="region " + names["name"]).to_csv(labels_tsv, sep="\t", index=False)
    path, desc = resolve_atlas(f"{truth / 'atlas.nii.gz'}:{labels_tsv}", tmp_path / "deriv")
    assert desc["Labels"] == str(labels_tsv.resolve())
    run = bids / "sub-01/func/sub-01_task-rest_bold.nii.gz"
    out = process_subject(run, 2.0, tmp_path / "deriv", AnalysisConfig(atlas=path))
    series = pd.read_csv(out["atlas"], sep="\t")
    assert list(series.columns) == ["region " + n for n in names["name"]]
    # the left-insula column is the mean of the cleaned voxels of that label (the oracle)
    clean = np.asarray(nib.load(out["clean"]).dataobj)
    atlas = np.asarray(nib.load(truth / "atlas.nii.gz").dataobj)
    index = int(names.set_index("name").loc["left_insula", "index"])
    np.testing.assert_allclose(series["region left_insula"], clean[atlas == index].mean(0),
                               rtol=1e-5, atol=1e-4)


def test_unknown_atlas_refused_with_the_list(tmp_path, capsys):
    bids = write_tiny_cohort(tmp_path / "bids", 1, 0)
    code = main(["analyze", str(bids), "--out", str(tmp_path / "d"), "--atlas", "yeo7",
                 "--no-group", "--quiet"])
    text = capsys.readouterr().err
    assert code == 2 and "'yeo7'" in text and "dosenbach2010" in text
