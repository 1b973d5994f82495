"""HTML report of the offline group analysis (:func:`rtfb.offline.group.group_analysis`).

One self-contained file, ``DERIV/report.html``, in the style of the session report
(:mod:`rtfb.session.report`): plots are drawn on matplotlib figures with the Agg canvas (no
GUI backend, no ``pyplot`` state) and embedded as base64 PNG.

Background of the stat maps: the MNI152 template shipped with nilearn when the data look
like MNI space (the intersection mask spans at least 80 mm along every axis and its centre
lies inside the MNI brain box), else no anatomy and an outline of the mean of the subjects'
brain masks at 0.5 (``GroupResults.mask_fraction``, always on the data grid). Override with
``background="mni"`` or ``"mask"``.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from .._utils.checks import _check_option
from ..reporting import REPORT_CSS, esc, fmt_sig, img, new_figure, note, png_uri, section
from .design_report import design_methods, design_scatter, design_summary
from .group_results import ContrastResult, GroupResults
from .network_report import graph_section, ica_section

__all__ = ["write_group_report"]

_MNI_BOX = np.array([[-78.0, 78.0], [-112.0, 76.0], [-70.0, 85.0]])
_CLUSTER_COLUMNS = {
    "cluster": "cluster", "sign": "sign", "size_voxels": "voxels", "size_mm3": "volume (mm³)",
    "peak_value": "peak t", "peak_ijk": "peak voxel (i, j, k)",
    "peak_xyz": "peak (x, y, z) mm", "com_xyz": "centre of mass (x, y, z) mm",
    "p_fwe_peak": "p<sub>FWE</sub> (peak)", "q_fdr_peak": "q<sub>FDR</sub> (peak)",
}


def _looks_mni(mask: np.ndarray, affine: np.ndarray) -> bool:
    ijk = np.argwhere(mask)
    if ijk.size == 0:
        return False
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    extent = xyz.max(0) - xyz.min(0)
    centre = xyz.mean(0)
    return bool((extent >= 80).all() and ((centre > _MNI_BOX[:, 0])
                                          & (centre < _MNI_BOX[:, 1])).all())


def _background(results: GroupResults, background: str):
    """``(bg_img, contour_img, note)`` of the stat-map figures."""
    import nibabel as nib

    use_mni = background == "mni" or (background == "auto"
                                      and _looks_mni(results.mask, results.affine))
    if use_mni:
        from nilearn.datasets import load_mni152_template

        return load_mni152_template(resolution=2), None, (
            "Background: MNI152 template (nilearn); the maps are assumed to be in MNI space.")
    fraction = nib.Nifti1Image(results.mask_fraction.astype(np.float32), results.affine)
    return None, fraction, (
        "Background: the data are not in MNI space (the MNI template would not be aligned); "
        "the black outline is the mean of the subjects' brain masks at 0.5 (voxels in at "
        "least half of the subjects' masks).")


def _plot_contrast(c: ContrastResult, results: GroupResults, bg, contour) -> str:
    import nibabel as nib
    from nilearn.plotting import plot_stat_map

    img = nib.Nifti1Image(c.t.astype(np.float32), results.affine)
    cut = results.affine[:3, :3] @ np.asarray(c.peak_ijk, float) + results.affine[:3, 3]
    vmax = max(float(np.abs(c.t).max()), c.threshold, 1e-6)
    figure = new_figure(9, 3.0, layout=None)  # nilearn places its own axes
    title = f"{c.metric}: {c.label} (t, df={c.df})"
    display = plot_stat_map(
        img, bg_img=bg, figure=figure, display_mode="ortho", cut_coords=cut,
        threshold=c.threshold if c.n_significant else None, vmax=vmax, draw_cross=False,
        black_bg=False, colorbar=True, title=title, resampling_interpolation="nearest")
    if contour is not None:
        display.add_contours(contour, levels=[0.5], colors="k", linewidths=1)
    return png_uri(figure)


def _plot_scatter(c: ContrastResult, results: GroupResults) -> str:
    table = results.participants
    vas = table["vas"].to_numpy(float)
    patient = table["patient"].to_numpy(bool)
    used = table.index.isin(c.subjects)
    y = c.peak_values
    figure = new_figure(4.8, 3.6)
    ax = figure.add_subplot()
    for mask, colour, name in ((patient, "tab:red", "patients"),
                               (~patient, "tab:blue", "controls")):
        ax.scatter(vas[mask & used], y[mask & used], c=colour, label=name, s=30,
                   edgecolor="k", linewidth=0.5)
        if (mask & ~used).any():
            ax.scatter(vas[mask & ~used], y[mask & ~used], facecolor="none",
                       edgecolor=colour, s=30, label=f"{name} (not in model)")
    fit = used & np.isfinite(vas)
    if c.contrast == "vas" and fit.sum() >= 2 and np.ptp(vas[fit]) > 0:
        slope, intercept = np.polyfit(vas[fit], y[fit], 1)
        xs = np.linspace(vas[fit].min(), vas[fit].max(), 2)
        ax.plot(xs, slope * xs + intercept, "k--", lw=1, label="least squares (unadjusted)")
    where = "peak of largest FWE cluster" if c.peak_significant else "max |t| (not significant)"
    i, j, k = c.peak_ijk
    ax.set_title(f"{c.metric}, {c.label}\nvoxel ({i}, {j}, {k}): {where}", fontsize=9)
    ax.set_xlabel("VAS")
    ax.set_ylabel(f"{c.metric} value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return png_uri(figure)


def _cluster_html(table: pd.DataFrame) -> str:
    if table.empty:
        return note("No cluster at p_FWE < alpha.")
    head = "".join(f"<th>{v}</th>" for v in _CLUSTER_COLUMNS.values())
    rows = []
    for r in table.itertuples():
        cells = [
            str(r.cluster), "+" if r.sign > 0 else "−", str(r.size_voxels),
            fmt_sig(r.size_mm3), f"{r.peak_value:.2f}",
            f"({r.peak_i}, {r.peak_j}, {r.peak_k})",
            f"({r.peak_x:.1f}, {r.peak_y:.1f}, {r.peak_z:.1f})",
            f"({r.com_x:.1f}, {r.com_y:.1f}, {r.com_z:.1f})",
            fmt_sig(r.p_fwe_peak), fmt_sig(r.q_fdr_peak),
        ]
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return f'<table class="clusters"><tr>{head}</tr>\n' + "\n".join(rows) + "</table>"


def _methods(results: GroupResults) -> list[str]:
    covs = ", ".join(results.covariates) or "none"
    vas_who = ("patients only (controls' VAS is near zero, so including them would mostly "
               "re-test the group difference)" if results.vas_subjects == "patients"
               else "all subjects (group is not a covariate)")
    n_mask = int(results.mask.sum())
    paras = [
        f"Per-subject maps ({', '.join(results.metrics)}) were read from "
        f"<code>{esc(results.deriv_dir / 'rtfb')}</code> and analysed on the intersection of "
        f"the subjects' brain masks ({n_mask} voxels, finite in every map).",
        "For each metric two ordinary-least-squares models were fitted at every voxel: "
        "<b>patients &gt; controls</b> (two-sample t; positive t = patients higher) and "
        f"<b>VAS correlation</b> (slope of the VAS score) in {vas_who}. Covariates "
        f"(mean-centred): {esc(covs)}; sex coded 1 = female, 0 = male; a covariate constant "
        "in the analysed subjects is dropped (see Notes).",
        "Family-wise error (FWE) was controlled with a two-sided Freedman-Lane permutation "
        f"test of the maximum |t| over voxels ({results.n_permutations} permutations, the "
        f"identity included, seed {results.seed}; Winkler et al. 2014). The FWE critical t is "
        f"the (1 − α) point of the permutation null distribution of the maximum |t|, "
        f"α = {results.alpha:g}; clusters (26-connectivity) are formed from the voxels with "
        "|t| above it, i.e. exactly the voxels with p<sub>FWE</sub> &lt; α (voxel-wise, not "
        "cluster-extent, inference).",
        "False discovery rate: Benjamini-Hochberg q-values of the parametric two-sided "
        "p-values of t on the residual degrees of freedom, over the in-mask voxels "
        "(written as <code>*_qfdr.nii.gz</code>; q at the cluster peaks in the tables).",
    ]
    if results.classification is not None or results.vas_regression is not None:
        paras.append(
            f"Multivariate prediction from the in-mask {esc(results.classify_metric)} voxel "
            "values: linear SVM classification of patients vs controls and ridge regression "
            "of the patients' VAS, both with nested stratified cross-validation (standardisation"
            " and hyper-parameter search refitted inside every training fold). The accuracy "
            "95% CI is a t interval over the outer folds (approximate: folds share training "
            "subjects); the p-value is a permutation test of the whole nested procedure.")
    return [f"<p>{p}</p>" for p in paras]


def _classification_html(results: GroupResults) -> list[str]:
    body = []
    res = results.classification
    if res is not None:
        folds = ", ".join(f"{a:.2f}" for a in res.fold_accuracies)
        p = "not computed" if res.p_value is None else (
            f"{res.p_value:.3g} ({res.permutation_scores.size} permutations)")
        body.append(
            '<table class="summary">'
            f"<tr><th>Features</th><td>{esc(results.classify_metric)} "
            f"({int(results.mask.sum())} voxels)</td></tr>"
            f"<tr><th>Mean accuracy</th><td>{res.mean_accuracy:.3f}</td></tr>"
            f"<tr><th>95% CI (t over folds)</th><td>[{res.ci[0]:.3f}, {res.ci[1]:.3f}]</td></tr>"
            f"<tr><th>Chance (majority class)</th><td>{res.chance:.3f}</td></tr>"
            f"<tr><th>Permutation p</th><td>{esc(p)}</td></tr>"
            f"<tr><th>Fold accuracies</th><td>{esc(folds)}</td></tr></table>")
    reg = results.vas_regression
    if reg is not None:
        body.append(
            "<h3>VAS regression (patients)</h3>"
            '<table class="summary">'
            f"<tr><th>Out-of-fold Pearson r</th><td>{fmt_sig(reg.r)}</td></tr>"
            f"<tr><th>Parametric p (optimistic)</th><td>{fmt_sig(reg.p_value)}</td></tr>"
            f"<tr><th>Out-of-fold R²</th><td>{fmt_sig(reg.r2)}</td></tr>"
            f"<tr><th>Ridge α per fold</th><td>"
            f"{esc(', '.join(f'{a:g}' for a in reg.best_alphas))}</td></tr></table>")
    return body


def _subjects_html(results: GroupResults) -> str:
    table = results.participants
    cols = [c for c in table.columns if c != "patient"]
    head = "<th>participant_id</th>" + "".join(f"<th>{esc(c)}</th>" for c in cols)
    rows = []
    for sid, row in table[cols].iterrows():
        cells = [sid] + [fmt_sig(v) if isinstance(v, (float, np.floating)) else v
                         for v in row]
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    n_pat = int(table["patient"].sum())
    return (f"<p>{len(table)} subjects: {n_pat} patients, {len(table) - n_pat} controls.</p>"
            f'<table class="subjects"><tr>{head}</tr>\n' + "\n".join(rows) + "</table>")


def write_group_report(deriv_dir, results: GroupResults, *, background: str = "auto") -> Path:
    """Write ``deriv_dir/report.html`` for a :func:`group_analysis` result.

    Parameters
    ----------
    deriv_dir : path-like
        Derivatives root (the report goes there; the group outputs it shows are in
        ``deriv_dir/group``).
    results : GroupResults
        Output of :func:`rtfb.offline.group.group_analysis`.
    background : {"auto", "mni", "mask"}
        Stat-map background (see the module docstring).

    Returns
    -------
    Path
        The written report.
    """
    if not isinstance(results, GroupResults):
        raise TypeError(f"results must be a GroupResults, got {type(results).__name__}.")
    _check_option("background", background, ("auto", "mni", "mask"))
    out_dir = Path(deriv_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bg, contour, bg_note = _background(results, background)

    sections = []
    if results.warnings:
        sections.append(section("warnings", "Warnings", [
            '<ul class="warnings">' + "".join(
                f"<li><b>{esc(w)}</b></li>" for w in results.warnings) + "</ul>"]))
    sections += [
        section("methods", "Methods", _methods(results) if results.design is None
                 else design_methods(results)),
        section("subjects", "Subjects", [_subjects_html(results)]),
    ]
    if results.notes:
        sections.append(section("notes", "Notes", ["<ul>" + "".join(
            f"<li>{esc(n)}</li>" for n in results.notes) + "</ul>"]))
    for metric in results.metrics:
        body = [note(bg_note)]
        for (m, _key), c in results.contrasts.items():
            if m != metric:
                continue
            status = (f"{c.n_significant} cluster(s) at p<sub>FWE</sub> &lt; {results.alpha:g}"
                      if c.n_significant else
                      f"no voxel at p<sub>FWE</sub> &lt; {results.alpha:g} (unthresholded t "
                      "map shown)")
            body += [
                f"<h3>{esc(c.label)}</h3>",
                f"<p>{len(c.subjects)} subjects, df = {c.df}, covariates: "
                f"{esc(', '.join(c.covariates) or 'none')}; FWE critical |t| = "
                f"{c.threshold:.2f}; {status}; min q<sub>FDR</sub> = "
                f"{float(c.q_fdr[results.mask].min()):.3g}.</p>",
                img(_plot_contrast(c, results, bg, contour), f"{metric} {c.label} t map"),
                "<h4>Clusters</h4>", _cluster_html(c.clusters),
            ]
            if results.design is None:
                body.append(img(_plot_scatter(c, results), f"{metric} {c.label} value vs VAS"))
            else:
                body += [design_summary(c, results),
                         img(design_scatter(c, results), f"{metric} {c.label} peak values")]
        sections.append(section(f"metric-{metric}", f"Metric: {metric}", body))
    patient = results.participants["patient"].to_numpy(bool)
    if results.graph is not None:
        sections.append(section("graph", "Graph metrics (ROI-to-ROI FC)",
                                 graph_section(results.graph, patient)))
    if results.ica is not None:
        sections.append(section("ica", "Group ICA",
                                 [note(bg_note), *ica_section(results.ica, bg, contour)]))
    if results.classification is not None or results.vas_regression is not None:
        sections.append(section("classification", "Classification",
                                 _classification_html(results)))

    now = _dt.datetime.now().isoformat(timespec="seconds")
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>rtfb group analysis</title>", f"<style>{REPORT_CSS}</style>", "</head>", "<body>",
        "<h1>rtfb offline group analysis</h1>",
        f"<p>Metrics: {esc(', '.join(results.metrics))}; outputs in "
        f"<code>{esc(results.out_dir)}</code>.</p>",
        *sections,
        f"<footer>Generated {now} by rtfb {esc(__version__)}.</footer>",
        "</body>", "</html>",
    ])
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
