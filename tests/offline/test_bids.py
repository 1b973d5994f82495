"""Finding runs and participants in a BIDS folder, and the errors naming the bad file."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from rtfb.offline.bids import BIDSError, find_runs, load_dataset, read_participants


def _run(root, sub, shape=(4, 4, 3), n=5, affine=None, tr=2.0, sidecar=True):
    func = root / sub / "func"
    func.mkdir(parents=True, exist_ok=True)
    affine = np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine
    data = np.random.default_rng(0).normal(1000, 1, shape + (n,)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), func / f"{sub}_task-rest_bold.nii.gz")
    if sidecar:
        meta = {"TaskName": "rest"} if tr is None else {"RepetitionTime": tr}
        (func / f"{sub}_task-rest_bold.json").write_text(json.dumps(meta))


def _participants(root, rows, columns=("participant_id", "group")):
    lines = ["\t".join(columns)] + ["\t".join(r) for r in rows]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def dataset(tmp_path):
    for sub in ("sub-01", "sub-02"):
        _run(tmp_path, sub)
    _participants(tmp_path, [("sub-01", "patient"), ("sub-02", "control")])
    return tmp_path


def test_valid_dataset(dataset):
    ds = load_dataset(dataset)
    assert ds.subjects == ["sub-01", "sub-02"]
    assert ds.shape == (4, 4, 3)
    assert [r.prefix for r in ds.runs] == ["sub-01_task-rest", "sub-02_task-rest"]
    assert all(r.tr == 2.0 for r in ds.runs)
    assert ds.runs[0].sidecar == dataset / "sub-01/func/sub-01_task-rest_bold.json"
    assert ds.participants.loc["sub-01", "group"] == "patient"
    assert ds.participants_path == dataset / "participants.tsv"


def test_simulator_cohort(tmp_path):
    from simulator.cohort import write_cohort

    write_cohort(tmp_path, 1, 1, shape=(16, 16, 10), n_volumes=40)
    ds = load_dataset(tmp_path)
    assert ds.subjects == ["sub-01", "sub-02"]
    assert list(ds.participants["group"]) == ["patient", "control"]
    assert ds.participants.loc["sub-01", "vas"] >= 3


def test_task_level_sidecar_inherited(dataset):
    (dataset / "sub-02/func/sub-02_task-rest_bold.json").unlink()
    (dataset / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    runs = find_runs(dataset)
    assert runs[1].tr == 1.5 and runs[1].sidecar == dataset / "task-rest_bold.json"


def test_missing_tr(dataset):
    _run(dataset, "sub-02", tr=None)
    with pytest.raises(BIDSError, match=r"sub-02_task-rest_bold\.json.*RepetitionTime"):
        find_runs(dataset)


def test_missing_sidecar(dataset):
    (dataset / "sub-02/func/sub-02_task-rest_bold.json").unlink()
    with pytest.raises(BIDSError, match=r"sub-02_task-rest_bold\.nii\.gz.*no JSON sidecar"):
        find_runs(dataset)


def test_bad_tr(dataset):
    _run(dataset, "sub-01", tr=-2)
    with pytest.raises(BIDSError, match=r"sub-01_task-rest_bold\.json.*> 0"):
        find_runs(dataset)


def test_no_runs(tmp_path):
    with pytest.raises(BIDSError, match="no functional run"):
        find_runs(tmp_path)
    with pytest.raises(BIDSError, match="not found"):
        find_runs(tmp_path / "nope")


def test_different_shapes(dataset):
    _run(dataset, "sub-02", shape=(4, 4, 4))
    with pytest.raises(BIDSError, match=r"2 different grids \(4x4x3 of 3x3x3 mm RAS at "
                                        r"\(0,0,0\): sub-01_task-rest; 4x4x4 of 3x3x3 mm RAS "
                                        r"at \(0,0,0\): sub-02_task-rest\).*--normalise mni"):
        load_dataset(dataset)
    # with normalisation the grids may differ: the first run's grid is reported
    assert load_dataset(dataset, same_grid=False).shape == (4, 4, 3)


def test_different_affines(dataset):
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    affine[0, 3] = 5.0
    _run(dataset, "sub-02", affine=affine)
    with pytest.raises(BIDSError, match=r"4x4x3 of 3x3x3 mm LAS at \(5,0,0\): sub-02_task-rest"):
        load_dataset(dataset)


def test_participants_without_group(dataset):
    _participants(dataset, [("sub-01", "40"), ("sub-02", "50")], ("participant_id", "age"))
    with pytest.raises(BIDSError, match=r"participants\.tsv: no 'group' column"):
        load_dataset(dataset)


def test_participant_without_data(dataset):
    _participants(dataset, [("sub-01", "patient"), ("sub-02", "control"),
                            ("sub-03", "control")])
    with pytest.raises(BIDSError, match=r"participants\.tsv: \['sub-03'\] listed but without"):
        load_dataset(dataset)


def test_data_without_participant(dataset):
    _participants(dataset, [("sub-01", "patient")])
    with pytest.raises(BIDSError, match=r"participants\.tsv: \['sub-02'\] have data"):
        load_dataset(dataset)


def test_participants_missing_file(dataset, tmp_path):
    (dataset / "participants.tsv").unlink()
    with pytest.raises(BIDSError, match=r"participants\.tsv: participants file not found"):
        load_dataset(dataset)
    assert load_dataset(dataset, require_participants=False).participants is None


def test_participants_explicit_path_and_checks(dataset, tmp_path):
    other = dataset / "other.tsv"
    other.write_text("participant_id\tgroup\nsub-01\tpatient\nsub-02\tcontrol\n")
    assert load_dataset(dataset, participants=other).participants_path == other
    other.write_text("participant_id\tgroup\nsub-01\tpatient\nsub-01\tcontrol\n")
    with pytest.raises(BIDSError, match=r"other\.tsv: duplicated participant_id"):
        read_participants(other)
    other.write_text("participant_id\tgroup\nsub-01\tn/a\n")
    with pytest.raises(BIDSError, match=r"other\.tsv: no group for \['sub-01'\]"):
        read_participants(other)
    other.write_text("participant_id\tgroup\n01\tpatient\n")
    with pytest.raises(BIDSError, match=r"other\.tsv: participant_id must look like"):
        read_participants(other)
