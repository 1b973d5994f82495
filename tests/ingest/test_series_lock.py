"""Series lock and plausible indices (issue 10): leftovers, other studies, stray far-ahead
files and TCP frames never decide what a session follows nor turn into missing volumes."""

import queue
import shutil
import time

import nibabel as nib
import numpy as np
import pydicom
import pytest

from rtfb.ingest.ordering import IMPLAUSIBLE, Missing, VolumeOrderer
from rtfb.ingest.series_lock import GeometryLock, IdentityLock, SeriesIdentity
from rtfb.ingest.tcp import TCPReceiver, TCPSender, send_volume
from rtfb.ingest.volume import Volume
from rtfb.ingest.watcher import FolderWatcher

from ._data import siemens_files
from ._nifti_io import AFFINE, nii_bytes, nii_probe, nii_read, slice_read, write_nifti
from .test_watcher import assert_volume, fname, vol_data, wait_until

pytestmark = pytest.mark.timeout(120)


def _watcher(directory, **kwargs):
    kwargs.setdefault("probe", nii_probe)
    kwargs.setdefault("reader", nii_read)
    kwargs.setdefault("slice_reader", slice_read)
    kwargs.setdefault("gap_timeout", 1.0)
    return FolderWatcher(directory, **kwargs)


def _drain(w, timeout=0.5):
    items = []
    while True:
        try:
            items.append(w.get(timeout=timeout))
        except queue.Empty:
            return items


# -- the orderer's bound ----------------------------------------------------------------------
def test_orderer_bound_follows_elapsed_trs():
    o = VolumeOrderer(1.0, tr=2.0, ahead_margin=3, start=0.0)
    assert o.max_plausible(0.0) == 2  # first_index 0: indices 0..2 + margin
    assert o.add(Volume(np.zeros((2, 2, 2)), np.eye(4), 149), 1.0) == IMPLAUSIBLE
    assert o.add(Volume(np.zeros((2, 2, 2)), np.eye(4), 0), 1.0) == "accepted"
    # 10 s later five TRs have passed: index 0 + 3 + 5 = 8 is the highest plausible
    assert o.max_plausible(11.0) == 8
    assert o.add(Volume(np.zeros((2, 2, 2)), np.eye(4), 9), 11.0) == IMPLAUSIBLE
    assert o.add(Volume(np.zeros((2, 2, 2)), np.eye(4), 8), 11.0) == "accepted"
    # refused indices never became missing volumes
    assert all(not isinstance(x, Missing) for x in o.poll(11.5))
    assert o.next_index == 1 and o.n_pending == 1


# -- files ------------------------------------------------------------------------------------
def test_stray_far_ahead_file_is_ignored_not_missing(tmp_path):
    w = _watcher(tmp_path, tr=0.05).start()
    try:
        for i in range(3):
            write_nifti(tmp_path / fname(i), vol_data(i))
        got = [w.get(timeout=5) for _ in range(3)]
        write_nifti(tmp_path / "run_00150.nii", vol_data(149))  # index 149 while at 3
        wait_until(lambda: w.stats.out_of_range == 1)
        for i in range(3, 6):
            write_nifti(tmp_path / fname(i), vol_data(i))
        got += _drain(w, timeout=2.0)
    finally:
        w.stop()
    assert [g.index for g in got] == list(range(6))
    assert not any(isinstance(g, Missing) for g in got)
    notes = w.drain_notices()
    stray = [n for n in notes if n["kind"] == "implausible"]
    assert len(stray) == 1 and stray[0]["file"] == "run_00150.nii" and stray[0]["index"] == 149


