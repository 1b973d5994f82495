"""DICOM readers on real Siemens mosaics and a GE slice series, checked against dcm2niix."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from rtfb.exceptions import IngestError
from rtfb.ingest.read import probe, read_dicom_slices, read_volume
from rtfb.ingest.volume import ALLOWED_HEADER_FIELDS, Volume

from ._data import GE, SIEMENS, canonical, dcm2niix, ge_files, need, siemens_files

AFFINE_TOL_MM = 0.01


def _vs_reference(volume: Volume, ref_data: np.ndarray, ref_affine: np.ndarray) -> None:
    """Shape, values and affine equal after as_closest_canonical on both sides."""
    ours, our_affine = canonical(volume.data, volume.affine)
    theirs, their_affine = canonical(ref_data, ref_affine)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=2e-7, atol=0)
    np.testing.assert_allclose(our_affine, their_affine, atol=AFFINE_TOL_MM, rtol=0)
    # the native voxel grid is dcm2niix's too (documented in rtfb.ingest.dicom)
    assert volume.shape == ref_data.shape
    np.testing.assert_array_equal(volume.data, ref_data.astype(np.float32))
    np.testing.assert_allclose(volume.affine, ref_affine, atol=AFFINE_TOL_MM, rtol=0)


@pytest.fixture(scope="module")
def siemens_ref(tmp_path_factory):
    nii = dcm2niix(need(SIEMENS), tmp_path_factory.mktemp("d2n_siemens"))
    img = nib.load(nii)
    return img.get_fdata(), img.affine


@pytest.fixture(scope="module")
def ge_ref(tmp_path_factory):
    nii = dcm2niix(need(GE), tmp_path_factory.mktemp("d2n_ge"))
    img = nib.load(nii)
    return img.get_fdata(), img.affine


# -- Siemens mosaics -------------------------------------------------------------------------
def test_siemens_mosaics_match_dcm2niix(siemens_ref):
    ref_data, ref_affine = siemens_ref
    files = siemens_files()
    assert ref_data.shape == (64, 64, 18, len(files))
    for t, path in enumerate(files):
        volume = read_volume(path)
        assert volume.index == t
        _vs_reference(volume, ref_data[..., t], ref_affine)


def test_siemens_mosaic_fields():
    volume = read_volume(siemens_files()[0])
    assert volume.data.dtype == np.float32 and volume.shape == (64, 64, 18)
    assert volume.tr == pytest.approx(1.0)
    assert volume.series == "13"
    assert volume.source == "001_000013_000001.dcm"
    assert volume.acquisition_time is None  # AcquisitionTime is empty in these files
    header = dict(volume.header)
    assert set(header) <= ALLOWED_HEADER_FIELDS
    assert header["format"] == "dicom-mosaic"
    assert header["NumberOfSlices"] == 18 and header["MosaicTiles"] == 5
    assert header["RepetitionTime"] == pytest.approx(1.0)
    assert header["EchoTime"] == pytest.approx(0.028)
    assert header["PhaseEncodingDirection"] == "j-"  # as dcm2niix reports it
    timing = header["SliceTiming"]
    assert len(timing) == 18 and timing[:4] == pytest.approx([0.49, 0.0, 0.5425, 0.055])


def test_siemens_probe():
    infos = [probe(p) for p in siemens_files()]
    assert [i.kind for i in infos] == ["volume"] * 3
    assert [i.index for i in infos] == [0, 1, 2]
    assert {i.series for i in infos} == {"13"}
    assert [(i.n_parts, i.part, i.n_volumes) for i in infos] == [(1, 1, 1)] * 3


def test_mosaic_is_not_a_slice():
    with pytest.raises(IngestError, match="mosaic holds a whole volume"):
        read_dicom_slices(siemens_files()[:1])


def test_mosaic_without_extension_or_preamble(tmp_path):
    src = siemens_files()[0]
    plain = tmp_path / "mosaic_no_ext"
    shutil.copy(src, plain)
    ds = pydicom.dcmread(src)
    ds.preamble = None
    bare = tmp_path / "bare"
    ds.save_as(bare, enforce_file_format=False)  # no preamble, no 'DICM'
    assert pydicom.misc.is_dicom(bare) is False
    reference = read_volume(src)
    for path in (plain, bare):
        volume = read_volume(path)
        np.testing.assert_array_equal(volume.data, reference.data)
        np.testing.assert_array_equal(volume.affine, reference.affine)


# -- GE slices -------------------------------------------------------------------------------
def _ge_volume(t: int):
    return ge_files()[18 * t:18 * (t + 1)]


def test_ge_slices_match_dcm2niix(ge_ref):
    ref_data, ref_affine = ge_ref
    assert ref_data.shape == (64, 64, 18, 3)
    for t in range(3):
        volume = read_dicom_slices(_ge_volume(t))
        assert volume.index == t
        _vs_reference(volume, ref_data[..., t], ref_affine)


def test_ge_slices_any_order():
    files = _ge_volume(1)
    reference = read_dicom_slices(files)
    rng = np.random.default_rng(0)
    shuffled = [files[i] for i in rng.permutation(len(files))]
    volume = read_dicom_slices(shuffled)
    np.testing.assert_array_equal(volume.data, reference.data)
    np.testing.assert_array_equal(volume.affine, reference.affine)
    assert volume.index == 1 and volume.series == "6"
    assert volume.tr == pytest.approx(1.0)
    assert dict(volume.header)["format"] == "dicom-slices"
    assert set(volume.header) <= ALLOWED_HEADER_FIELDS
    # slice spacing 3.8 mm along k, voxel size 3 x 3 in plane
    np.testing.assert_allclose(np.linalg.norm(volume.affine[:3, :3], axis=0), [3, 3, 3.8],
                               atol=1e-3)


def test_ge_probe_groups_and_orders():
    files = ge_files()
    infos = [probe(p) for p in files]
    assert {i.kind for i in infos} == {"slice"}
    assert {i.series for i in infos} == {"6"}
    assert {i.n_parts for i in infos} == {18}
    assert [i.index for i in infos] == [t for t in range(3) for _ in range(18)]
    assert [i.part for i in infos] == list(range(1, 19)) * 3
    assert infos[0].path == files[0]


def test_ge_single_slice_is_not_a_volume():
    with pytest.raises(IngestError, match=r"slice 1 of 18 .*read_dicom_slices"):
        read_volume(ge_files()[0])


def test_ge_slice_count_must_match_header():
    with pytest.raises(IngestError, match="17 slice file.*18 slices per volume"):
        read_dicom_slices(_ge_volume(0)[:17])


def test_ge_slices_of_two_volumes_rejected():
    mixed = _ge_volume(0)[:9] + _ge_volume(1)[9:]
    with pytest.raises(IngestError, match="different volumes"):
        read_dicom_slices(mixed)


def test_ge_duplicate_slice_rejected():
    files = _ge_volume(0)
    with pytest.raises(IngestError, match="same position"):
        read_dicom_slices(files[:-1] + files[:1])


def _edited_copies(tmp_path, files, edit):
    out = []
    for k, src in enumerate(files):
        ds = pydicom.dcmread(src)
        edit(k, ds)
        dst = tmp_path / src.name
        ds.save_as(dst)
        out.append(dst)
    return out


def test_ge_uneven_spacing_rejected(tmp_path):
    def shift(k, ds):
        if k == 5:  # move slice 6 by 2 mm along the slice normal
            row = np.array(ds.ImageOrientationPatient[:3], float)
            col = np.array(ds.ImageOrientationPatient[3:], float)
            pos = np.array(ds.ImagePositionPatient, float) + 2.0 * np.cross(row, col)
            ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]

    with pytest.raises(IngestError, match="uneven slice spacing"):
        read_dicom_slices(_edited_copies(tmp_path, _ge_volume(0), shift))


def test_ge_orientation_mismatch_rejected(tmp_path):
    def tilt(k, ds):
        if k == 3:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]

    with pytest.raises(IngestError, match="different slice orientations"):
        read_dicom_slices(_edited_copies(tmp_path, _ge_volume(0), tilt))


def test_multiframe_without_functional_groups_refused(tmp_path):
    src = ge_files()[0]
    ds = pydicom.dcmread(src)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    path = tmp_path / "multiframe.dcm"
    ds.save_as(path)
    for reader in (read_volume, probe):
        with pytest.raises(IngestError, match="multi-frame"):
            reader(path)


def test_probe_index_matches_reader():
    for path in siemens_files():
        assert probe(path).index == read_volume(path).index
    for t in range(3):
        files = _ge_volume(t)
        assert {probe(p).index for p in files} == {read_dicom_slices(files).index}


def test_acquisition_time_seconds_after_midnight(tmp_path):
    def stamp(k, ds):
        ds.AcquisitionTime = f"1219{40 + k:02d}.250000"

    mosaic = _edited_copies(tmp_path, siemens_files()[:1], stamp)[0]
    assert read_volume(mosaic).acquisition_time == pytest.approx(12 * 3600 + 19 * 60 + 40.25)
    slices = _edited_copies(tmp_path, _ge_volume(0)[::-1], stamp)  # last slice stamped first
    assert read_dicom_slices(slices).acquisition_time == pytest.approx(44380.25)


@pytest.mark.parametrize(("edit", "index"), [
    ({"TemporalPositionIdentifier": 5}, 4),  # any vendor: temporal position - 1
    ({"Manufacturer": "SIEMENS", "AcquisitionNumber": 7}, 6),  # Siemens: acquisition - 1
])
def test_slice_index_rules(tmp_path, edit, index):
    def apply(k, ds):
        for keyword, value in edit.items():
            setattr(ds, keyword, value)

    files = _edited_copies(tmp_path, _ge_volume(1), apply)
    assert {probe(p).index for p in files} == {index}
    assert read_dicom_slices(files).index == index
