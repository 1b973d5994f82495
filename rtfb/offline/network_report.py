"""Report sections of the network analyses (:mod:`rtfb.offline.network`): graph and ICA."""

from __future__ import annotations

import numpy as np

from ..reporting import esc, fmt_sig, img, new_figure, note, png_uri
from .network import GraphResults, ICAResults

__all__ = ["graph_section", "ica_section"]

_MAX_ICA_FIGURES = 12
_ICA_THRESHOLD = 2.0  # |z| shown on the component maps


def _plot_fc(graph: GraphResults, patient: np.ndarray) -> str:
    figure = new_figure(10, 4.6)
    means = [graph.fc[patient].mean(axis=0), graph.fc[~patient].mean(axis=0)]
    vmax = max(float(np.abs(m).max()) for m in means) or 1.0
    n = len(graph.nodes)
    for k, (mean, name) in enumerate(zip(means, ("patients", "controls"), strict=True)):
        ax = figure.add_subplot(1, 2, k + 1)
        im = ax.imshow(mean, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"mean FC (Fisher z), {name}", fontsize=9)
        ticks = np.arange(n)
        ax.set_xticks(ticks, graph.nodes, rotation=90, fontsize=5 if n > 20 else 7)
        ax.set_yticks(ticks, graph.nodes, fontsize=5 if n > 20 else 7)
        figure.colorbar(im, ax=ax, shrink=0.8)
    return png_uri(figure)