def _content_index(path):
    return int(np.asanyarray(nib.load(path).dataobj)[0, 0, 0] // 1000)


def _content_probe(path):  # the index is in the file (as in a DICOM header), not its name
    info = nii_probe(path)
    return type(info)(info.path, "volume", info.series, _content_index(path))


def _content_read(path):
    v = nii_read(path)
    return Volume(v.data, v.affine, _content_index(path), source=v.source, series=v.series)


def _write_atomic(path, data):
    tmp = path.with_name(path.name + ".part")  # skipped by the watcher
    tmp.write_bytes(nii_bytes(data))
    tmp.replace(path)


def test_same_name_later_holding_a_plausible_volume_is_used(tmp_path):
    w = _watcher(tmp_path, tr=0.05, probe=_content_probe, reader=_content_read).start()
    try:
        _write_atomic(tmp_path / fname(0), vol_data(0))
        assert_volume(w.get(timeout=5), 0)
        # the file of volume 1 first holds a corrupt, far-ahead index ...
        _write_atomic(tmp_path / fname(1), vol_data(200))
        wait_until(lambda: w.stats.out_of_range == 1)
        # ... then the same name is re-written with the right volume: that one is used
        time.sleep(0.05)
        _write_atomic(tmp_path / fname(1), vol_data(1))
        item = w.get(timeout=5)
    finally:
        w.stop()
    assert_volume(item, 1)


def test_leftovers_listed_once_and_never_used(tmp_path):
    for i in range(3):  # an earlier series' files, already there
        write_nifti(tmp_path / fname(i, prefix="old"), vol_data(i) + 5)
    w = _watcher(tmp_path, accept_existing=False, tr=0.05).start()
    try:
        time.sleep(0.2)
        for i in range(3):
            write_nifti(tmp_path / fname(i), vol_data(i))
        got = _drain(w, timeout=1.0)
        # a leftover re-written later is still a leftover
        write_nifti(tmp_path / fname(0, prefix="old"), vol_data(0) + 9)
        got += _drain(w, timeout=0.5)
    finally:
        w.stop()
    assert [g.index for g in got] == [0, 1, 2]
    for g, i in zip(got, range(3), strict=True):
        assert_volume(g, i)
        assert g.source.startswith("run_")
    notes = [n for n in w.drain_notices() if n["kind"] == "ignored_at_start"]
    assert len(notes) == 1
    assert notes[0]["files"] == [fname(i, prefix="old") for i in range(3)]


def test_accept_existing_and_named_series_use_the_files_present(tmp_path):
    for i in range(2):
        write_nifti(tmp_path / fname(i), vol_data(i))
    w = _watcher(tmp_path, accept_existing=True).start()
    try:
        got = _drain(w)
    finally:
        w.stop()
    assert [g.index for g in got] == [0, 1]


def _restudy(src, dst, study_uid):
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study_uid
    ds.save_as(dst)


def test_other_study_same_series_number_rejected_naming_the_field(tmp_path):
    files = siemens_files()
    export = tmp_path / "export"
    export.mkdir()
    other = pydicom.uid.generate_uid()
    # another study's run with the same SeriesNumber, left in the folder
    for f in files:
        _restudy(f, export / f"old_{f.name}", other)
    w = FolderWatcher(export, accept_existing=False, gap_timeout=1.0, tr=2.0).start()
    try:
        time.sleep(0.3)
        shutil.copyfile(files[0], export / files[0].name)
        first = w.get(timeout=10)
        # the other study again, arriving live this time, for volume 1
        _restudy(files[1], export / f"new_{files[1].name}", other)
        wait_until(lambda: w.stats.other_series == 1, timeout=10)
        for f in files[1:]:
            shutil.copyfile(f, export / f.name)
        rest = _drain(w, timeout=2.0)
    finally:
        w.stop()
    got = [first] + rest
    assert [g.index for g in got] == [0, 1, 2]
    assert [g.source for g in got] == [f.name for f in files]
    notes = w.drain_notices()
    assert [n["files"] for n in notes if n["kind"] == "ignored_at_start"] == [
        sorted(f"old_{f.name}" for f in files)]
    rejected = [n for n in notes if n["kind"] == "rejected"]
    assert len(rejected) == 1
    assert rejected[0]["file"] == f"new_{files[1].name}"
    assert rejected[0]["field"] == "StudyInstanceUID"
    assert "StudyInstanceUID" in rejected[0]["message"] and other not in rejected[0]["message"]


def test_series_named_by_number_or_uid():
    ident = SeriesIdentity(study_uid="1.2", series_uid="1.2.3", series_number="13")
    assert ident.matches("13") and ident.matches("013") and ident.matches("1.2.3")
    assert not ident.matches("14") and not ident.matches("1.2.4")
    lock = IdentityLock("14")
    assert "--series 14" in lock.check(ident)
    lock = IdentityLock()
    assert lock.check(ident) is None and lock.accept(ident)
    assert "SeriesInstanceUID" in lock.check(SeriesIdentity("1.2", "1.2.9", "13"))
    assert lock.field_ == "SeriesInstanceUID"


def test_geometry_lock_names_the_field():
    lock = GeometryLock(tr=2.0)
    ref = Volume(np.zeros((8, 8, 8)), np.diag([3.0, 3.0, 3.5, 1.0]), 0, tr=2.0)
    assert lock.check(ref) is None
    lock.fix(ref)
    assert lock.check(Volume(np.zeros((8, 8, 8)), np.diag([3.0, 3.0, 3.5, 1.0]), 1)) is None
    assert lock.check(Volume(np.zeros((8, 8, 9)), ref.affine, 1)).startswith("shape")
    assert lock.check(Volume(np.zeros((8, 8, 8)), np.diag([3.0, 3.0, 4.0, 1.0]),
                             1)).startswith("voxel size")
    assert lock.check(Volume(np.zeros((8, 8, 8)), np.diag([-3.0, 3.0, 3.5, 1.0]),
                             1)).startswith("orientation")
    assert lock.check(Volume(np.zeros((8, 8, 8)), ref.affine, 1, tr=2.5)).startswith("TR")


# -- TCP --------------------------------------------------------------------------------------
def test_stray_far_ahead_tcp_frame_is_ignored_not_missing():
    rx = TCPReceiver(port=0, gap_timeout=0.5, tr=0.05).start()
    try:
        with TCPSender(rx.address[:2]) as sock:  # framing v2 (no key: loopback receiver)
            for i in (0, 1):
                send_volume(sock, vol_data(i), AFFINE, i, tr=0.05)
            send_volume(sock, vol_data(2), AFFINE, 149, tr=0.05)  # any local process can
            for i in (2, 3):
                send_volume(sock, vol_data(i), AFFINE, i, tr=0.05)
            got = [rx.get(timeout=5) for _ in range(4)]
            more = _drain(rx, timeout=1.0)
    finally:
        rx.stop()
    assert [g.index for g in got] == [0, 1, 2, 3] and more == []
    assert rx.stats.out_of_range == 1 and rx.stats.missing == 0
    notes = [n for n in rx.drain_notices() if n["kind"] == "implausible"]
    assert len(notes) == 1 and notes[0]["index"] == 149


# -- queue full and stalls are reported -------------------------------------------------------
def test_queue_full_and_stall_notices(tmp_path):
    def slow_read(path):
        time.sleep(0.3)
        return nii_read(path)

    w = _watcher(tmp_path, queue_size=1, reader=slow_read, stall_threshold=0.2).start()
    try:
        for i in range(3):
            write_nifti(tmp_path / fname(i), vol_data(i))
        wait_until(lambda: w.stats.blocked_episodes >= 1, timeout=20)
        got = _drain(w, timeout=2.0)
    finally:
        w.stop()
    assert [g.index for g in got] == [0, 1, 2]
    kinds = [n["kind"] for n in w.drain_notices()]
    assert "queue_full" in kinds and "stall" in kinds
