"""Export layouts: the watcher follows the series folder created after the start."""

from __future__ import annotations

import os
import queue
import shutil
import time

import pytest

from rtfb.ingest.layouts import SeriesFolderWatcher, series_folders
from rtfb.ingest.volume import Volume

from ._data import ge_files, siemens_files


def _copy(files, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, folder / f".{path.name}")
        os.replace(folder / f".{path.name}", folder / path.name)


def _volumes(watcher, n, timeout=30.0):
    items = [watcher.get(timeout=timeout) for _ in range(n)]
    assert all(isinstance(i, Volume) for i in items), items
    return items


def test_series_folders_finds_leaves(tmp_path):
    for rel in ("p001/e101/s1", "p001/e101/s2", "0001", "series_x", ".hidden/s9"):
        (tmp_path / rel).mkdir(parents=True)
    found = {os.path.relpath(p, tmp_path) for p in series_folders(tmp_path)}
    assert found == {"p001/e101/s1", "p001/e101/s2", "0001", "series_x"}


@pytest.mark.parametrize("layout", ["p002/e2001/s4", "0004", "siemens_bold_run1"])
def test_follows_new_series_folder_not_old_ones(tmp_path, layout):
    """GE p/e/s, Philips XTC/DRIN NNNN and a per-series Siemens folder."""
    old = tmp_path / "p001/e1000/s3"
    _copy(siemens_files()[:2], old)  # a session of earlier: never read
    with SeriesFolderWatcher(tmp_path, scan_interval=0.05, gap_timeout=30.0) as watcher:
        time.sleep(0.2)
        with pytest.raises(queue.Empty):
            watcher.get(timeout=0.3)
        _copy(siemens_files(), tmp_path / layout)
        items = _volumes(watcher, 3)
        assert watcher.directory == str(tmp_path / layout)
    assert [i.index for i in items] == [0, 1, 2]


def test_localizer_first_then_run(tmp_path):
    """A folder that delivers nothing (a localizer of other files) is left for a newer one;
    after the first volume the folder is kept."""
    with SeriesFolderWatcher(tmp_path, scan_interval=0.05, gap_timeout=30.0) as watcher:
        loc = tmp_path / "p001/e1/s1"
        loc.mkdir(parents=True)
        (loc / "notes.txt").write_text("not an image")
        with pytest.raises(queue.Empty):
            watcher.get(timeout=0.4)
        time.sleep(0.05)
        run = tmp_path / "p001/e1/s2"
        _copy(ge_files()[:36], run)
        items = _volumes(watcher, 2)
        assert [i.index for i in items] == [0, 1]
        assert watcher.directory == str(run)
        later = tmp_path / "p001/e1/s3"
        _copy(siemens_files()[:1], later)
        with pytest.raises(queue.Empty):
            watcher.get(timeout=0.5)
        assert watcher.directory == str(run)


def test_flat_export_root_still_works(tmp_path):
    with SeriesFolderWatcher(tmp_path, scan_interval=0.05, gap_timeout=30.0) as watcher:
        _copy(siemens_files(), tmp_path)
        assert [i.index for i in _volumes(watcher, 3)] == [0, 1, 2]
        assert watcher.directory == str(tmp_path)
