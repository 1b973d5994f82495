"""FolderWatcher against files written like a scanner would (threads, partial writes)."""

import logging
import os
import queue
import threading
import time

import numpy as np
import pytest

from rtfb.exceptions import IncompleteFileError, IngestError
from rtfb.ingest.ordering import Late, Missing
from rtfb.ingest.volume import Volume
from rtfb.ingest.watcher import FolderWatcher

from ._nifti_io import (
    AFFINE,
    SLICE_BYTES,
    nii_bytes,
    nii_probe,
    nii_read,
    slice_probe,
    slice_read,
    write_nifti,
    write_slowly,
)

SHAPE = (6, 5, 4)


def vol_data(i):
    return (np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + 1000 * i)


def fname(i, prefix="run", gz=False):
    return f"{prefix}_{i + 1:05d}.nii" + (".gz" if gz else "")


def wait_until(cond, timeout=5.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not met within {timeout} s")


def get_n(w, n, timeout=5.0):
    return [w.get(timeout=timeout) for _ in range(n)]


def assert_nothing_more(w, wait=0.15):
    with pytest.raises(queue.Empty):
        w.get(timeout=wait)


def assert_volume(item, i):
    assert isinstance(item, Volume), item
    assert item.index == i
    np.testing.assert_array_equal(item.data, vol_data(i))
    np.testing.assert_allclose(item.affine, AFFINE)


@pytest.fixture
def caplog_ingest(caplog):
    caplog.set_level(logging.INFO, logger="rtfb.ingest")
    return caplog


def messages(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records
            if r.name == "rtfb.ingest" and r.levelno >= level]


@pytest.fixture
def make_watcher(tmp_path):
    watchers = []

    def make(directory=tmp_path, **kwargs):
        kwargs.setdefault("probe", nii_probe)
        kwargs.setdefault("reader", nii_read)
        kwargs.setdefault("slice_reader", slice_read)
        kwargs.setdefault("gap_timeout", 5.0)
        w = FolderWatcher(directory, **kwargs)
        watchers.append(w)
        return w.start()

    yield make
    for w in watchers:
        w.stop()


def scanner(directory, order, *, pause=0.02, interval=0.005, **kwargs):
    """Thread writing volumes in ``order`` with partial writes."""
    def run():
        for i in order:
            write_nifti(os.path.join(directory, fname(i, **kwargs)), vol_data(i), pause=pause)
            time.sleep(interval)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_partial_out_of_order_writes_delivered_once_in_order(tmp_path, make_watcher):
    w = make_watcher()
    writer = scanner(tmp_path, [0, 2, 1, 3, 5, 4, 6])
    items = get_n(w, 7)
    writer.join()
    for i, item in enumerate(items):
        assert_volume(item, i)
        assert item.source == fname(i) and item.series == "run"
    assert_nothing_more(w)
    s = w.stats
    assert (s.delivered, s.duplicates, s.missing, s.late, s.unreadable) == (7, 0, 0, 0, 0)
    assert len(s.latencies) == 7 and all(x >= 0 for x in s.latencies)
    assert [t.index for t in s.timings] == list(range(7))
    for t in s.timings:
        assert t.seen <= t.complete <= t.queued and t.source == fname(t.index)
        assert t.mtime is not None and not t.late
        assert w.timing(t.index) == t
    assert w.timing(99) is None
    assert w.series == "run" and w.running


def test_existing_files_delivered_hidden_and_temp_never_probed(tmp_path, make_watcher):
    for i in range(3):
        write_nifti(tmp_path / fname(i), vol_data(i), pause=0)
    skipped = [".run_00004.nii", "~run_00005.nii", "run_00006.nii~", "run_00007.nii.part",
               "run_00008.nii.TMP"]
    for name in skipped:
        (tmp_path / name).write_bytes(nii_bytes(vol_data(9)))
    (tmp_path / "subdir_00009.nii").mkdir()
    probed = []

    def probe(path):
        probed.append(os.path.basename(path))
        return nii_probe(path)

    w = make_watcher(probe=probe)
    for i, item in enumerate(get_n(w, 3)):
        assert_volume(item, i)
    assert_nothing_more(w)
    assert not set(probed) & set(skipped + ["subdir_00009.nii"])


def test_pattern_restricts_names(tmp_path, make_watcher):
    write_nifti(tmp_path / fname(0), vol_data(0), pause=0)
    (tmp_path / "notes.txt").write_text("not a volume")
    w = make_watcher(pattern="*.nii")
    assert_volume(w.get(timeout=5), 0)
    time.sleep(0.05)
    assert w.stats.unreadable == 0


def test_duplicates_copy_and_rewrite_ignored_with_warning(tmp_path, make_watcher,
                                                          caplog_ingest):
    w = make_watcher(recheck_interval=0.1)
    for i in range(2):
        write_nifti(tmp_path / fname(i), vol_data(i))
    for i, item in enumerate(get_n(w, 2)):
        assert_volume(item, i)
    write_nifti(tmp_path / fname(1, gz=True), vol_data(99), gz=True)  # a copy of volume 1
    write_nifti(tmp_path / fname(0), vol_data(98))  # volume 0 re-written in place
    write_nifti(tmp_path / fname(2), vol_data(2))
    assert_volume(w.get(timeout=5), 2)
    wait_until(lambda: w.stats.duplicates == 2, what="2 duplicates")
    assert_nothing_more(w)
    warnings = messages(caplog_ingest)
    assert any(fname(1, gz=True) in m and "duplicate" in m for m in warnings)
    assert any(fname(0) in m and "duplicate" in m for m in warnings)


def test_gap_reported_missing_then_late_volume_flagged(tmp_path, make_watcher, caplog_ingest):
    w = make_watcher(gap_timeout=0.2)
    writer = scanner(tmp_path, [0, 1, 3])
    items = get_n(w, 4)
    writer.join()
    assert_volume(items[0], 0)
    assert_volume(items[1], 1)
    assert isinstance(items[2], Missing) and items[2].index == 2
    assert "gap_timeout" in items[2].reason
    assert_volume(items[3], 3)
    write_nifti(tmp_path / fname(2), vol_data(2))
    late = w.get(timeout=5)
    assert isinstance(late, Late)
    assert_volume(late.volume, 2)
    s = w.stats
    assert (s.delivered, s.missing, s.late) == (3, 1, 1)
    assert s.timings[-1].late and s.timings[-1].index == 2
    assert any("volume 2 missing" in m for m in messages(caplog_ingest))
    assert any("arrived late" in m and fname(2) in m for m in messages(caplog_ingest))


def test_corrupt_file_and_reader_crash_logged_thread_survives(tmp_path, make_watcher,
                                                              caplog_ingest):
    def reader(path):
        if path.endswith(fname(4)):
            raise ZeroDivisionError("bug in a reader")
        return nii_read(path)

    w = make_watcher(gap_timeout=0.2, reader=reader)
    (tmp_path / fname(2)).write_bytes(os.urandom(400))  # garbage where a header should be
    writer = scanner(tmp_path, [0, 1, 3, 4, 5])
    items = get_n(w, 6)
    writer.join()
    assert [getattr(x, "index", None) for x in items] == [0, 1, 2, 3, 4, 5]
    assert isinstance(items[2], Missing) and isinstance(items[4], Missing)
    for i in (0, 1, 3, 5):
        assert_volume(items[i], i)
    assert w.running
    assert w.stats.unreadable == 2
    warnings = messages(caplog_ingest)
    assert any(fname(2) in m and "unreadable" in m for m in warnings)
    assert any(fname(4) in m and "reader error" in m and "ZeroDivisionError" in m
               for m in warnings)
    # later files still work
    write_nifti(tmp_path / fname(6), vol_data(6))
    assert_volume(w.get(timeout=5), 6)


def test_probe_errors_of_any_kind_do_not_kill_the_thread(tmp_path, make_watcher):
    def probe(path):
        if "bad" in path:
            raise MemoryError("pretend")  # not an IngestError
        return nii_probe(path)

    w = make_watcher(probe=probe)
    (tmp_path / "bad_00001.nii").write_bytes(b"x")
    write_nifti(tmp_path / fname(0), vol_data(0))
    assert_volume(w.get(timeout=5), 0)
    assert w.running and w.stats.unreadable == 1


def test_other_series_ignored(tmp_path, make_watcher, caplog_ingest):
    w = make_watcher()
    write_nifti(tmp_path / fname(0), vol_data(0))
    assert_volume(w.get(timeout=5), 0)
    write_nifti(tmp_path / fname(1, prefix="other"), vol_data(1))
    write_nifti(tmp_path / fname(1), vol_data(1))
    assert_volume(w.get(timeout=5), 1)
    wait_until(lambda: w.stats.other_series == 1)
    assert any(fname(1, prefix="other") in m and "another series" in m
               for m in messages(caplog_ingest))


def test_given_series_ignores_first_seen_other(tmp_path, make_watcher):
    write_nifti(tmp_path / fname(0, prefix="loc"), vol_data(5), pause=0)
    write_nifti(tmp_path / fname(0, prefix="bold"), vol_data(0), pause=0)
    w = make_watcher(series="bold")
    assert_volume(w.get(timeout=5), 0)
    assert w.series == "bold"
    wait_until(lambda: w.stats.other_series == 1)


def test_truncated_file_reported_then_completes_late(tmp_path, make_watcher, caplog_ingest):
    w = make_watcher(incomplete_timeout=0.2, gap_timeout=0.8)
    raw = nii_bytes(vol_data(1))
    (tmp_path / fname(1)).write_bytes(raw[:400])  # pixel data incomplete, never finished...
    write_nifti(tmp_path / fname(0), vol_data(0))
    write_nifti(tmp_path / fname(2), vol_data(2))
    assert_volume(w.get(timeout=5), 0)
    wait_until(lambda: w.stats.truncated == 1, what="truncated reported")
    assert any(fname(1) in m and "truncated" in m for m in messages(caplog_ingest))
    missing = w.get(timeout=5)
    assert isinstance(missing, Missing) and missing.index == 1
    assert "truncated" in missing.reason
    assert_volume(w.get(timeout=5), 2)
    write_slowly(tmp_path / fname(1), raw)  # ... until now
    late = w.get(timeout=5)
    assert isinstance(late, Late)
    assert_volume(late.volume, 1)
    assert w.stats.truncated == 1


def test_back_pressure_blocks_and_never_drops(tmp_path, make_watcher, caplog_ingest):
    w = make_watcher(queue_size=2)
    writer = scanner(tmp_path, range(8), pause=0)
    wait_until(lambda: w.stats.blocked_episodes >= 1, what="queue full")
    time.sleep(0.05)
    for i, item in enumerate(get_n(w, 8)):
        assert_volume(item, i)
    writer.join()
    s = w.stats
    assert s.queue_high_water == 2 and s.blocked_seconds > 0 and s.delivered == 8
    assert sum(t.wait for t in s.timings) == pytest.approx(s.blocked_seconds)
    full = [m for m in messages(caplog_ingest) if "queue full" in m]
    assert 1 <= len(full) <= s.blocked_episodes


def test_slice_groups_assembled(tmp_path, make_watcher, caplog_ingest):
    rng = np.random.default_rng(0)
    slices = {(v, p): rng.normal(size=(4, 5)).astype("<f4") for v in range(2) for p in range(3)}

    def run():
        order = [(1, 2), (0, 0), (1, 0), (0, 2), (1, 1)]
        for v, p in order:
            (tmp_path / f"ser_{v}_{p}.slc").write_bytes(slices[v, p].tobytes())
            time.sleep(0.01)
        raw = slices[0, 1].tobytes()
        write_slowly(tmp_path / "ser_0_1.slc", raw, pause=0.05)  # last slice, partial write
        (tmp_path / "ser_0_1_copy.slc").write_bytes(raw)  # duplicate slice

    w = make_watcher(probe=slice_probe)
    t = threading.Thread(target=run)
    t.start()
    items = get_n(w, 2)
    t.join()
    for v, item in enumerate(items):
        assert isinstance(item, Volume) and item.index == v and item.shape == (4, 5, 3)
        expected = np.stack([slices[v, p] for p in range(3)], axis=-1)
        np.testing.assert_array_equal(item.data, expected)
    wait_until(lambda: w.stats.duplicates == 1)
    assert any("ser_0_1_copy.slc" in m and "duplicate" in m for m in messages(caplog_ingest))
    assert SLICE_BYTES == slices[0, 0].nbytes


def test_last_slice_stacks_its_volume_before_the_next_file_is_probed(tmp_path, make_watcher):
    """A volume is stacked as soon as its last slice is probed, not after every other new
    file of the same listing (here the first slice of the next volume)."""
    for v, p in [(0, 0), (0, 1), (0, 2), (1, 0)]:
        (tmp_path / f"ser_{v}_{p}.slc").write_bytes(np.full((4, 5), v, "<f4").tobytes())
    calls = []

    def probe(path):
        calls.append(("probe", os.path.basename(path)))
        return slice_probe(path)

    def read(paths):
        calls.append(("stack", tuple(os.path.basename(p) for p in paths)))
        return slice_read(paths)

    w = make_watcher(probe=probe, slice_reader=read)  # one listing finds all four files
    item = w.get(timeout=5)
    assert isinstance(item, Volume) and item.index == 0
    wait_until(lambda: ("probe", "ser_1_0.slc") in calls)
    stacked = ("stack", ("ser_0_0.slc", "ser_0_1.slc", "ser_0_2.slc"))
    assert calls[:4] == [("probe", f"ser_0_{p}.slc") for p in range(3)] + [stacked]
    assert calls[4] == ("probe", "ser_1_0.slc")


def test_incomplete_slice_group_reported(tmp_path, make_watcher, caplog_ingest):
    (tmp_path / "ser_0_0.slc").write_bytes(np.zeros((4, 5), "<f4").tobytes())
    w = make_watcher(probe=slice_probe, incomplete_timeout=0.1)
    wait_until(lambda: w.stats.truncated == 1)
    assert any("only 1 of 3 slices" in m for m in messages(caplog_ingest))


def test_pair_of_files_read_once_via_the_main_file(tmp_path, make_watcher, caplog_ingest):
    """PAR/REC-like pairs: probe gives the .par as path for both files of the pair."""
    from ._nifti_io import FileInfo

    def probe(path):
        base, _ = os.path.splitext(path)
        if not os.path.exists(base + ".par"):
            raise IncompleteFileError("pair missing its .par")
        return FileInfo(base + ".par", "volume", "x", int(base[-5:]) - 1)

    def reader(path):
        rec = os.path.splitext(path)[0] + ".rec"
        if not os.path.exists(rec) or os.path.getsize(rec) < 4 * np.prod(SHAPE):
            raise IncompleteFileError("rec incomplete")
        values = np.frombuffer(open(rec, "rb").read(), "<f4").reshape(SHAPE)
        return Volume(values, AFFINE, int(path[-9:-4]) - 1, source=os.path.basename(path))

    w = make_watcher(probe=probe, reader=reader)
    for i in range(3):
        (tmp_path / f"x_{i + 1:05d}.par").write_text("# header")
        write_slowly(tmp_path / f"x_{i + 1:05d}.rec", vol_data(i).astype("<f4").tobytes())
    for i, item in enumerate(get_n(w, 3)):
        assert_volume(item, i)
    time.sleep(0.1)
    assert_nothing_more(w)
    s = w.stats
    assert (s.delivered, s.duplicates, s.unreadable, s.truncated) == (3, 0, 0, 0)
    assert not messages(caplog_ingest)


def test_empty_file_is_incomplete_not_unreadable(tmp_path, make_watcher, caplog_ingest):
    def probe(path):  # like rtfb.ingest.read: an empty file is an IngestError
        if os.path.getsize(path) == 0:
            raise IngestError("empty file")
        return nii_probe(path)

    w = make_watcher(probe=probe, incomplete_timeout=0.2)
    (tmp_path / fname(0)).touch()
    (tmp_path / fname(1)).touch()  # stays empty
    time.sleep(0.05)
    write_nifti(tmp_path / fname(0), vol_data(0))
    assert_volume(w.get(timeout=5), 0)
    wait_until(lambda: w.stats.truncated == 1)
    assert w.stats.unreadable == 0
    assert any(fname(1) in m and "truncated" in m and "empty" in m
               for m in messages(caplog_ingest))


def test_multi_volume_file_refused(tmp_path, make_watcher, caplog_ingest):
    from ._nifti_io import FileInfo

    w = make_watcher(probe=lambda p: FileInfo(p, "volume", "x", 0, n_volumes=100))
    (tmp_path / "run4d.nii").write_bytes(b"x")
    wait_until(lambda: w.stats.unreadable == 1)
    assert any("run4d.nii" in m and "100 volumes" in m for m in messages(caplog_ingest))


def test_missing_directory_then_created(tmp_path, make_watcher, caplog_ingest):
    later = tmp_path / "later"
    w = make_watcher(later)
    wait_until(lambda: any("cannot list" in m for m in messages(caplog_ingest)))
    later.mkdir()
    write_nifti(later / fname(0), vol_data(0))
    assert_volume(w.get(timeout=5), 0)


def test_file_renamed_into_the_folder_is_listed_before_the_next_poll(tmp_path, make_watcher):
    """The folder's mtime changes when a file is renamed into it: listed then, not at the
    next poll (here 60 s away; the bound below is generous and only fails without it)."""
    (tmp_path / "junk_00009.nii").write_bytes(b"x" * 400)  # unreadable: marks the 1st listing
    w = make_watcher(poll_interval=60.0)
    wait_until(lambda: w.stats.unreadable == 1)
    (tmp_path / ".incoming").write_bytes(nii_bytes(vol_data(0)))
    os.replace(tmp_path / ".incoming", tmp_path / fname(0))
    assert_volume(w.get(timeout=20), 0)


def test_lifecycle(tmp_path):
    w = FolderWatcher(tmp_path, probe=nii_probe, reader=nii_read, slice_reader=slice_read)
    assert not w.running and "stopped" in repr(w)
    with w:
        assert w.running
        with pytest.raises(RuntimeError, match="restarted"):
            w.start()
        with pytest.raises(queue.Empty):
            w.get(timeout=0.05)
    assert not w.running
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        w.get()  # stopped and empty: no blocking forever
    assert time.monotonic() - t0 < 1


def test_volumes_waiting_behind_a_gap_released_at_stop(tmp_path):
    with FolderWatcher(tmp_path, probe=nii_probe, reader=nii_read, slice_reader=slice_read,
                       gap_timeout=60) as w:
        write_nifti(tmp_path / fname(1), vol_data(1))
        wait_until(lambda: w._handoff.orderer.n_pending == 1)
    items = get_n(w, 2, timeout=0)
    assert isinstance(items[0], Missing) and "stopped" in items[0].reason
    assert_volume(items[1], 1)


@pytest.mark.parametrize("kwargs, err", [({"poll_interval": 0}, ValueError),
                                         ({"change_interval": -1}, ValueError),
                                         ({"queue_size": 0}, ValueError),
                                         ({"series": 3}, TypeError),
                                         ({"pattern": 3}, TypeError)])
def test_bad_parameters(tmp_path, kwargs, err):
    with pytest.raises(err):
        FolderWatcher(tmp_path, probe=nii_probe, reader=nii_read, slice_reader=slice_read,
                      **kwargs)


def test_with_the_real_readers(tmp_path):
    read = pytest.importorskip("rtfb.ingest.read")
    import nibabel as nib

    def run():
        for i in (0, 2, 1):
            img = nib.Nifti1Image(vol_data(i), AFFINE)
            img.header.set_data_dtype(np.float32)
            tmp = tmp_path / f".{fname(i)}"
            nib.save(img, tmp)  # hidden while written, then renamed (atomic)
            os.replace(tmp, tmp_path / fname(i))

    with FolderWatcher(tmp_path) as w:
        assert w._probe is read.probe and w._reader is read.read_volume
        t = threading.Thread(target=run)
        t.start()
        items = get_n(w, 3)
        t.join()
    for i, item in enumerate(items):
        assert_volume(item, i)


def test_incomplete_error_is_ingest_error():
    assert issubclass(IncompleteFileError, IngestError)
