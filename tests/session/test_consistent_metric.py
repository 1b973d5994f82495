"""The fed-back metric equals the batch metric on the window cleaned by ONE nuisance model.

Oracle, independent of rtfb's GLM and metric code: from the session record (inputs, motion,
ROIs) the realigned data are rebuilt, the nuisance design (Legendre drift + motion) is built
with numpy, ``numpy.linalg.lstsq`` is fitted on all volumes so far, the whole window is
cleaned with that fit, and the metric is computed with plain numpy (FFT amplitudes, Pearson
correlation, Kendall's W with scipy ranks, PSC) at every volume of a long run, warm-up
included.
"""


import nibabel as nib
import numpy as np
import pytest
from scipy.stats import rankdata

from rtfb.config import loads_protocol
from rtfb.ingest import Volume
from rtfb.preprocess.realign import Realigner
from rtfb.session.record_reader import load_record
from rtfb.session.runner import Session
from simulator import make_subject, write_subject
from tests.session._sources import ListSource

N_VOLUMES = 150
TR = 2.0




METRICS = {
    "alff": 'kind = "alff"\nroi = "a"\nwindow = 30\nband = [0.01, 0.1]',
    "seed_fc": 'kind = "seed_fc"\nseed = "a"\ntarget = "b"\nwindow = 20',
    "psc": 'kind = "psc"\nroi = "a"\nwindow = 10',
    "reho": 'kind = "reho"\nroi = "a"\nwindow = 20\nneighborhood = 7',
}


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("consistent")
    subj = make_subject(shape=(20, 20, 12), n_volumes=N_VOLUMES, motion=True, seed=3,
                        motion_step=0.15)
    write_subject(subj, root / "subject")
    realigner = Realigner().fit(subj.data[..., 0], subj.affine)
    realigned, params = [], []
    for t in range(N_VOLUMES):
        vol, p = realigner.transform(subj.data[..., t])
        realigned.append(vol)
        params.append(p.copy())
    return root, subj, np.stack(realigned, axis=-1), np.array(params)


def _protocol(subject_path, metric):
    third = N_VOLUMES // 3
    return loads_protocol(f"""
[session]
name = "consistency"
tr = {TR}
volumes = {N_VOLUMES}
[[blocks]]
condition = "baseline"
volumes = {third}
[[blocks]]
condition = "regulate"
volumes = {N_VOLUMES - third}
feedback = true
[preprocess]
glm = "cumulative"
drift = "legendre"
drift_order = 2
[rois.a]
file = "{subject_path / 'roi-seed.nii.gz'}"
space = "native"
[rois.b]
file = "{subject_path / 'roi-target.nii.gz'}"
space = "native"
[metric]
{METRICS[metric]}
[feedback]
baseline = "block:baseline"
direction = "up"
""")


def _oracle_alff(clean, band):
    n = clean.shape[0]
    t = np.arange(n)
    design = np.column_stack([np.ones(n), t])
    detrended = clean - design @ np.linalg.lstsq(design, clean, rcond=None)[0]
    amp = 2 * np.abs(np.fft.fft(detrended, axis=0))[1:n // 2 + 1] / n
    freqs = np.arange(1, n // 2 + 1) / (n * TR)
    keep = (freqs >= band[0] - 1e-12) & (freqs <= band[1] + 1e-12)
    return amp[keep].mean(axis=0).mean()


def _oracle_kendall(series, roi_mask, mask):
    """Mean Kendall's W over the ROI voxels, 7-neighbourhood within the brain mask."""
    n = series.shape[-1]
    ranks = np.zeros(series.shape)
    ranks[mask] = rankdata(series[mask], axis=-1)
    out = []
    for x, y, z in np.argwhere(roi_mask):
        members = [(x, y, z)]
        for d in np.vstack([np.eye(3, dtype=int), -np.eye(3, dtype=int)]):
            p = (x + d[0], y + d[1], z + d[2])
            if all(0 <= p[i] < mask.shape[i] for i in range(3)) and mask[p]:
                members.append(p)
        k = len(members)
        r_sum = sum(ranks[m] for m in members)
        out.append(12 * ((r_sum - k * (n + 1) / 2) ** 2).sum() / (k**2 * (n**3 - n)))
    return float(np.mean(out))


@pytest.mark.parametrize("metric", ["alff", "seed_fc", "psc",
                                    pytest.param("reho", marks=pytest.mark.slow)])
def test_fed_back_metric_equals_one_model_oracle_every_volume(subject_dir, tmp_path, metric):
    root, subj, realigned, params = subject_dir
    protocol = _protocol(root / "subject", metric)
    vols = [Volume(subj.data[..., t], subj.affine, t) for t in range(N_VOLUMES)]
    Session(protocol, tmp_path / "rec").run(ListSource(vols))
    record = load_record(tmp_path / "rec")
    assert [v["index"] for v in record.volumes] == list(range(N_VOLUMES))

    rois = tmp_path / "rec" / "rois"
    mask = np.asarray(nib.load(rois / "brain_mask.nii.gz").dataobj) > 0
    roi_a = np.asarray(nib.load(rois / "roi-a.nii.gz").dataobj) > 0
    roi_b = np.asarray(nib.load(rois / "roi-b.nii.gz").dataobj) > 0
    # the recorded inputs are the volumes given, realigned independently in the fixture
    for i in (0, N_VOLUMES // 2, N_VOLUMES - 1):
        np.testing.assert_array_equal(record.input_volume(i), subj.data[..., i])
    np.testing.assert_allclose(params, [v["motion"] for v in record.volumes], atol=1e-9)
    s = 2 * np.arange(N_VOLUMES) / (N_VOLUMES - 1) - 1
    design = np.column_stack([np.ones(N_VOLUMES), s, 1.5 * s**2 - 0.5, params])
    w = protocol.metric.window
    n_win = w + 1 if metric == "psc" else w
    y_all = realigned[mask].T  # (time, in-mask voxels)
    offset = y_all[0]
    recorded = [v["metrics"][metric] for v in record.volumes]
    checked = 0
    for t in range(N_VOLUMES):
        if t < n_win - 1:  # warm-up: no value
            assert recorded[t] is None, (t, recorded[t])
            continue
        x = design[:t + 1]
        beta = np.linalg.lstsq(x, y_all[:t + 1], rcond=None)[0]
        win = slice(t - n_win + 1, t + 1)
        clean = y_all[win] - design[win] @ beta + offset  # time x in-mask voxels
        full = np.zeros(mask.shape + (n_win,))
        full[mask] = clean.T
        if metric == "alff":
            expected = _oracle_alff(full[roi_a].T, protocol.metric.band)
        elif metric == "seed_fc":
            seed = full[roi_a].mean(axis=0)
            r = [np.corrcoef(seed, v)[0, 1] for v in full[roi_b]]
            expected = float(np.mean(np.arctanh(r)))
        elif metric == "psc":
            roi_series = full[roi_a].mean(axis=0)
            base = roi_series[:-1].mean()
            expected = 100 * (roi_series[-1] - base) / base
        else:
            expected = _oracle_kendall(full, roi_a, mask)
        assert recorded[t] == pytest.approx(expected, rel=1e-7, abs=1e-9), t
        checked += 1
    assert checked == N_VOLUMES - n_win + 1
