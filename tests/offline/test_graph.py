import networkx as nx
import numpy as np
import pandas as pd
import pytest

from rtfb.offline.graph import (
    build_graph,
    compare_groups,
    fc_matrix,
    graph_metrics,
    roi_timeseries,
)


def test_roi_timeseries_matches_hand_means():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 3, 2, 10))
    labels = np.zeros((4, 3, 2), dtype=int)
    labels[0, 0, 0] = labels[1, 2, 1] = 2
    labels[3, 1, :] = 5
    ts = roi_timeseries(data, labels)
    assert ts.shape == (2, 10)
    np.testing.assert_allclose(ts[0], (data[0, 0, 0] + data[1, 2, 1]) / 2)
    np.testing.assert_allclose(ts[1], data[3, 1, :].mean(axis=0))
    np.testing.assert_allclose(roi_timeseries(data, labels, labels=[5, 2]), ts[::-1])


def test_roi_timeseries_errors():
    data = np.zeros((2, 2, 2, 5))
    with pytest.raises(ValueError, match="spatial shape"):
        roi_timeseries(data, np.ones((2, 2, 3), dtype=int))
    with pytest.raises(ValueError, match="no positive label"):
        roi_timeseries(data, np.zeros((2, 2, 2), dtype=int))
    with pytest.raises(ValueError, match=r"\[7\]"):
        roi_timeseries(data, np.ones((2, 2, 2), dtype=int), labels=[1, 7])
    with pytest.raises(ValueError, match="4 dimensions"):
        roi_timeseries(np.zeros((2, 2, 2)), np.ones((2, 2, 2), dtype=int))


def test_fc_matrix_matches_hand_computation():
    rng = np.random.default_rng(1)
    ts = rng.standard_normal((4, 50))
    ts[1] += ts[0]
    z = fc_matrix(ts)
    for i in range(4):
        for j in range(4):
            if i == j:
                assert z[i, j] == 0
                continue
            a, b = ts[i] - ts[i].mean(), ts[j] - ts[j].mean()
            r = (a @ b) / np.sqrt((a @ a) * (b @ b))
            assert z[i, j] == pytest.approx(0.5 * np.log((1 + r) / (1 - r)), abs=1e-12)
    np.testing.assert_array_equal(z, z.T)


def test_fc_matrix_constant_series_and_errors():
    ts = np.vstack([np.arange(10.0), np.ones(10), np.arange(10.0) ** 2])
    z = fc_matrix(ts)
    assert np.all(z[1] == 0) and np.all(z[:, 1] == 0)
    assert np.isfinite(z).all()
    with pytest.raises(ValueError, match="at least 2 regions"):
        fc_matrix(np.ones((1, 10)))
    with pytest.raises(ValueError, match="NaN"):
        fc_matrix(np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]]))


def test_ring_lattice_matches_networkx_and_analytic_clustering():
    n, k = 20, 4
    graph = nx.watts_strogatz_graph(n, k, p=0.0)
    metrics = graph_metrics(nx.to_numpy_array(graph), threshold=0.5)
    assert metrics["n_edges"] == n * k // 2
    np.testing.assert_array_equal(metrics["degree"], np.full(n, k))
    # Ring lattice clustering: 3 (k - 2) / (4 (k - 1)).
    assert metrics["clustering"] == pytest.approx(3 * (k - 2) / (4 * (k - 1)))
    assert metrics["path_length"] == pytest.approx(nx.average_shortest_path_length(graph))
    assert metrics["global_efficiency"] == pytest.approx(nx.global_efficiency(graph))
    assert metrics["local_efficiency"] == pytest.approx(nx.local_efficiency(graph))
    communities = nx.community.greedy_modularity_communities(graph)
    assert metrics["modularity"] == pytest.approx(nx.community.modularity(graph, communities))
    assert metrics["modularity"] > 0.3


def test_complete_graph_analytic_values():
    fc = np.ones((8, 8)) - np.eye(8)
    for weighted in (False, True):
        metrics = graph_metrics(fc, threshold=0.5, weighted=weighted)
        assert metrics["clustering"] == pytest.approx(1.0)
        assert metrics["path_length"] == pytest.approx(1.0)
        assert metrics["global_efficiency"] == pytest.approx(1.0)
        assert metrics["local_efficiency"] == pytest.approx(1.0)
        assert metrics["modularity"] == pytest.approx(0.0, abs=1e-12)
        assert metrics["density"] == pytest.approx(1.0)
        np.testing.assert_allclose(metrics["degree"], 7.0)


