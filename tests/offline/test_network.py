"""ROI-graph and group-ICA stages on the planted simulator cohort (``planted_cohort`` fixture).

Oracles: numpy (corrcoef, arctanh, sorting the edges by hand), networkx on the graph built
here, scipy.stats.ttest_ind, and the simulator's ground truth (network map, expected FC).
"""

import json
import shutil

import networkx as nx
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rtfb.offline.bids import load_dataset
from rtfb.offline.group import group_analysis
from rtfb.offline.network import GLOBAL_METRICS, graph_analysis, ica_analysis


@pytest.fixture(scope="module")
def group(planted_cohort, tmp_path_factory):
    """Group results on a copy of the cohort's maps (few permutations: only the subjects
    and the mask matter here; the copy keeps the shared derivatives untouched)."""
    deriv = tmp_path_factory.mktemp("network") / "deriv"
    shutil.copytree(planted_cohort.deriv / "rtfb", deriv / "rtfb")
    participants = load_dataset(planted_cohort.bids).participants
    return group_analysis(deriv, participants, metrics=("alff",), n_permutations=10)


def _series(cohort, sid):
    path = cohort.deriv / "rtfb" / sid / "func" / f"{sid}_task-rest_desc-atlas_timeseries.tsv"
    return pd.read_csv(path, sep="\t")


def _oracle_graph(ts: np.ndarray, density: float) -> nx.Graph:
    """Binary graph of the strongest positive correlations, built by hand."""
    r = np.corrcoef(ts)
    n = r.shape[0]
    iu = np.triu_indices(n, 1)
    order = np.argsort(-r[iu], kind="stable")
    keep = [k for k in order[: round(density * n * (n - 1) / 2)] if r[iu][k] > 0]
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from((int(iu[0][k]), int(iu[1][k])) for k in keep)
    return graph


def test_graph_metrics_match_networkx_oracle(planted_cohort, group):
    graph = graph_analysis(group, density=0.2)
    assert graph.nodes == list(_series(planted_cohort, "sub-01").columns)
    assert len(graph.nodes) == 23 and not graph.dropped
    table = pd.read_csv(graph.files["metrics"], sep="\t", index_col="participant_id")
    assert list(table.index) == group.participants.index.tolist()
    for sid in ("sub-01", "sub-12"):
        g = _oracle_graph(_series(planted_cohort, sid).to_numpy().T, 0.2)
        row = table.loc[sid]
        assert row["global_efficiency"] == pytest.approx(nx.global_efficiency(g), rel=1e-12)
        assert row["local_efficiency"] == pytest.approx(nx.local_efficiency(g), rel=1e-12)
        assert row["clustering"] == pytest.approx(nx.average_clustering(g), rel=1e-12)
        np.testing.assert_allclose(graph.fc[graph.subjects.index(sid)],
                                   np.arctanh(np.corrcoef(_series(planted_cohort, sid).T)
                                              - np.eye(23)), atol=1e-6)


def test_graph_group_comparison_matches_scipy(group):
    graph = graph_analysis(group, density=0.2)
    patient = group.participants["patient"].to_numpy()
    assert list(graph.comparison.index) == list(GLOBAL_METRICS)
    for metric in GLOBAL_METRICS:
        values = graph.metrics[metric].to_numpy()
        res = stats.ttest_ind(values[patient], values[~patient])
        assert graph.comparison.loc[metric, "t"] == pytest.approx(res.statistic)
        assert graph.comparison.loc[metric, "p"] == pytest.approx(res.pvalue)
    assert graph.nodal.shape[0] == 23
    saved = pd.read_csv(graph.files["comparison"], sep="\t", index_col=0)
    np.testing.assert_allclose(saved["t"], graph.comparison["t"])


def test_planted_network_is_the_strongest_edge(planted_cohort, group):
    graph = graph_analysis(group, density=0.2)
    seed, target = graph.nodes.index("seed"), graph.nodes.index("target")
    truth = json.loads((planted_cohort.bids / "derivatives" / "truth" / "sub-01" /
                        "sub-01_truth.json").read_text())
    expected_z = np.arctanh(truth["fc"]["expected_roi_correlation"])
    for sel in (group.participants["patient"].to_numpy(), ~group.participants["patient"]
                .to_numpy()):
        mean = graph.fc[sel].mean(axis=0)
        i, j = np.unravel_index(np.argmax(mean), mean.shape)
        assert {i, j} == {seed, target}
        assert mean[seed, target] == pytest.approx(expected_z, abs=0.1)


def test_group_ica_recovers_the_planted_network(planted_cohort, group):
    ica = ica_analysis(group, n_components="auto", seed=0)
    truth = planted_cohort.bids / "derivatives" / "truth" / "network.nii.gz"
    network = (np.asarray(nib.load(truth).dataobj) > 0)[group.mask].astype(float)
    r = np.array([np.corrcoef(c, network)[0, 1] for c in ica.model.components_])
    best = int(np.argmax(r))
    assert r[best] > 0.8, r
    assert np.sort(r)[-2] < 0.5  # one component, not fragments
    # back-reconstructed subject maps of that component follow the network too
    files = sorted(ica.files["subject_maps"].glob("sub-*_desc-dualreg_components.nii.gz"))
    assert len(files) == 16
    subject_r = [np.corrcoef(np.asarray(nib.load(f).dataobj)[..., best][group.mask],
                             network)[0, 1] for f in files]
    assert min(subject_r) > 0.5, subject_r
    saved = np.asarray(nib.load(ica.files["components"]).dataobj)
    np.testing.assert_allclose(saved[group.mask].T, ica.model.components_, atol=1e-5)


def test_inconsistent_atlas_regions_are_named(planted_cohort, group, tmp_path):
    deriv = tmp_path / "deriv"
    shutil.copytree(planted_cohort.deriv / "rtfb", deriv / "rtfb")
    path = deriv / "rtfb" / "sub-03" / "func" / "sub-03_task-rest_desc-atlas_timeseries.tsv"
    table = pd.read_csv(path, sep="\t").drop(columns=["seed"])
    table.to_csv(path, sep="\t", index=False)
    group.deriv_dir, original = deriv, group.deriv_dir
    try:
        with pytest.raises(ValueError, match="sub-03.*differ"):
            graph_analysis(group)
        (deriv / "rtfb" / "sub-02" / "func" / "sub-02_task-rest_desc-clean_bold.nii.gz").unlink()
        with pytest.raises(FileNotFoundError, match="sub-02.*desc-clean_bold"):
            ica_analysis(group)
    finally:
        group.deriv_dir = original
    with pytest.raises(ValueError, match="density"):
        graph_analysis(group, density=1.5)


def test_report_has_graph_and_ica_sections(planted_cohort):
    text = (planted_cohort.deriv / "report.html").read_text()
    for needle in ("Graph metrics (ROI-to-ROI FC)", "global_efficiency", "Nodal degree",
                   "Group ICA", "Minka", "IC 1", "Classification", "95% CI"):
        assert needle in text, needle
