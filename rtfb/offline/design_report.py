"""Report parts of a general design (:mod:`rtfb.offline.design`): model, design matrix, plots."""

from __future__ import annotations

import numpy as np

from ..reporting import esc, img, new_figure, png_uri
from .group_results import ContrastResult, GroupResults

__all__ = ["design_methods", "design_scatter", "design_summary"]


def _plot_matrix(results: GroupResults) -> str:
    matrix = results.design.matrix
    values = matrix.to_numpy(float)
    scaled = values / np.where(np.abs(values).max(0) > 0, np.abs(values).max(0), 1.0)
    n, p = values.shape
    figure = new_figure(max(3.0, 0.9 * p + 1.5), max(3.0, 0.18 * n + 1.2))
    ax = figure.add_subplot()
    im = ax.imshow(scaled, aspect="auto", cmap="gray", interpolation="nearest")
    ax.set_xticks(np.arange(p), list(matrix.columns), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(n), list(matrix.index), fontsize=6 if n > 30 else 7)
    ax.set_title("design matrix (columns scaled to max |value| = 1)", fontsize=9)
    figure.colorbar(im, ax=ax, shrink=0.7)
    return png_uri(figure)


def design_methods(results: GroupResults) -> list[str]:
    """Methods paragraphs: the model, its design matrix and the inference."""
    design = results.design
    spec = design.spec
    tfce = any(c.tfce is not None for c in results.contrasts.values())
    paras = [
        f"<b>Model</b>: {esc(spec.describe())}",
        f"Per-subject maps ({esc(', '.join(results.metrics))}) on the intersection of the "
        f"brain masks ({int(results.mask.sum())} voxels). Design: {design.matrix.shape[0]} "
        f"rows (subjects) x {design.matrix.shape[1]} columns "
        f"({esc(', '.join(design.matrix.columns))}), every term mean-centred, "
        f"{design.df} residual degrees of freedom; each tested term is a t contrast adjusted "
        "for all other columns (written to <code>group/design.tsv</code>).",
        "Inference: nilearn <code>permuted_ols</code> ("
        f"{results.n_permutations} permutations including the identity, seed "
        f"{results.seed}; sign flipping for the mean / paired test, row permutation "
        "otherwise): two-sided max-|t| FWE p-values"
        + ("; TFCE (E = 0.5, H = 2, 6-connectivity, 100 height steps as fslmaths) with "
           "max-TFCE FWE p-values (<code>*_tfce</code>, <code>*_ptfce</code>)" if tfce else "")
        + "; Benjamini-Hochberg FDR q of the parametric p-values of t. Cluster tables: "
        f"voxels with p<sub>FWE</sub> &lt; {results.alpha:g} (max-|t|), 26-connectivity.",
    ]
    return [f"<p>{p}</p>" for p in paras] + [img(_plot_matrix(results), "design matrix")]


def design_summary(c: ContrastResult, results: GroupResults) -> str:
    """One line on the TFCE result of a contrast ('' without TFCE)."""
    if c.p_tfce is None:
        return ""
    n_sig = int((c.p_tfce[results.mask] < results.alpha).sum())
    return (f"<p>TFCE: max |TFCE| = {float(np.abs(c.tfce).max()):.3g}; {n_sig} voxel(s) at "
            f"p<sub>FWE</sub>(TFCE) &lt; {results.alpha:g}; min p = "
            f"{float(c.p_tfce[results.mask].min()):.3g}.</p>")


def design_scatter(c: ContrastResult, results: GroupResults) -> str:
    """Peak-voxel value per subject against the tested column (by group for ``mean``)."""
    y = c.peak_values
    patient = results.participants["patient"].to_numpy(bool)
    figure = new_figure(4.8, 3.6)
    ax = figure.add_subplot()
    if c.contrast == "mean":
        for k, (sel, colour, name) in enumerate(((patient, "tab:red", "patients"),
                                                 (~patient, "tab:blue", "controls"))):
            if sel.any():
                ax.scatter(np.full(sel.sum(), k) + np.linspace(-0.1, 0.1, sel.sum()), y[sel],
                           c=colour, label=name, s=30, edgecolor="k", linewidth=0.5)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks([0, 1], ["patients", "controls"])
    else:
        x = c.tested
        for sel, colour, name in ((patient, "tab:red", "patients"),
                                  (~patient, "tab:blue", "controls")):
            if sel.any():
                ax.scatter(x[sel], y[sel], c=colour, label=name, s=30, edgecolor="k",
                           linewidth=0.5)
        ax.set_xlabel(f"{c.contrast} (design column, mean-centred)")
    where = "peak of largest FWE cluster" if c.peak_significant else "max |t| (not significant)"
    ax.set_title(f"{c.metric}, {c.label}\nvoxel {c.peak_ijk}: {where}", fontsize=9)
    paired = results.design.sessions and len(results.design.sessions) == 2
    ax.set_ylabel(f"{c.metric} {'change' if paired else 'value'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return png_uri(figure)
