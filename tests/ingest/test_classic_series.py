"""Classic single-slice series without ImagesInAcquisition (Siemens XA30 interoperability,
Philips classic) and GE MRDC files: probe, stacking against dcm2niix, and the watcher."""

from __future__ import annotations

import queue
import shutil
from collections import defaultdict

import numpy as np
import pytest

from rtfb.ingest.read import probe, read_dicom_slices
from rtfb.ingest.slicecount import SliceCounts
from rtfb.ingest.volume import Volume
from rtfb.ingest.watcher import FolderWatcher

from ._dcm_qa import dicom_copies, reference
from .test_read_enhanced import _same_as_reference

CASES = [("siemens_xa30i_classic_bold", 33, 0, "8"),  # slices, header count, series key
         ("philips_classic_fcmri", 63, 63, "2101"),
         ("ge_mrdc_dwi", 2, 2, "1")]


def _volumes(files):
    groups = defaultdict(list)
    for path in files:
        info = probe(path)
        groups[info.index].append((path, info))
    return [groups[i] for i in sorted(groups)]


@pytest.mark.parametrize(("folder", "n_slices", "n_parts", "series"), CASES)
def test_probe_and_stack_match_dcm2niix(folder, n_slices, n_parts, series, tmp_path):
    ref_data, ref_affine, _ = reference(folder)
    volumes = _volumes(dicom_copies(folder, tmp_path))
    assert len(volumes) == ref_data.shape[3]
    for t, group in enumerate(volumes):
        assert len(group) == n_slices
        infos = [info for _, info in group]
        assert {(i.kind, i.n_parts, i.series, i.index) for i in infos} == \
            {("slice", n_parts, series, t)}
        assert len({i.part for i in infos}) == n_slices  # parts tell the slices apart
        volume = read_dicom_slices([path for path, _ in group][::-1])
        assert volume.index == t and volume.header["NumberOfSlices"] == n_slices
        _same_as_reference(volume, ref_data[..., t], ref_affine, rtol=1e-6)


def test_xa30i_one_run_despite_per_volume_series(tmp_path):
    """Series 8001, 8002, 8003 with three SeriesInstanceUIDs are one run (as dcm2niix)."""
    files = dicom_copies("siemens_xa30i_classic_bold", tmp_path)
    infos = [probe(p) for p in files]
    assert {i.series_number for i in infos} == {"8"}
    assert {i.series_uid for i in infos} == {None}
    assert len({i.study_uid for i in infos}) == 1 and None not in {i.study_uid for i in infos}


def test_classic_slice_timing_from_acquisition_times(tmp_path):
    _, ref_affine, sidecar = reference("siemens_xa30i_classic_bold")
    group = _volumes(dicom_copies("siemens_xa30i_classic_bold", tmp_path))[1]
    volume = read_dicom_slices([p for p, _ in group])
    timing = np.asarray(volume.header["SliceTiming"])
    same_order = float(volume.affine[:3, 2] @ ref_affine[:3, 2]) > 0
    np.testing.assert_allclose(timing if same_order else timing[::-1],
                               sidecar["SliceTiming"], atol=0.003)
    # Philips classic: every slice of a dynamic has one AcquisitionTime: unknown
    group = _volumes(dicom_copies("philips_classic_fcmri", tmp_path / "ph"))[0]
    assert "SliceTiming" not in read_dicom_slices([p for p, _ in group]).header


def _get_volumes(watcher, n, timeout=120.0):
    items = [watcher.get(timeout=timeout) for _ in range(n)]
    assert all(isinstance(item, Volume) for item in items), items
    return items


@pytest.mark.parametrize("folder", ["siemens_xa30i_classic_bold", "philips_classic_fcmri"])
def test_watcher_assembles_classic_series(folder, tmp_path):
    """Slices copied one by one, shuffled within each volume; slices per volume learned
    (XA30i) or from the Philips private count."""
    src = tmp_path / "src"
    volumes = _volumes(dicom_copies(folder, src))
    expected = [read_dicom_slices([p for p, _ in group]) for group in volumes]
    export = tmp_path / "export"
    export.mkdir()
    rng = np.random.default_rng(0)
    with FolderWatcher(export, poll_interval=0.01, gap_timeout=30.0) as watcher:
        for t, group in enumerate(volumes):
            for k in rng.permutation(len(group)):
                path = group[k][0]
                shutil.copyfile(path, export / f".{path.name}")
                (export / f".{path.name}").rename(export / path.name)
            if t == 0 and folder.startswith("siemens"):
                # count not learned yet: the first volume waits for the second to begin
                with pytest.raises(queue.Empty):
                    watcher.get(timeout=0.5)
        items = _get_volumes(watcher, len(volumes))
    for t, (item, want) in enumerate(zip(items, expected, strict=True)):
        assert item.index == t
        np.testing.assert_array_equal(item.data, want.data)
        np.testing.assert_allclose(item.affine, want.affine)


def test_watcher_hands_over_second_volume_without_waiting_for_a_third(tmp_path):
    src = tmp_path / "src"
    volumes = _volumes(dicom_copies("siemens_xa30i_classic_bold", src))
    export = tmp_path / "export"
    export.mkdir()
    with FolderWatcher(export, poll_interval=0.01, gap_timeout=30.0) as watcher:
        for group in volumes[:2]:
            for path, _ in group:
                shutil.copyfile(path, export / path.name)
        items = _get_volumes(watcher, 2)
        assert [i.index for i in items] == [0, 1]
        assert watcher.stats.unreadable == 0


def test_slice_counts_learn_on_repeating_positions():
    counts = SliceCounts()
    for k in range(3):
        assert counts.observe("s", 0, k + 1, 10.0 * k) == 0
    # a slice of volume 1 at a new position (not repeating): not yet
    assert counts.observe("s", 1, 1, 35.0) == 0
    assert counts.count("s") == 0
    assert counts.observe("s", 1, 2, 10.0) == 3
    assert counts.count("s") == 3 and counts.count("other") == 0
