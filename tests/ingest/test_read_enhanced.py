"""Enhanced (multi-frame) DICOM of Siemens XA10-XA61, Philips and Canon against dcm2niix."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from rtfb.exceptions import IngestError
from rtfb.ingest.read import iter_volumes, probe, read_volume
from rtfb.ingest.volume import ALLOWED_HEADER_FIELDS

from ._data import canonical
from ._dcm_qa import dicom_copies, reference

AFFINE_TOL_MM = 0.01
SIEMENS_XA = ["siemens_xa10_enh_rest", "siemens_xa30_enh_asl", "siemens_xa60_enh_bold",
              "siemens_xa61_enh_bold"]


def _same_as_reference(volume, ref_data, ref_affine, rtol=0.0):
    ours, our_affine = canonical(volume.data, volume.affine)
    theirs, their_affine = canonical(ref_data, ref_affine)
    assert ours.shape == theirs.shape
    # dcm2niix stores scaled values as int16 * scl_slope: float32 rounding at most
    np.testing.assert_allclose(ours, theirs.astype(np.float32), rtol=max(rtol, 2e-7), atol=0)
    np.testing.assert_allclose(our_affine, their_affine, atol=AFFINE_TOL_MM, rtol=0)


@pytest.mark.parametrize("folder", SIEMENS_XA)
def test_siemens_xa_one_volume_per_file(folder, tmp_path):
    ref_data, ref_affine, _ = reference(folder)
    files = dicom_copies(folder, tmp_path)
    assert len(files) == ref_data.shape[3]
    for t, path in enumerate(files):
        info = probe(path)
        assert (info.kind, info.index, info.n_volumes) == ("volume", t, 1)
        volume = read_volume(path)
        assert volume.index == t
        assert volume.header["format"] == "dicom-enhanced"
        assert set(volume.header) <= ALLOWED_HEADER_FIELDS
        assert volume.header["NumberOfSlices"] == ref_data.shape[2]
        _same_as_reference(volume, ref_data[..., t], ref_affine)
        assert [v.index for v in iter_volumes(path)] == [t]


@pytest.mark.parametrize(("folder", "tolerance"), [
    ("siemens_xa10_enh_rest", 0.003), ("siemens_xa30_enh_asl", 0.003),
    ("siemens_xa61_enh_bold", 0.003)])
def test_siemens_xa_slice_timing_from_frame_times(folder, tolerance, tmp_path):
    """Per-frame FrameAcquisitionDateTime, relative to the first slice, as dcm2niix."""
    _, ref_affine, sidecar = reference(folder)
    path = dicom_copies(folder, tmp_path)[-1]  # XA61: dcm2niix uses the 2nd volume's times
    volume = read_volume(path)
    assert volume.tr == pytest.approx(sidecar["RepetitionTime"])
    timing = np.asarray(volume.header["SliceTiming"])
    expected = np.asarray(sidecar["SliceTiming"])
    # in dcm2niix's slice order (its k axis may run against ours)
    same_order = float(volume.affine[:3, 2] @ ref_affine[:3, 2]) > 0
    ours = timing if same_order else timing[::-1]
    np.testing.assert_allclose(ours, expected, atol=tolerance)
    assert 0 <= timing.min() and timing.max() < volume.tr


def test_siemens_xa60_multiband_slice_timing(tmp_path):
    """SMS factor 5, 10 slices: two excitations, TR/2 apart, 5 slices each (frame times).

    dcm2niix's sidecar lists 10 different times here (from another source); the frame times
    agree with the multiband factor the sidecar gives.
    """
    _, _, sidecar = reference("siemens_xa60_enh_bold")
    assert sidecar["MultibandAccelerationFactor"] == 5
    for path in dicom_copies("siemens_xa60_enh_bold", tmp_path):
        timing = np.asarray(read_volume(path).header["SliceTiming"])
        values, counts = np.unique(np.round(timing, 3), return_counts=True)
        assert values.tolist() == pytest.approx([0.0, 1.23 / 2], abs=0.002)
        assert counts.tolist() == [5, 5]


@pytest.mark.parametrize(("folder", "n_volumes"), [("philips_enh_pcasl", 6),
                                                   ("canon_enh_dti", 13)])
def test_whole_series_in_one_file(folder, n_volumes, tmp_path):
    ref_data, ref_affine, _ = reference(folder)
    (path,) = dicom_copies(folder, tmp_path)
    info = probe(path)
    assert (info.kind, info.index, info.n_volumes) == ("volume", 0, n_volumes)
    volumes = list(iter_volumes(path))
    assert [v.index for v in volumes] == list(range(n_volumes))
    assert ref_data.shape[3] == n_volumes
    for t, volume in enumerate(volumes):
        _same_as_reference(volume, ref_data[..., t], ref_affine, rtol=1e-6)
    with pytest.raises(IngestError, match=f"{n_volumes} volumes.*iter_volumes"):
        read_volume(path)


def test_canon_all_equal_frame_times_are_unknown_slice_timing(tmp_path):
    (path,) = dicom_copies("canon_enh_dti", tmp_path)
    volume = next(iter_volumes(path))
    assert "SliceTiming" not in volume.header  # every frame stamped with the same second


def test_identity_fields(tmp_path):
    from rtfb.ingest._files import short_hash

    path = dicom_copies("siemens_xa30_enh_asl", tmp_path)[0]
    info = probe(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert info.series_number == str(ds.SeriesNumber) == "25"
    assert info.series_uid == str(ds.SeriesInstanceUID)  # compared in memory by the lock
    assert info.study_uid == str(ds.StudyInstanceUID)
    volume = read_volume(path)  # the Volume carries hashes only
    assert volume.header["SeriesUIDHash"] == short_hash(info.series_uid, "uid-")
    assert volume.header["StudyUIDHash"] == short_hash(info.study_uid, "uid-")
    assert str(ds.SeriesInstanceUID) not in repr(dict(volume.header))


def test_frames_missing_from_a_volume_refused(tmp_path):
    path = dicom_copies("siemens_xa30_enh_asl", tmp_path)[0]
    ds = pydicom.dcmread(path)
    # move frame 3 onto frame 2's position: two frames at one place, one place empty
    pos = ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient
    ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0].ImagePositionPatient = pos
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with pytest.raises(IngestError, match="bad.dcm"):
        read_volume(bad)


@pytest.mark.parametrize("folder", SIEMENS_XA + ["canon_enh_dti"])
def test_raw_frame_groups_read_like_pydicom(folder, tmp_path, monkeypatch):
    """The fast path for per-frame positions and frame content gives pydicom's values."""
    from rtfb.ingest import dicom_enhanced

    path = dicom_copies(folder, tmp_path)[0]
    tables = []
    for fast in (True, False):
        monkeypatch.setattr(dicom_enhanced, "_FAST", fast)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        tables.append(dicom_enhanced.frame_table(ds, path.name))
    fast, slow = tables
    for field in ("order", "positions", "normal", "spacing", "slope", "intercept", "step"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field))
    if slow.times is None:
        assert fast.times is None
    else:
        np.testing.assert_array_equal(fast.times, slow.times)
    item = dicom_enhanced._fast_item(ds.PerFrameFunctionalGroupsSequence[0],
                                     "PlanePositionSequence")
    assert item is None  # already decoded by pydicom above: no raw bytes left


def test_raw_item_refuses_what_it_does_not_know():
    from rtfb.ingest.dicom_enhanced import _raw_first_item

    assert _raw_first_item(b"") is None
    assert _raw_first_item(b"\x08\x00\x16\x00UI\x02\x001\x00") is None  # not an item
    # an item holding a nested sequence: left to pydicom
    nested = (b"\xfe\xff\x00\xe0\x10\x00\x00\x00" + b"\x20\x00\x32\x00SQ\x00\x00"
              + b"\x00\x00\x00\x00")
    assert _raw_first_item(nested) is None
    # ImagePositionPatient as DS, TemporalPositionIndex as UL
    ipp = b"1\\2.5\\-3 "
    body = (b"\x20\x00\x32\x00DS" + len(ipp).to_bytes(2, "little") + ipp
            + b"\x20\x00\x28\x91UL\x04\x00" + (7).to_bytes(4, "little"))
    item = _raw_first_item(b"\xfe\xff\x00\xe0" + len(body).to_bytes(4, "little") + body)
    assert item.get("ImagePositionPatient") == ["1", "2.5", "-3"]
    assert item.get("TemporalPositionIndex") == 7