def _plot_metrics(graph: GraphResults, patient: np.ndarray) -> str:
    figure = new_figure(10, 5.0)
    rng = np.random.default_rng(0)  # horizontal jitter of the points only
    for k, metric in enumerate(graph.comparison.index):
        ax = figure.add_subplot(2, 3, k + 1)
        values = graph.metrics[metric].to_numpy(float)
        for pos, (sel, colour) in enumerate(((patient, "tab:red"), (~patient, "tab:blue"))):
            v = values[sel & np.isfinite(values)]
            ax.boxplot([v], positions=[pos], widths=0.5, showfliers=False)
            ax.scatter(pos + rng.uniform(-0.12, 0.12, v.size), v, s=14, c=colour,
                       edgecolor="k", linewidth=0.4, zorder=3)
        row = graph.comparison.loc[metric]
        ax.set_xticks([0, 1], ["patients", "controls"], fontsize=8)
        ax.set_title(f"{metric}\nt={row.t:.2f}, p={row.p:.3g}, q={row.p_fdr:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return png_uri(figure)


def graph_section(graph: GraphResults, patient: np.ndarray) -> list[str]:
    """HTML body of the graph-metrics section.

    Parameters
    ----------
    graph : GraphResults
        Output of :func:`~rtfb.offline.network.graph_analysis`.
    patient : numpy.ndarray of bool, shape (n_subjects,)
        Patient flag of each subject (order of ``graph.subjects``).

    Returns
    -------
    list of str
        HTML fragments.
    """
    head = "<tr><th>metric</th><th>mean patients</th><th>mean controls</th><th>t</th>" \
           "<th>p</th><th>q<sub>FDR</sub></th></tr>"
    rows = [f"<tr><td>{esc(m)}</td><td>{fmt_sig(r.mean_patients)}</td>"
            f"<td>{fmt_sig(r.mean_controls)}</td><td>{fmt_sig(r.t)}</td><td>{fmt_sig(r.p)}</td>"
            f"<td>{fmt_sig(r.p_fdr)}</td></tr>" for m, r in graph.comparison.iterrows()]
    body = [
        f"<p>{len(graph.nodes)} regions (nodes); Fisher-z FC of their mean cleaned series; "
        f"binary graphs keeping the strongest positive {100 * graph.density:g}% of the edges; "
        "metrics from networkx (clustering: networkx.clustering; path length over connected "
        "pairs; global/local efficiency; modularity of the greedy (Clauset-Newman-Moore) "
        "partition). Two-sample t-tests, patients vs controls (t &gt; 0: patients higher), "
        "Benjamini-Hochberg FDR over the metrics.</p>",
    ]
    if graph.dropped:
        body.append(note(f"Left out (no voxel in some subject's mask): "
                          f"{', '.join(graph.dropped)}."))
    nodal = graph.nodal.sort_values("p").head(5)
    nodal_rows = [f"<tr><td>{esc(m)}</td><td>{fmt_sig(r.mean_patients)}</td>"
                  f"<td>{fmt_sig(r.mean_controls)}</td><td>{fmt_sig(r.t)}</td><td>{fmt_sig(r.p)}</td>"
                  f"<td>{fmt_sig(r.p_fdr)}</td></tr>" for m, r in nodal.iterrows()]
    body += [f'<table class="summary">{head}' + "".join(rows) + "</table>",
             f"<h3>Nodal degree</h3><p>Five nodes of smallest p of {len(graph.nodes)} "
             f"(q<sub>FDR</sub> over the nodes; all in <code>{esc(graph.files['nodal'])}"
             "</code>).</p>",
             f'<table class="summary">{head.replace("metric", "node")}'
             + "".join(nodal_rows) + "</table>",
             img(_plot_metrics(graph, patient), "graph metrics by group"),
             img(_plot_fc(graph, patient), "mean FC matrices by group")]
    return body


def _plot_component(ica: ICAResults, k: int, bg, contour) -> str:
    import nibabel as nib
    from nilearn.plotting import plot_stat_map

    maps = ica.component_maps()[..., k]
    img = nib.Nifti1Image(maps.astype(np.float32), ica.affine)
    peak = np.unravel_index(np.argmax(maps), maps.shape)
    cut = ica.affine[:3, :3] @ np.asarray(peak, float) + ica.affine[:3, 3]
    figure = new_figure(9, 2.6, layout=None)
    ratio = ica.model.explained_variance_ratio_[k]
    display = plot_stat_map(
        img, bg_img=bg, figure=figure, display_mode="ortho", cut_coords=cut,
        threshold=_ICA_THRESHOLD, draw_cross=False, black_bg=False, colorbar=True,
        title=f"IC {k + 1} (z; group PCA variance {100 * ratio:.1f}%)",
        resampling_interpolation="nearest")
    if contour is not None:
        display.add_contours(contour, levels=[0.5], colors="k", linewidths=1)
    return png_uri(figure)


def ica_section(ica: ICAResults, bg, contour) -> list[str]:
    """HTML body of the group-ICA section.

    Parameters
    ----------
    ica : ICAResults
        Output of :func:`~rtfb.offline.network.ica_analysis`.
    bg, contour
        Background image and mask outline of the stat-map figures (as for the group maps).

    Returns
    -------
    list of str
        HTML fragments.
    """
    model = ica.model
    auto = model.n_components == "auto"
    body = [
        f"<p>Group spatial ICA of {len(ica.subjects)} subjects' cleaned series in the group "
        f"mask ({int(ica.mask.sum())} voxels): per-subject temporal PCA, concatenation, group "
        f"PCA to {model.n_components_} components"
        + (" (Minka's MLE of the dimension)" if auto else "")
        + ", FastICA (scikit-learn), maps z-scored with their heavy tail positive; subject "
        "maps and time courses by dual regression (written to "
        f"<code>{esc(ica.files.get('subject_maps', ''))}</code>). Maps thresholded at "
        f"|z| &gt; {_ICA_THRESHOLD:g} for display.</p>",
    ]
    n_show = min(model.n_components_, _MAX_ICA_FIGURES)
    if n_show < model.n_components_:
        body.append(note(f"First {n_show} of {model.n_components_} components shown."))
    body += [img(_plot_component(ica, k, bg, contour), f"IC {k + 1}") for k in range(n_show)]
    return body
