"""General designs: paired t, ANCOVA/covariates, interaction, TFCE, against independent oracles."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats

from rtfb.offline.design import DesignSpec, build_design, fit_design, read_sessions
from rtfb.offline.design_analysis import design_analysis


def _table(n_pat, n_con, seed=0):
    rng = np.random.default_rng(seed)
    n = n_pat + n_con
    return pd.DataFrame({"group": ["patient"] * n_pat + ["control"] * n_con,
                         "age": rng.integers(20, 65, n).astype(float),
                         "sex": rng.choice(["F", "M"], n),
                         "vas": np.round(rng.uniform(0, 10, n), 1)},
                        index=pd.Index([f"sub-{i + 1:02d}" for i in range(n)],
                                       name="participant_id"))


def _ols_t(X, Y, column):
    """t of one coefficient by numpy least squares (the oracle)."""
    beta, *_ = np.linalg.lstsq(X, Y, rcond=None)
    resid = Y - X @ beta
    df = X.shape[0] - X.shape[1]
    c = np.zeros(X.shape[1])
    c[column] = 1
    se = np.sqrt((resid ** 2).sum(0) / df * (c @ np.linalg.inv(X.T @ X) @ c))
    return (c @ beta) / se


def test_paired_t_equals_scipy_ttest_rel():
    table = _table(6, 5)
    rng = np.random.default_rng(1)
    pre = rng.normal(size=(11, 40))
    post = pre + rng.normal(0.3, 1.0, size=(11, 40))
    design = build_design(table, DesignSpec(tests=("mean",), covariates=(),
                                            sessions=("pre", "post")))
    assert list(design.matrix.columns) == ["intercept"] and design.df == 10
    fit = fit_design(design, post - pre, "mean", n_permutations=100, seed=0)
    np.testing.assert_allclose(fit.t, stats.ttest_rel(post, pre).statistic, rtol=1e-10)
    # FDR of the parametric p-values (scipy's BH)
    p = stats.ttest_rel(post, pre).pvalue
    np.testing.assert_allclose(fit.q_fdr, stats.false_discovery_control(p), rtol=1e-10)
    assert fit.p_fwe.min() >= 1 / 100 and fit.null_max.size == 100


@pytest.mark.parametrize("tests, covariates, column", [
    (("group",), ("age", "sex"), "group"),          # ANCOVA
    (("vas",), ("group", "age"), "vas"),            # slope adjusted for group
    (("mean", "group"), ("age",), "intercept"),     # mean at the covariates' means
])
def test_glm_t_equals_least_squares(tests, covariates, column):
    table = _table(7, 6, seed=2)
    Y = np.random.default_rng(3).normal(size=(13, 25))
    design = build_design(table, DesignSpec(tests=tests, covariates=covariates))
    X = design.matrix.to_numpy(float)
    term = "mean" if column == "intercept" else column
    fit = fit_design(design, Y, term, n_permutations=50, seed=0)
    np.testing.assert_allclose(fit.t, _ols_t(X, Y, list(design.matrix.columns).index(column)),
                               rtol=1e-9)
    assert fit.df == 13 - X.shape[1]
    # the design columns are the coded, mean-centred table values
    if "age" in design.matrix:
        np.testing.assert_allclose(design.matrix["age"], table["age"] - table["age"].mean())


def test_interaction_is_group_difference_of_changes():
    """Group x session on the changes = two-sample t of post - pre (scipy ttest_ind)."""
    table = _table(5, 5, seed=4)
    rng = np.random.default_rng(5)
    change = rng.normal(size=(10, 30))
    change[:5] += 0.8
    design = build_design(table, DesignSpec(tests=("group",), covariates=(),
                                            sessions=("pre", "post")))
    fit = fit_design(design, change, "group", n_permutations=50, seed=0)
    np.testing.assert_allclose(fit.t, stats.ttest_ind(change[:5], change[5:]).statistic,
                               rtol=1e-10)


def _tfce_bruteforce(t3, n_steps=100, E=0.5, H=2.0):
    """TFCE as defined by Smith & Nichols (2009) with fslmaths' sum (no dh), two-sided,
    6-connectivity, heights h_k = k max|t| / n_steps: for every voxel and every height at
    or below its value, add extent(h)^E h^H, the extent of its cluster at that height."""
    out = np.zeros_like(t3)
    heights = np.linspace(0, np.abs(t3).max(), n_steps + 1)[1:]
    structure = ndimage.generate_binary_structure(3, 1)
    for sign in (1, -1):
        signed = sign * t3
        for h in heights:
            labels, _ = ndimage.label(signed >= h, structure=structure)
            for idx in zip(*np.nonzero(labels), strict=True):
                extent = (labels == labels[idx]).sum()
                out[idx] += sign * extent ** E * h ** H
    return out


def test_tfce_equals_bruteforce_and_finds_the_blob():
    shape = (7, 7, 4)
    mask = np.ones(shape, bool)
    rng = np.random.default_rng(6)
    n = 10
    data = rng.normal(size=(n,) + shape)
    data[:, 1:4, 1:4, 1:3] += 2.5  # a blob with a positive mean
    table = _table(n, 0)
    design = build_design(table, DesignSpec(tests=("mean",), covariates=()))
    img = nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))
    fit = fit_design(design, data.reshape(n, -1), "mean", n_permutations=100, seed=0,
                     tfce=True, mask_img=img)
    t3 = fit.t.reshape(shape)
    np.testing.assert_allclose(t3, stats.ttest_1samp(data, 0).statistic, rtol=1e-10)
    np.testing.assert_allclose(fit.tfce.reshape(shape), _tfce_bruteforce(t3), rtol=1e-8)
    p = fit.p_tfce.reshape(shape)
    assert (p[1:4, 1:4, 1:3] < 0.05).mean() >= 0.9
    outside = np.ones(shape, bool)
    outside[0:5, 0:5, 0:4] = False
    assert (p[outside] > 0.05).all()


def test_design_errors():
    table = _table(3, 3)
    with pytest.raises(ValueError, match="no column 'bmi'"):
        build_design(table, DesignSpec(tests=("bmi",), covariates=()))
    with pytest.raises(ValueError, match="no residual degrees of freedom"):
        build_design(table.iloc[:3], DesignSpec(tests=("vas",), covariates=("age", "sex")))
    with pytest.raises(ValueError, match="both tested and covariate"):
        build_design(table, DesignSpec(tests=("age",), covariates=("age",)))
    with pytest.raises(ValueError, match="rank deficient"):
        t2 = table.assign(age2=table["age"] * 2)
        build_design(t2, DesignSpec(tests=("age",), covariates=("age2",)))
    spec = DesignSpec(tests=("mean",), covariates=(), sessions=("pre", "post"))
    design = build_design(table, spec, available={(s, "ses-pre") for s in table.index}
                          | {(s, "ses-post") for s in table.index[1:]})
    assert design.subjects == list(table.index[1:])
    assert "sub-01" in design.notes[0]


def test_sessions_table_changes(tmp_path):
    table = _table(2, 2)
    for k, sid in enumerate(table.index):
        (tmp_path / sid).mkdir()
        (tmp_path / sid / f"{sid}_sessions.tsv").write_text(
            f"session_id\tvas\npre\t{5 + k}\npost\t{5 - k}\n")
    sessions = read_sessions(tmp_path, list(table.index))
    design = build_design(table.drop(columns="vas"), DesignSpec(
        tests=("vas",), covariates=(), sessions=("pre", "post")), sessions_table=sessions)
    change = np.array([0.0, -2.0, -4.0, -6.0])
    np.testing.assert_allclose(design.matrix["vas change"], change - change.mean())
    (tmp_path / "sub-02" / "sub-02_sessions.tsv").write_text(
        "session_id\tvas\npre\t5\npost\tlots\n")
    with pytest.raises(ValueError, match=r"sub-02_sessions\.tsv, line 3: vas must be a "
                                         r"number"):
        read_sessions(tmp_path, list(table.index))


def _write_maps(root, sid, ses, alff, mask, affine):
    func = root / "rtfb" / sid / ses / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = f"{sid}_{ses}_task-rest"
    nib.save(nib.Nifti1Image(alff.astype(np.float32), affine),
             func / f"{stem}_desc-ALFF_map.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine),
             func / f"{stem}_desc-brain_mask.nii.gz")


def test_design_analysis_paired_treatment_effect(tmp_path):
    """Planted pre/post change in a box: found by max-T and TFCE, written, and reported."""
    from rtfb.offline.report import write_group_report

    shape, affine = (8, 8, 5), np.diag([3.0, 3.0, 3.0, 1.0])
    mask = np.ones(shape, bool)
    table = _table(10, 0, seed=7)
    rng = np.random.default_rng(8)
    box = np.zeros(shape, bool)
    box[2:5, 2:5, 1:4] = True
    for sid in table.index:
        pre = 10 + rng.normal(size=shape)
        post = pre + rng.normal(size=shape) * 0.7 - 2.5 * box
        _write_maps(tmp_path, sid, "ses-pre", pre, mask, affine)
        _write_maps(tmp_path, sid, "ses-post", post, mask, affine)
    spec = DesignSpec(tests=("mean",), covariates=(), sessions=("pre", "post"))
    steps = []
    res = design_analysis(tmp_path, table, spec, metrics=("alff",), n_permutations=200,
                          progress=lambda s, n: steps.append((s, n)))
    c = res.contrasts[("alff", "mean")]
    assert c.label == "paired t: ses-post > ses-pre" and c.df == 9
    assert (c.p_fwe[box] < 0.05).mean() > 0.9 and (c.t[box] < 0).all()
    assert (c.p_fwe[~box] < 0.05).sum() <= 2
    assert (c.p_tfce[box] < 0.05).all()
    assert len(steps) == 2 and steps[0][1] == 2
    for key in ("t", "pfwe", "qfdr", "tfce", "ptfce", "clusters"):
        assert c.files[key].is_file()
    written = pd.read_csv(res.files["design"], sep="\t", index_col=0)
    assert list(written.columns) == ["intercept"] and len(written) == 10
    html = write_group_report(tmp_path, res).read_text()
    assert "paired t-test (mean change)" in html and "design matrix" in html
    assert "TFCE" in html


def test_cli_paired_sessions_end_to_end(tmp_path):
    """``rtfb analyze --sessions pre post`` on the simulator's pre/post cohort: the planted
    treatment effect (patients' left-insula ALFF drops) is the strongest decrease."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from simulator.cohort import write_cohort

    rtfb = shutil.which("rtfb", path=str(Path(sys.executable).parent))
    bids = tmp_path / "bids"
    truth = write_cohort(bids, 6, 0, seed=11, shape=(16, 16, 10), n_volumes=40,
                         sessions=("pre", "post"), treatment_effect=-30.0, treatment_vas=-3.0)
    assert truth["treatment"]["session"] == "ses-post"
    assert (bids / "sub-01/ses-post/func/sub-01_ses-post_task-rest_bold.nii.gz").is_file()
    out = tmp_path / "deriv"
    base = [rtfb, "analyze", str(bids), "--out", str(out), "--scheduler", "synchronous",
            "--quiet", "--metrics", "alff", "--permutations", "64", "--ica-components",
            "none", "--atlas", "none"]
    # sessions in the data but none chosen: refused before any map, no traceback
    proc = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--sessions" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "rtfb").exists()
    proc = subprocess.run(base + ["--sessions", "pre", "nope"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "ses-nope" in proc.stderr
    proc = subprocess.run(base + ["--sessions", "pre", "post", "--covariates"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model: GLM on the within-subject change ses-post - ses-pre" in proc.stdout
    assert "paired t-test" in proc.stdout
    roi = np.asarray(nib.load(bids / "derivatives/truth/roi-left_insula.nii.gz").dataobj) > 0
    t = np.asarray(nib.load(out / "group/alff_mean_t.nii.gz").dataobj)
    mask = np.asarray(nib.load(out / "group/group_desc-brain_mask.nii.gz").dataobj) > 0
    assert t[roi & mask].mean() < -3  # patients' insula ALFF fell
    assert roi[np.unravel_index(np.argmin(np.where(mask, t, np.inf)), t.shape)]
    p = np.asarray(nib.load(out / "group/alff_mean_ptfce.nii.gz").dataobj)
    assert (p[roi & mask] < 0.05).any()
    assert (out / "rtfb/sub-03/ses-pre/func/sub-03_ses-pre_task-rest_desc-ALFF_map.nii.gz"
            ).is_file()
    html = (out / "report.html").read_text()
    assert "design matrix" in html and "paired t: ses-post &gt; ses-pre" in html