def test_weighted_uses_inverse_weights_as_distances():
    # Path 0 - 1 - 2 with weights 2 and 0.5: distances 0.5 and 2.
    fc = np.zeros((3, 3))
    fc[0, 1] = fc[1, 0] = 2.0
    fc[1, 2] = fc[2, 1] = 0.5
    metrics = graph_metrics(fc, threshold=0.0, weighted=True)
    np.testing.assert_allclose(metrics["degree"], [2.0, 2.5, 0.5])
    # Distances: d01 = 0.5, d12 = 2, d02 = 2.5.
    assert metrics["path_length"] == pytest.approx((0.5 + 2 + 2.5) / 3)
    assert metrics["global_efficiency"] == pytest.approx((2 + 0.5 + 0.4) / 3)
    assert metrics["local_efficiency"] == pytest.approx(0.0)


def test_density_threshold_and_negative_edges():
    rng = np.random.default_rng(2)
    fc = fc_matrix(rng.standard_normal((10, 40)))
    for density in (0.1, 0.2):
        positive = np.count_nonzero(np.triu(fc, 1) > 0)
        graph = build_graph(fc, density=density)
        assert graph.number_of_edges() == min(round(density * 45), positive)
        kept = [fc[i, j] for i, j in graph.edges]
        dropped = [fc[i, j] for i, j in nx.complement(graph).edges]
        assert min(kept) >= max(dropped)
    graph = build_graph(-np.abs(fc), threshold=-1.0)
    assert graph.number_of_edges() == 0
    metrics = graph_metrics(-np.abs(fc), threshold=-1.0)
    assert np.isnan(metrics["path_length"]) and np.isnan(metrics["modularity"])
    with pytest.raises(ValueError, match="exactly one"):
        graph_metrics(fc)
    with pytest.raises(ValueError, match="exactly one"):
        graph_metrics(fc, threshold=0.1, density=0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        graph_metrics(fc, density=1.5)
    with pytest.raises(ValueError, match="symmetric"):
        graph_metrics(np.triu(np.ones((3, 3))), threshold=0)


def test_disconnected_path_length_uses_connected_pairs():
    graph = nx.disjoint_union(nx.complete_graph(3), nx.path_graph(3))
    metrics = graph_metrics(nx.to_numpy_array(graph), threshold=0.5)
    # complete graph pairs: 6 of length 1; path: 4 of length 1, 2 of length 2.
    assert metrics["path_length"] == pytest.approx((6 + 4 + 4) / 12)
    assert metrics["global_efficiency"] == pytest.approx(nx.global_efficiency(graph))


def test_compare_groups_detects_planted_difference():
    rng = np.random.default_rng(3)
    subjects, groups = [], []
    for s in range(24):
        group = "patient" if s % 2 else "control"
        ts = rng.standard_normal((8, 120))
        if group == "patient":
            ts[1:4] += 1.5 * ts[0]  # a stronger cluster -> higher clustering / efficiency
        subjects.append(graph_metrics(fc_matrix(ts), density=0.3))
        groups.append(group)
    table = compare_groups(subjects, groups)
    assert isinstance(table, pd.DataFrame)
    assert {"mean_control", "mean_patient", "t", "p", "p_fdr"} <= set(table.columns)
    assert "degree_0" in table.index and "communities" not in table.index
    assert table.loc["degree_0", "t"] < 0 and table.loc["degree_0", "p"] < 0.01
    # Against scipy directly.
    from scipy import stats

    vals = np.array([m["clustering"] for m in subjects])
    ref = stats.ttest_ind(vals[np.array(groups) == "control"], vals[np.array(groups) == "patient"])
    assert table.loc["clustering", "t"] == pytest.approx(ref.statistic)
    assert table.loc["clustering", "p"] == pytest.approx(ref.pvalue)
    assert (table["p_fdr"].dropna() >= table["p"][table["p_fdr"].notna()] - 1e-15).all()


def test_compare_groups_errors():
    metrics = [{"a": 1.0}, {"a": 2.0}, {"a": 3.0}]
    with pytest.raises(ValueError, match="exactly 2"):
        compare_groups(metrics, [0, 0, 0])
    with pytest.raises(ValueError, match="one entry per subject"):
        compare_groups(metrics, [0, 1])
    with pytest.raises(ValueError, match="at least 2"):
        compare_groups(metrics, [0, 0, 1])
    with pytest.raises(TypeError, match="dict"):
        compare_groups([1.0, 2.0], [0, 1])
    table = compare_groups(pd.DataFrame({"a": [1.0, 2, 3, 5]}), [0, 0, 1, 1])
    assert table.loc["a", "t"] < 0
