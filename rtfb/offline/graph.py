"""ROI time series, functional-connectivity matrices and graph-theoretical metrics.

The connectivity matrix is the Fisher z (:func:`rtfb.metrics.seed_fc.fisher_z`) of the Pearson
correlations between ROI mean series. Graphs are built from it either with an absolute
``threshold`` on z or at a fixed edge ``density`` (the strongest edges kept), always keeping
positive connections only. Metrics are computed with networkx wherever it implements them:

- ``degree``: nodal degree (binary) or strength (weighted; sum of the kept z values);
- ``clustering``: :func:`networkx.clustering` (Onnela's geometric-mean formula when weighted,
  weights normalised by the largest one);
- ``path_length``: characteristic path length, the mean shortest path over the *connected*
  node pairs (pairs in different components are left out, as in the Brain Connectivity
  Toolbox's ``charpath``); weighted distances are ``1 / weight``;
- ``global_efficiency`` and ``local_efficiency``: :func:`networkx.global_efficiency` and
  :func:`networkx.local_efficiency` (binary). The weighted versions use the same definitions
  with distances ``1 / weight`` (Latora & Marchiori 2001);
- ``modularity``: :func:`networkx.community.modularity` of the partition found by
  :func:`networkx.community.greedy_modularity_communities` (Clauset-Newman-Moore).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
from scipy import stats

from .._utils.checks import _validate_type, check_finite_array
from ..metrics.seed_fc import fisher_z

__all__ = ["roi_timeseries", "fc_matrix", "build_graph", "graph_metrics", "compare_groups"]

#: Keys of :func:`graph_metrics` whose value is one number per node.
NODAL_METRICS = ("degree", "nodal_clustering")


def roi_timeseries(data4d, labels3d, labels: Sequence[int] | None = None) -> np.ndarray:
    """Mean time series of each labelled region.

    Parameters
    ----------
    data4d : array-like, shape (X, Y, Z, T)
        BOLD series, time on the last axis.
    labels3d : array-like of int, shape (X, Y, Z)
        Atlas image; 0 (and negative values) are background.
    labels : sequence of int | None
        Labels to extract, in this order. ``None`` means every positive label present in
        ``labels3d``, in increasing order.

    Returns
    -------
    numpy.ndarray, shape (n_rois, T)
        Mean series of each region.
    """
    data = check_finite_array(data4d, "data4d", ndim=4)
    atlas = np.asarray(labels3d)
    if atlas.shape != data.shape[:3]:
        raise ValueError(f"labels3d must have the spatial shape of data4d {data.shape[:3]}, "
                         f"got {atlas.shape}.")
    if not np.issubdtype(atlas.dtype, np.integer):
        if not np.all(np.isfinite(atlas)) or not np.all(atlas == np.round(atlas)):
            raise ValueError("labels3d must contain integer labels.")
        atlas = atlas.astype(np.int64)
    present = np.unique(atlas[atlas > 0])
    if labels is None:
        labels = present
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size == 0:
        raise ValueError("No region to extract: labels3d has no positive label.")
    missing = np.setdiff1d(labels, present)
    if missing.size:
        raise ValueError(f"Label(s) {missing.tolist()} are not present in labels3d.")
    flat = atlas.ravel()
    series = data.reshape(-1, data.shape[3])
    return np.stack([series[flat == lab].mean(axis=0) for lab in labels])


def fc_matrix(ts) -> np.ndarray:
    """Fisher-z functional-connectivity matrix of ROI time series.

    Parameters
    ----------
    ts : array-like, shape (n_rois, n_time)
        ROI time series, time on the last axis.

    Returns
    -------
    numpy.ndarray, shape (n_rois, n_rois)
        Symmetric ``arctanh(r)`` (``r`` clipped to ``±(1 - 1e-7)``); the diagonal is 0 and
        so is every entry involving a constant series.
    """
    ts = check_finite_array(ts, "ts", ndim=2)
    n_rois, n_time = ts.shape
    if n_rois < 2:
        raise ValueError(f"ts must hold at least 2 regions, got {n_rois}.")
    if n_time < 3:
        raise ValueError(f"ts must have at least 3 time points, got {n_time}.")
    xc = ts - ts.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("it,it->i", xc, xc))
    constant = np.ptp(ts, axis=1) == 0
    norm[constant] = 1.0
    xn = xc / norm[:, None]
    r = np.clip(xn @ xn.T, -1.0, 1.0)
    r[constant, :] = 0.0
    r[:, constant] = 0.0
    np.fill_diagonal(r, 0.0)
    return fisher_z(r)


def _check_fc(fc) -> np.ndarray:
    fc = check_finite_array(fc, "fc", ndim=2)
    if fc.shape[0] != fc.shape[1] or fc.shape[0] < 2:
        raise ValueError(f"fc must be a square matrix of at least 2 nodes, got {fc.shape}.")
    if not np.allclose(fc, fc.T):
        raise ValueError("fc must be symmetric.")
    return fc


def build_graph(
    fc,
    threshold: float | None = None,
    density: float | None = None,
    weighted: bool = False,
) -> nx.Graph:
    """Undirected graph of the positive, strongest connections of a connectivity matrix.

    Parameters
    ----------
    fc : array-like, shape (n, n)
        Symmetric connectivity matrix (e.g. from :func:`fc_matrix`); the diagonal is ignored.
    threshold : float | None
        Keep edges with ``fc > threshold`` (and ``fc > 0``).
    density : float | None
        In (0, 1]: keep the ``round(density * n * (n - 1) / 2)`` strongest positive edges
        (fewer if there are not as many positive entries). Ties at the cut-off are broken by
        node order. Exactly one of ``threshold`` and ``density`` must be given.
    weighted : bool
        Store ``fc`` values as the ``weight`` edge attribute and ``1 / weight`` as
        ``distance``; otherwise every edge has weight 1 and distance 1.

    Returns
    -------
    networkx.Graph
        Graph on nodes ``0 .. n - 1``.
    """
    fc = _check_fc(fc)
    _validate_type(weighted, bool, "weighted")
    if (threshold is None) == (density is None):
        raise ValueError("Give exactly one of threshold and density.")
    n = fc.shape[0]
    iu, ju = np.triu_indices(n, k=1)
    values = fc[iu, ju]
    if threshold is not None:
        threshold = float(threshold)
        keep = (values > threshold) & (values > 0)
    else:
        density = float(density)
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}.")
        n_edges = int(round(density * values.size))
        order = np.argsort(-values, kind="stable")[:n_edges]
        keep = np.zeros(values.size, dtype=bool)
        keep[order] = True
        keep &= values > 0
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for i, j, w in zip(iu[keep], ju[keep], values[keep], strict=True):
        w = float(w) if weighted else 1.0
        graph.add_edge(int(i), int(j), weight=w, distance=1.0 / w)
    return graph


def _efficiency(graph: nx.Graph, weight: str | None) -> float:
    """Global efficiency: mean inverse shortest-path distance over ordered node pairs."""
    n = graph.number_of_nodes()
    if n < 2:
        return 0.0
    total = 0.0
    for source, lengths in nx.shortest_path_length(graph, weight=weight):
        total += sum(1.0 / d for target, d in lengths.items() if target != source)
    return total / (n * (n - 1))


def _local_efficiency(graph: nx.Graph, weight: str | None) -> float:
    """Mean over nodes of the global efficiency of the subgraph of each node's neighbours."""
    if weight is None:
        return float(nx.local_efficiency(graph))
    return float(np.mean([_efficiency(graph.subgraph(graph[v]), weight) for v in graph]))


