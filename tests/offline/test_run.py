"""``analyze``: one Dask task per run; local cluster vs synchronous; errors; CLI wiring."""

from __future__ import annotations

import argparse
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from rtfb.offline.commands import add_analyze_parser
from rtfb.offline.run import AnalysisError, analyze
from rtfb.offline.subject import AnalysisConfig, process_subject

from ._cohort_data import write_tiny_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_tiny_cohort(tmp_path_factory.mktemp("bids"), 2, 1)


@pytest.fixture(scope="module")
def synchronous(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("deriv_sync")
    return out, analyze(cohort, out, scheduler="synchronous", progress=False)


def _maps(paths):
    return {k: np.asarray(nib.load(p).dataobj) for k, p in paths.items()
            if str(p).endswith(".nii.gz")}


def test_synchronous_layout(synchronous, cohort):
    out, results = synchronous
    assert list(results) == ["sub-01_task-rest", "sub-02_task-rest", "sub-03_task-rest"]
    desc = json.loads((out / "rtfb/dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "rtfb"
    for prefix, paths in results.items():
        sub = prefix.split("_")[0]
        assert paths["ALFF"] == out / f"rtfb/{sub}/func/{prefix}_desc-ALFF_map.nii.gz"
        assert paths["done"].is_file()
    # the same maps as process_subject called directly with the cohort's default seeds
    direct = process_subject(cohort / "sub-02/func/sub-02_task-rest_bold.nii.gz", 2.0,
                             out.parent / "direct")
    got, exp = _maps(results["sub-02_task-rest"]), _maps(direct)
    assert got.keys() == exp.keys()
    for key in exp:
        np.testing.assert_array_equal(got[key], exp[key], err_msg=key)


def _assert_same_maps(expected, results):
    assert results.keys() == expected.keys()
    for prefix in expected:
        a, b = _maps(expected[prefix]), _maps(results[prefix])
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{prefix} {key}")


def test_local_cluster_equals_synchronous(synchronous, cohort, tmp_path):
    results = analyze(cohort, tmp_path, n_workers=2, progress=False)
    _assert_same_maps(synchronous[1], results)


def test_existing_scheduler_equals_synchronous(synchronous, cohort, tmp_path):
    """``scheduler=ADDRESS``: the tasks run on a cluster started elsewhere, left running."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        results = analyze(cohort, tmp_path, scheduler=cluster.scheduler_address,
                          progress=False)
        with Client(cluster.scheduler_address, timeout=10) as client:
            assert len(client.scheduler_info()["workers"]) == 1  # still up after analyze
    _assert_same_maps(synchronous[1], results)


def test_resume_and_overwrite(synchronous, cohort, tmp_path):
    out = tmp_path / "deriv"
    shutil.copytree(synchronous[0], out)
    alff = out / "rtfb/sub-01/func/sub-01_task-rest_desc-ALFF_map.nii.gz"
    mtime = alff.stat().st_mtime_ns
    analyze(cohort, out, scheduler="synchronous", progress=False)
    assert alff.stat().st_mtime_ns == mtime
    analyze(cohort, out, scheduler="synchronous", progress=False, overwrite=True)
    assert alff.stat().st_mtime_ns != mtime


def test_unreachable_scheduler(cohort, tmp_path):
    with pytest.raises(ConnectionError, match=r"'tcp://127\.0\.0\.1:1'"):
        analyze(cohort, tmp_path, scheduler="tcp://127.0.0.1:1", connect_timeout=0.5,
                progress=False)
    with pytest.raises(ConnectionError, match="'no-such-scheduler'"):
        analyze(cohort, tmp_path, scheduler="no-such-scheduler", connect_timeout=0.5,
                progress=False)


def test_failed_run_reported_others_written(cohort, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(cohort, bids, ignore=shutil.ignore_patterns("sub-02"))
    (bids / "participants.tsv").write_text("participant_id\tgroup\nsub-01\tpatient\n"
                                           "sub-03\tcontrol\n")
    bold = bids / "sub-03/func/sub-03_task-rest_bold.nii.gz"
    img = nib.load(bold)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0, 5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine, img.header), bold)
    with pytest.raises(AnalysisError, match=r"1 of 2 runs failed:\n  sub-03_task-rest: "
                                            r"ValueError: .*volume 5") as info:
        analyze(bids, tmp_path / "deriv", scheduler="synchronous", progress=False)
    assert sorted(info.value.results) == ["sub-01_task-rest"]
    assert info.value.results["sub-01_task-rest"]["done"].is_file()


def test_bad_dataset_and_workers(cohort, tmp_path):
    from rtfb.offline.bids import BIDSError

    with pytest.raises(BIDSError, match="no functional run"):
        analyze(tmp_path, tmp_path / "out", scheduler="synchronous")
    with pytest.raises(ValueError, match="n_workers"):
        analyze(cohort, tmp_path / "out", n_workers=0)


def test_cli_parser(cohort, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="rtfb")
    add_analyze_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", str(cohort), "--out", str(tmp_path / "d"),
                              "--scheduler", "tcp://127.0.0.1:1", "--n-workers", "3",
                              "--overwrite", "--quiet"])
    assert (args.scheduler, args.n_workers, args.overwrite, args.participants) == \
        ("tcp://127.0.0.1:1", 3, True, None)
    args = parser.parse_args(["analyze", str(tmp_path), "--out", str(tmp_path / "d")])
    assert args.func(args) == 2
    assert "no functional run" in capsys.readouterr().err


def test_cli_seed_rois(cohort, tmp_path, capsys):
    from rtfb.cli import main

    img = nib.load(cohort / "derivatives/truth/roi-left_insula.nii.gz")
    mask = tmp_path / "myseed.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype("uint8"), img.affine), mask)
    bold = cohort / "sub-01/func/sub-01_task-rest_bold.nii.gz"
    centre = (nib.load(bold).affine @ [8, 8, 5, 1])[:3]
    out = tmp_path / "deriv"
    code = main(["analyze", str(cohort), "--out", str(out), "--scheduler", "synchronous",
                 "--quiet", "--no-group", "--seed-roi", f"my_seed={mask}",
                 "--seed-roi", "mid=" + ",".join(f"{v:g}" for v in centre)])
    assert code == 0, capsys.readouterr().out
    func = out / "rtfb/sub-01/func"
    assert sorted(p.name for p in func.glob("*_desc-FC*_map.nii.gz")) == [
        "sub-01_task-rest_desc-FCMid_map.nii.gz", "sub-01_task-rest_desc-FCMySeed_map.nii.gz"]
    config = AnalysisConfig(seeds={"my_seed": str(mask), "mid": tuple(centre)})
    direct = process_subject(bold, 2.0, tmp_path / "direct", config=config)
    for key in ("FCMySeed", "FCMid"):
        np.testing.assert_array_equal(
            np.asarray(nib.load(func / f"sub-01_task-rest_desc-{key}_map.nii.gz").dataobj),
            np.asarray(nib.load(direct[key]).dataobj), err_msg=key)


@pytest.mark.parametrize("value, message", [
    ("noequals", "expected NAME=MASK or NAME=X,Y,Z"),
    ("pcc=1,2", "pcc: expected a mask file or 3 comma-separated"),
    ("pcc=a,b,c", "pcc: expected a mask file or 3 comma-separated"),
])
def test_cli_seed_roi_bad_format(cohort, tmp_path, capsys, value, message):
    from rtfb.cli import main

    with pytest.raises(SystemExit) as info:
        main(["analyze", str(cohort), "--out", str(tmp_path), "--seed-roi", value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_seed_roi_missing_file(cohort, tmp_path, capsys):
    from rtfb.cli import main

    assert main(["analyze", str(cohort), "--out", str(tmp_path), "--seed-roi",
                 "pcc=nowhere.nii.gz"]) == 2
    assert "--seed-roi pcc: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--permutations", "0", "--permutations must be >= 1, got 0"),
    ("--classify-permutations", "-1", "--classify-permutations must be >= 0, got -1"),
    ("--density", "1.5", "--density must be in (0, 1], got 1.5"),
])
def test_cli_group_options_checked_before_any_work(cohort, tmp_path, capsys, flag, value,
                                                   message):
    from rtfb.cli import main

    assert main(["analyze", str(cohort), "--out", str(tmp_path / "d"), flag, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
