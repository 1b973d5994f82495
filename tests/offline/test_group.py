"""Group analysis of per-subject maps (rtfb.offline.group) and its HTML report."""

from __future__ import annotations

import base64
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from rtfb.offline.group import group_analysis
from rtfb.offline.report import write_group_report

SHAPE = (10, 10, 8)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
BLOB = (slice(2, 5), slice(5, 8), slice(3, 6))  # 27 voxels
METRICS = {"alff": "ALFF", "falff": "fALFF", "reho": "ReHo"}


def _blob_mask() -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[BLOB] = True
    return m


def _save(array, path, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), AFFINE), path)


def _participants(n_pat=10, n_con=10, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_pat + n_con
    return pd.DataFrame({
        "participant_id": [f"sub-{i + 1:02d}" for i in range(n)],
        "group": ["patient"] * n_pat + ["control"] * n_con,
        "age": rng.integers(20, 60, n),
        "sex": ["F", "M"] * (n // 2),
        "vas": np.r_[rng.uniform(3, 9, n_pat), rng.uniform(0, 1, n_con)].round(1),
    })


def _write_maps(deriv, participants, effect=1.0, seed=0, shape=SHAPE, skip=None):
    """Maps with a planted blob: patients higher and scaling with VAS (effect > 0)."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    blob = _blob_mask()
    for row in participants.itertuples():
        sid = row.participant_id
        func = deriv / "rtfb" / sid / "func"
        prefix = f"{sid}_task-rest"
        mask = brain.copy()
        mask[1, 1, 1] = rng.random() < 0.5  # subject-specific edge: intersection < union
        _save(mask, func / f"{prefix}_desc-brain_mask.nii.gz", np.uint8)
        for desc in METRICS.values():
            if (sid, desc) == skip:
                continue
            data = 1.0 + 0.3 * rng.standard_normal(shape)
            if row.group == "patient":
                data[blob] += effect * 0.6 * row.vas
            _save(np.where(mask, data, 0.0), func / f"{prefix}_desc-{desc}_map.nii.gz")
    return deriv


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    deriv = tmp_path_factory.mktemp("deriv")
    parts = _participants()
    _write_maps(deriv, parts)
    res = group_analysis(deriv, parts, metrics=("alff", "reho"), n_permutations=200,
                         classify_metric="alff", classify_permutations=0)
    return deriv, parts, res


def test_planted_blob_found(planted):
    deriv, parts, res = planted
    blob = _blob_mask()
    for metric in ("alff", "reho"):
        for key in ("patVsCon", "vas"):
            c = res.contrasts[(metric, key)]
            assert c.n_significant >= 1, (metric, key)
            top = c.clusters.iloc[0]
            assert top.sign == 1 and top.peak_value > c.threshold
            assert blob[top.peak_i, top.peak_j, top.peak_k]
            assert top.p_fwe_peak < 0.05
            assert c.p_fwe[BLOB].min() < 0.05
            # voxels with p_FWE < alpha are exactly those above the critical t
            sig = c.p_fwe < 0.05
            np.testing.assert_array_equal(sig, np.abs(c.t) > c.threshold)
            # no significant positive voxel far from the blob
            far = ~blob & res.mask
            assert (c.t[far] > c.threshold).sum() <= 2
            assert c.q_fdr[BLOB].min() < 0.05
            assert c.peak_significant and blob[c.peak_ijk]
    gc = res.contrasts[("alff", "patVsCon")]
    assert gc.subjects == list(parts.participant_id)
    assert gc.covariates == ["age", "sex"]
    vc = res.contrasts[("alff", "vas")]
    assert vc.subjects == list(parts.participant_id[parts.group == "patient"])
    assert vc.df == 10 - 4
    assert vc.r is not None and vc.r[vc.peak_ijk] > 0.5
    # outputs
    out = deriv / "group"
    for name in ("alff_patVsCon_t.nii.gz", "alff_vas_pfwe.nii.gz", "reho_vas_qfdr.nii.gz",
                 "alff_patVsCon_clusters.tsv", "clusters.tsv", "subjects.tsv",
                 "group_desc-brain_mask.nii.gz", "classification.tsv"):
        assert (out / name).is_file(), name
    t_img = nib.load(out / "alff_patVsCon_t.nii.gz")
    np.testing.assert_allclose(t_img.get_fdata(), gc.t, atol=1e-4)
    np.testing.assert_allclose(t_img.affine, AFFINE)
    tsv = pd.read_csv(out / "clusters.tsv", sep="\t")
    assert set(tsv.metric) == {"alff", "reho"} and {"p_fwe_peak", "q_fdr_peak"} <= set(tsv)
    # intersection mask excludes the subject-specific corner voxel
    assert not res.mask[1, 1, 1] and res.mask[2, 2, 2]
    assert 0 < res.mask_fraction[1, 1, 1] < 1
    # classification of the strong planted effect
    assert res.classification is not None and res.classification.mean_accuracy > 0.7
    assert res.vas_regression is not None


def test_null_data_no_cluster(tmp_path):
    parts = _participants(6, 6, seed=2)
    _write_maps(tmp_path, parts, effect=0.0, seed=5)
    res = group_analysis(tmp_path, parts, metrics=("alff",), n_permutations=200, seed=0)
    for c in res.contrasts.values():
        assert c.n_significant == 0
        assert c.p_fwe.min() >= 0.05 - 1e-12
        assert not c.peak_significant
    assert res.cluster_tables.empty
    assert (tmp_path / "group" / "clusters.tsv").is_file()


def test_vas_all_subjects_and_dropped_covariate(tmp_path):
    parts = _participants(6, 6, seed=3)
    parts.loc[parts.group == "patient", "sex"] = "F"
    parts.loc[0, "vas"] = np.nan
    _write_maps(tmp_path, parts, seed=4)
    res = group_analysis(tmp_path, parts, metrics=("alff",), n_permutations=50)
    vc = res.contrasts[("alff", "vas")]
    assert vc.covariates == ["age"] and "sub-01" not in vc.subjects
    assert any("'sex' is constant" in n for n in res.notes)
    assert any("sub-01" in n for n in res.notes)
    res_all = group_analysis(tmp_path, parts, metrics=("alff",), n_permutations=50,
                             vas_subjects="all")
    assert len(res_all.contrasts[("alff", "vas")].subjects) == 11


def test_missing_map_names_file(tmp_path):
    parts = _participants(3, 3)
    _write_maps(tmp_path, parts, skip=("sub-02", "fALFF"))
    with pytest.raises(FileNotFoundError, match=r"sub-02.*sub-02_\*_desc-falff_map\.nii\.gz"):
        group_analysis(tmp_path, parts, metrics=("alff", "falff"), n_permutations=10)


def test_missing_mask_names_file(tmp_path):
    parts = _participants(3, 3)
    _write_maps(tmp_path, parts)
    (tmp_path / "rtfb/sub-04/func/sub-04_task-rest_desc-brain_mask.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="sub-04.*desc-brain_mask"):
        group_analysis(tmp_path, parts, metrics=("alff",), n_permutations=10)


def test_shape_mismatch_names_file(tmp_path):
    parts = _participants(3, 3)
    _write_maps(tmp_path, parts)
    bad = tmp_path / "rtfb/sub-05/func/sub-05_task-rest_desc-ReHo_map.nii.gz"
    _save(np.ones((10, 10, 7)), bad)
    with pytest.raises(ValueError, match=r"sub-05_task-rest_desc-ReHo_map\.nii\.gz.*shape"):
        group_analysis(tmp_path, parts, metrics=("alff", "reho"), n_permutations=10)


def test_affine_mismatch_names_file(tmp_path):
    parts = _participants(3, 3)
    _write_maps(tmp_path, parts)
    bad = tmp_path / "rtfb/sub-03/func/sub-03_task-rest_desc-ALFF_map.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), bad)
    with pytest.raises(ValueError, match="sub-03_task-rest_desc-ALFF.*affine"):
        group_analysis(tmp_path, parts, metrics=("alff",), n_permutations=10)


def test_several_runs_is_an_error(tmp_path):
    parts = _participants(3, 3)
    _write_maps(tmp_path, parts)
    func = tmp_path / "rtfb/sub-01/func"
    (func / "sub-01_task-rest_run-2_desc-ALFF_map.nii.gz").write_bytes(
        (func / "sub-01_task-rest_desc-ALFF_map.nii.gz").read_bytes())
    with pytest.raises(ValueError, match="several"):
        group_analysis(tmp_path, parts, metrics=("alff",), n_permutations=10)
    res = group_analysis(tmp_path, parts, metrics=("alff",), n_permutations=10,
                         file_glob="{subject}_task-rest")
    assert ("alff", "patVsCon") in res.contrasts


@pytest.mark.parametrize(("change", "match"), [
    (lambda p: p.drop(columns="group"), "no 'group' column"),
    (lambda p: p.drop(columns="age"), "no 'age' column"),
    (lambda p: p.assign(group=["patient"] * 5 + ["pt"]), r"'sub-06': 'pt'"),
    (lambda p: p.assign(sex=["F"] * 5 + ["x"]), r"sex of sub-06 is 'x'"),
    (lambda p: p.assign(group="patient"), "at least 2 patients and 2 controls"),
    (lambda p: p.drop(columns="participant_id"), "participant_id"),
])
def test_bad_participants(tmp_path, change, match):
    parts = _participants(3, 3)
    with pytest.raises(ValueError, match=match):
        group_analysis(tmp_path, change(parts), metrics=("alff",), n_permutations=10)


def test_participants_indexed_like_read_participants(tmp_path):
    parts = _participants(3, 3)
    _write_maps(tmp_path, parts)
    res = group_analysis(tmp_path, parts.set_index("participant_id"), metrics=("ALFF",),
                         n_permutations=20)
    assert list(res.participants.index) == list(parts.participant_id)


def test_report_sections_and_images(planted):
    deriv, _, res = planted
    path = write_group_report(deriv, res)
    assert path == deriv / "report.html"
    text = path.read_text()
    for section in ("Methods", "Subjects", "Freedman-Lane", "Benjamini-Hochberg",
                    "patients &gt; controls", "VAS correlation", "Clusters",
                    "Classification", "95% CI"):
        assert section in text, section
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) >= 2 * 2 + 1  # stat maps, scatters
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<table" in text and "peak_value" not in text  # readable column names
    assert "not in MNI space" in text  # tiny synthetic grid -> mask outline