def _path_length(graph: nx.Graph, weight: str | None) -> float:
    """Mean shortest-path length over connected ordered node pairs (NaN if no edge)."""
    lengths = [
        d
        for source, row in nx.shortest_path_length(graph, weight=weight)
        for target, d in row.items()
        if target != source
    ]
    return float(np.mean(lengths)) if lengths else float("nan")


def graph_metrics(
    fc,
    threshold: float | None = None,
    density: float | None = None,
    weighted: bool = False,
) -> dict[str, Any]:
    """Graph-theoretical metrics of a thresholded connectivity matrix.

    Parameters
    ----------
    fc : array-like, shape (n, n)
        Symmetric connectivity matrix (Fisher z from :func:`fc_matrix`, or an adjacency
        matrix).
    threshold, density : float | None
        How edges are selected, see :func:`build_graph`; exactly one must be given.
    weighted : bool
        Use the kept ``fc`` values as edge weights (distances ``1 / weight``).

    Returns
    -------
    dict
        ``degree`` (array, n; strength when weighted), ``nodal_clustering`` (array, n),
        ``mean_degree``, ``clustering`` (mean nodal clustering), ``path_length``,
        ``global_efficiency``, ``local_efficiency``, ``modularity`` (floats; ``path_length``
        and ``modularity`` are NaN for a graph without edges), ``n_edges`` (int),
        ``density`` (float) and ``communities`` (list of sorted node lists).
    """
    graph = build_graph(fc, threshold=threshold, density=density, weighted=weighted)
    weight = "weight" if weighted else None
    distance = "distance" if weighted else None
    nodes = range(graph.number_of_nodes())
    degree = np.array([d for _, d in graph.degree(nodes, weight=weight)], dtype=float)
    clustering = nx.clustering(graph, weight=weight)
    nodal_clustering = np.array([clustering[v] for v in nodes], dtype=float)
    if graph.number_of_edges():
        communities = nx.community.greedy_modularity_communities(graph, weight=weight)
        modularity = float(nx.community.modularity(graph, communities, weight=weight))
        communities = sorted(sorted(int(v) for v in c) for c in communities)
    else:
        communities, modularity = [[int(v)] for v in nodes], float("nan")
    if weighted:
        global_eff = _efficiency(graph, distance)
    else:
        global_eff = float(nx.global_efficiency(graph))
    return {
        "degree": degree,
        "nodal_clustering": nodal_clustering,
        "mean_degree": float(degree.mean()),
        "clustering": float(nodal_clustering.mean()),
        "path_length": _path_length(graph, distance),
        "global_efficiency": global_eff,
        "local_efficiency": _local_efficiency(graph, distance),
        "modularity": modularity,
        "n_edges": int(graph.number_of_edges()),
        "density": float(nx.density(graph)),
        "communities": communities,
    }


