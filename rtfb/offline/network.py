"""Network analyses of a cohort: ROI-graph metrics and group ICA, from the subject derivatives.

Both read what :func:`rtfb.offline.subject.process_subject` wrote and the analysed subjects
and intersection mask of :func:`rtfb.offline.group.group_analysis`:

* :func:`graph_analysis` -- every subject's atlas time series
  (``desc-atlas_timeseries.tsv``) -> Fisher-z FC matrix (:func:`~rtfb.offline.graph.
  fc_matrix`) -> graph at a fixed edge density (:func:`~rtfb.offline.graph.graph_metrics`:
  degree, clustering, path length, global/local efficiency, modularity, networkx) -> two-sample
  t-test of every global metric, patients vs controls (:func:`~rtfb.offline.graph.
  compare_groups`, BH FDR over the metrics). Regions without a voxel in some subject's brain
  mask are left out of every subject's graph (noted).
* :func:`ica_analysis` -- every subject's cleaned series (``desc-clean_bold``) in the
  intersection mask -> :class:`~rtfb.offline.ica.GroupICA` (temporal concatenation, PCA,
  FastICA, dual regression).

Outputs in ``DERIV/group/``:

* ``graph_metrics.tsv`` (global metrics, one row per subject), ``graph_comparison.tsv``
  (their group comparison), ``graph_nodal_degree.tsv`` (degree of every node compared),
  ``graph_fc_mean.tsv`` (mean FC of each group, long format);
* ``ica_components.nii.gz`` (4D group maps, z-scored), ``ica_timecourses.tsv`` and
  ``ica/sub-XX_desc-dualreg_components.nii.gz`` (4D back-reconstructed subject maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._utils.checks import check_int
from .graph import compare_groups, fc_matrix, graph_metrics
from .group_common import PIPELINE_DIR, single_file
from .group_results import GroupResults
from .ica import GroupICA

__all__ = ["GraphResults", "ICAResults", "graph_analysis", "ica_analysis"]

#: Global metrics compared between groups (``mean_degree`` is fixed by the density in a
#: binary graph, so it is compared only for weighted graphs, where it is the mean strength).
GLOBAL_METRICS = ("clustering", "path_length", "global_efficiency", "local_efficiency",
                  "modularity")


@dataclass
class GraphResults:
    """Outcome of :func:`graph_analysis`.

    Attributes
    ----------
    nodes : list of str
        Regions kept (graph nodes), in atlas order.
    dropped : list of str
        Regions left out (no voxel in some subject's brain mask).
    subjects : list of str
        Participant ids, rows of ``fc`` and ``metrics``.
    fc : numpy.ndarray, shape (n_subjects, n_nodes, n_nodes)
        Fisher-z FC matrices.
    metrics : pandas.DataFrame
        Global metrics per subject (index ``participant_id``), plus ``group``.
    comparison : pandas.DataFrame
        :func:`~rtfb.offline.graph.compare_groups` of the global metrics; ``t > 0`` means
        patients higher.
    nodal : pandas.DataFrame
        The same comparison of every node's degree (strength if weighted), indexed by
        node name (BH FDR over the nodes).
    density : float
        Edge density of the graphs.
    files : dict of str to Path
        Written files.
    """

    nodes: list[str]
    dropped: list[str]
    subjects: list[str]
    fc: np.ndarray
    metrics: pd.DataFrame
    comparison: pd.DataFrame
    nodal: pd.DataFrame
    density: float
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class ICAResults:
    """Outcome of :func:`ica_analysis`.

    Attributes
    ----------
    model : GroupICA
        The fitted estimator (``components_`` over the in-mask voxels).
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Voxels of the analysis (the group intersection mask).
    affine : numpy.ndarray, shape (4, 4)
        Grid affine.
    subjects : list of str
        Participant ids (rows of ``model.subject_maps_``).
    files : dict of str to Path
        Written files.
    """

    model: GroupICA
    mask: np.ndarray
    affine: np.ndarray
    subjects: list[str]
    files: dict[str, Path] = field(default_factory=dict)

    def component_maps(self) -> np.ndarray:
        """Group maps on the grid, shape (X, Y, Z, n_components), 0 outside the mask."""
        out = np.zeros(self.mask.shape + (self.model.n_components_,))
        out[self.mask] = self.model.components_.T
        return out


def _find_one(deriv_dir: Path, subject: str, suffix: str, file_glob: str) -> Path:
    func = Path(deriv_dir) / PIPELINE_DIR / subject / "func"
    pattern = file_glob.format(subject=subject) + suffix
    hits = sorted(func.glob(pattern)) if func.is_dir() else []
    return single_file(hits, subject, suffix.strip("_").split(".")[0], func / pattern)


def graph_analysis(group: GroupResults, density: float = 0.2, weighted: bool = False,
                   file_glob: str = "{subject}_*") -> GraphResults:
    """ROI-to-ROI FC graphs of every subject and their comparison between groups.

    Parameters
    ----------
    group : GroupResults
        Output of :func:`~rtfb.offline.group.group_analysis` (subjects, groups, folders).
    density : float
        Fraction of the possible edges kept (the strongest positive ones), in (0, 1].
    weighted : bool
        Weighted graph metrics (edge weight = Fisher z).
    file_glob : str
        Glob of the BIDS entities before ``_desc-`` (``{subject}`` replaced).

    Returns
    -------
    GraphResults

    Raises
    ------
    FileNotFoundError
        A subject has no atlas time series (run ``rtfb analyze`` with an atlas).
    ValueError
        Subjects with different regions or numbers of volumes per region, fewer than 3
        regions left, or ``density`` outside (0, 1].
    """
    if not 0 < float(density) <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}.")
    subjects = list(group.participants.index)
    tables, columns = [], None
    for sid in subjects:
        path = _find_one(group.deriv_dir, sid, "_desc-atlas_timeseries.tsv", file_glob)
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
        if columns is None:
            columns, first = list(table.columns), path
        elif list(table.columns) != columns:
            raise ValueError(f"{path}: regions {list(table.columns)} differ from those of "
                             f"{first} ({columns}); use one atlas for all subjects.")
        tables.append(table)
    missing = sorted({c for t in tables for c in columns if t[c].isna().any()},
                     key=columns.index)
    nodes = [c for c in columns if c not in missing]
    if len(nodes) < 3:
        raise ValueError(f"only {len(nodes)} atlas regions have voxels in every subject's "
                         f"brain mask ({missing} are missing in some); need at least 3.")
    if missing:
        group.notes.append(f"graph: regions without a voxel in some subject's brain mask "
                           f"were left out: {', '.join(missing)}.")
    fc = np.stack([fc_matrix(t[nodes].to_numpy(dtype=float).T) for t in tables])
    per_subject = [graph_metrics(m, density=float(density), weighted=weighted) for m in fc]
    names = (("mean_degree",) if weighted else ()) + GLOBAL_METRICS
    metrics = pd.DataFrame([{k: res[k] for k in names} for res in per_subject],
                           index=pd.Index(subjects, name="participant_id"))
    patient = group.participants["patient"].to_numpy()
    labels = np.where(patient, "patients", "controls")
    metrics.insert(0, "group", labels)
    levels = ("patients", "controls")
    comparison = compare_groups(metrics[list(names)], labels, levels=levels)
    degree = pd.DataFrame(np.stack([res["degree"] for res in per_subject]), columns=nodes)
    nodal = compare_groups(degree, labels, levels=levels)
    nodal.index.name = "node"
    out = GraphResults(nodes=nodes, dropped=missing, subjects=subjects, fc=fc,
                       metrics=metrics, comparison=comparison, nodal=nodal,
                       density=float(density))
    out_dir = group.out_dir
    out.files["metrics"] = out_dir / "graph_metrics.tsv"
    metrics.to_csv(out.files["metrics"], sep="\t", na_rep="n/a")
    out.files["comparison"] = out_dir / "graph_comparison.tsv"
    comparison.to_csv(out.files["comparison"], sep="\t", na_rep="n/a")
    out.files["nodal"] = out_dir / "graph_nodal_degree.tsv"
    nodal.to_csv(out.files["nodal"], sep="\t", na_rep="n/a")
    rows = []
    for name, sel in (("patients", patient), ("controls", ~patient)):
        mean = fc[sel].mean(axis=0)
        iu = np.triu_indices(len(nodes), 1)
        rows += [{"group": name, "node_a": nodes[i], "node_b": nodes[j], "fisher_z": mean[i, j]}
                 for i, j in zip(*iu, strict=True)]
    out.files["fc_mean"] = out_dir / "graph_fc_mean.tsv"
    pd.DataFrame(rows).to_csv(out.files["fc_mean"], sep="\t", index=False)
    return out


def ica_analysis(group: GroupResults, n_components: int | str = "auto",
                 seed: int | None = 0, file_glob: str = "{subject}_*") -> ICAResults:
    """Group spatial ICA of the subjects' cleaned series in the group mask.

    Holds every subject's in-mask series in memory (subjects x volumes x voxels x 8 bytes).

    Parameters
    ----------
    group : GroupResults
        Output of :func:`~rtfb.offline.group.group_analysis` (subjects, mask, folders).
    n_components : int | "auto"
        Number of components (``"auto"``: Minka's MLE, see :class:`GroupICA`).
    seed : int | None
        Seed of FastICA.
    file_glob : str
        Glob of the BIDS entities before ``_desc-`` (``{subject}`` replaced).

    Returns
    -------
    ICAResults

    Raises
    ------
    FileNotFoundError
        A subject has no ``desc-clean_bold`` (``AnalysisConfig.save_clean`` was off).
    ValueError
        A cleaned series on another grid than the maps.
    """
    import nibabel as nib

    if not isinstance(n_components, str):
        n_components = check_int(n_components, "n_components", minimum=2)
    subjects = list(group.participants.index)
    mask = group.mask
    series = []
    for sid in subjects:
        path = _find_one(group.deriv_dir, sid, "_desc-clean_bold.nii.gz", file_glob)
        img = nib.load(path)
        if img.shape[:3] != mask.shape or not np.allclose(img.affine, group.affine, atol=1e-3):
            raise ValueError(f"{path}: grid {img.shape[:3]} differs from the maps' grid "
                             f"{mask.shape} (or its affine does).")
        data = np.asarray(img.dataobj, dtype=np.float64)
        series.append(np.ascontiguousarray(data[mask].T))
    model = GroupICA(n_components=n_components, random_state=seed).fit(series)
    out = ICAResults(model=model, mask=mask, affine=group.affine, subjects=subjects)
    out_dir = group.out_dir
    out.files["components"] = out_dir / "ica_components.nii.gz"
    nib.save(nib.Nifti1Image(out.component_maps().astype(np.float32), group.affine),
             out.files["components"])
    sub_dir = out_dir / "ica"
    sub_dir.mkdir(exist_ok=True)
    for sid, maps in zip(subjects, model.subject_maps_, strict=True):
        grid = np.zeros(mask.shape + (maps.shape[0],), np.float32)
        grid[mask] = maps.T
        nib.save(nib.Nifti1Image(grid, group.affine),
                 sub_dir / f"{sid}_desc-dualreg_components.nii.gz")
    out.files["subject_maps"] = sub_dir
    rows = [{"participant_id": sid, "volume": t,
             **{f"ic{k + 1:02d}": float(v) for k, v in enumerate(row)}}
            for sid, tc in zip(subjects, model.subject_timecourses_, strict=True)
            for t, row in enumerate(tc)]
    out.files["timecourses"] = out_dir / "ica_timecourses.tsv"
    pd.DataFrame(rows).to_csv(out.files["timecourses"], sep="\t", index=False)
    return out