def _metrics_frame(metrics_per_subject) -> pd.DataFrame:
    """One row per subject, one column per scalar metric (nodal arrays as ``name_i``)."""
    if isinstance(metrics_per_subject, pd.DataFrame):
        return metrics_per_subject.reset_index(drop=True)
    rows = []
    for k, metrics in enumerate(metrics_per_subject):
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics_per_subject[{k}] must be a dict of metrics, "
                            f"got {type(metrics).__name__}.")
        row = {}
        for name, value in metrics.items():
            if name == "communities":
                continue
            arr = np.asarray(value)
            if arr.ndim == 0 and np.issubdtype(arr.dtype, np.number):
                row[name] = float(arr)
            elif arr.ndim == 1 and np.issubdtype(arr.dtype, np.number):
                row.update({f"{name}_{i}": float(v) for i, v in enumerate(arr)})
        rows.append(row)
    return pd.DataFrame(rows)


def compare_groups(
    metrics_per_subject,
    groups,
    equal_var: bool = True,
    levels: Sequence | None = None,
) -> pd.DataFrame:
    """Two-sample t-test of every metric between two groups of subjects.

    Parameters
    ----------
    metrics_per_subject : sequence of dict | pandas.DataFrame
        One :func:`graph_metrics` dict per subject (scalar metrics are compared; nodal
        arrays become one column per node, ``degree_0``, ...; ``communities`` is dropped),
        or a table with one row per subject and one numeric column per metric.
    groups : array-like, shape (n_subjects,)
        Group of each subject; exactly two distinct values. The first group in sorted order
        is ``a``, the second ``b`` and ``t > 0`` means ``mean_a > mean_b``.
    equal_var : bool
        Student's t-test if True, Welch's if False (:func:`scipy.stats.ttest_ind`).
    levels : sequence of 2 values | None
        The groups ``(a, b)`` in this order (default: the two values of ``groups`` in
        sorted order).

    Returns
    -------
    pandas.DataFrame
        Indexed by metric, with columns ``mean_<a>``, ``mean_<b>``, ``t``, ``p`` and ``p_fdr``
        (Benjamini-Hochberg over the metrics of the table). Metrics that take a single value
        over all subjects get NaN statistics.
    """
    frame = _metrics_frame(metrics_per_subject)
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.size != len(frame):
        raise ValueError(f"groups must have one entry per subject ({len(frame)}), "
                         f"got shape {groups.shape}.")
    present = np.unique(groups)
    if present.size != 2:
        raise ValueError(f"groups must contain exactly 2 distinct values, got "
                         f"{present.tolist()}.")
    if levels is None:
        levels = present
    elif len(levels) != 2 or set(np.asarray(levels).tolist()) != set(present.tolist()):
        raise ValueError(f"levels must be the 2 values of groups {present.tolist()}, "
                         f"got {list(levels)}.")
    frame = frame.select_dtypes(include="number")
    if frame.shape[1] == 0:
        raise ValueError("metrics_per_subject has no numeric metric to compare.")
    a, b = (frame.to_numpy(dtype=float)[groups == g] for g in levels)
    if min(len(a), len(b)) < 2:
        raise ValueError("Each group needs at least 2 subjects.")
    t = np.full(a.shape[1], np.nan)
    p = np.full(a.shape[1], np.nan)
    both = np.vstack([a, b])
    varying = np.ptp(both, axis=0) > 1e-12 * np.maximum(np.abs(both).max(axis=0), 1.0)
    if varying.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            res = stats.ttest_ind(a[:, varying], b[:, varying], axis=0, equal_var=equal_var)
        t[varying], p[varying] = res.statistic, res.pvalue
    p_fdr = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        p_fdr[ok] = stats.false_discovery_control(p[ok], method="bh")
    return pd.DataFrame(
        {
            f"mean_{levels[0]}": np.nanmean(a, axis=0),
            f"mean_{levels[1]}": np.nanmean(b, axis=0),
            "t": t,
            "p": p,
            "p_fdr": p_fdr,
        },
        index=pd.Index(frame.columns, name="metric"),
    )
