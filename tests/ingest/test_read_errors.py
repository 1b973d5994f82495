"""Truncated, empty, corrupt and unsupported files raise clear errors naming the file."""

from __future__ import annotations

import gzip
import re

import nibabel as nib
import numpy as np
import pytest

from rtfb.exceptions import IncompleteFileError, IngestError
from rtfb.ingest.read import detect_format, iter_volumes, probe, read_dicom_slices, read_volume

from ._data import TEST_SERIES, ge_files, need, siemens_files

READERS = [read_volume, probe, lambda p: list(iter_volumes(p))]
BYTES = re.compile(r"expected (\d+) bytes, found (\d+)")


def _half(src, dst):
    raw = src.read_bytes()
    dst.write_bytes(raw[:len(raw) // 2])
    return dst


def _check_bytes(message, present=None):
    match = BYTES.search(message)
    assert match, message
    expected, found = map(int, match.groups())
    assert found < expected
    if present is not None:
        assert found == present


# -- truncated real files --------------------------------------------------------------------
def test_truncated_siemens_mosaic(tmp_path):
    path = _half(siemens_files()[0], tmp_path / "001_000013_000001.dcm")
    with pytest.raises(IncompleteFileError, match=r"001_000013_000001\.dcm") as err:
        read_volume(path)
    _check_bytes(str(err.value))
    assert "expected 204800 bytes" in str(err.value)  # 320 x 320 x 2 bytes of pixel data


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.9])
def test_truncated_ge_slice(tmp_path, fraction):
    src = ge_files()[0]
    raw = src.read_bytes()
    path = tmp_path / src.name
    path.write_bytes(raw[:int(len(raw) * fraction)])
    with pytest.raises(IncompleteFileError, match=re.escape(src.name)):
        read_dicom_slices([path])


def test_truncated_ge_slice_in_a_group(tmp_path):
    files = ge_files()[:18]
    copies = []
    for k, src in enumerate(files):
        dst = tmp_path / src.name
        dst.write_bytes(src.read_bytes() if k != 7 else src.read_bytes()[:-3000])
        copies.append(dst)
    with pytest.raises(IncompleteFileError, match=re.escape(files[7].name)) as err:
        read_dicom_slices(copies)
    _check_bytes(str(err.value), present=8192 - 3000)


def test_dicom_cut_inside_header(tmp_path):
    src = siemens_files()[0]
    path = tmp_path / "cut.dcm"
    path.write_bytes(src.read_bytes()[:300])
    for reader in READERS:
        with pytest.raises(IncompleteFileError, match=r"cut\.dcm"):
            reader(path)


def test_truncated_nifti_gz(tmp_path):
    path = _half(need(TEST_SERIES), tmp_path / "testSeries.nii.gz")
    for reader in (lambda p: list(iter_volumes(p)), read_volume):
        with pytest.raises(IncompleteFileError, match=r"testSeries\.nii\.gz") as err:
            reader(path)
        _check_bytes(str(err.value))


def test_truncated_nifti_plain(tmp_path):
    raw = gzip.decompress(need(TEST_SERIES).read_bytes())
    path = tmp_path / "testSeries.nii"
    path.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(IncompleteFileError, match=r"testSeries\.nii") as err:
        list(iter_volumes(path))
    _check_bytes(str(err.value), present=len(raw) // 2)
    expected = int(BYTES.search(str(err.value)).group(1))
    assert expected == len(raw)  # vox_offset + 64*64*30*3 uint16


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_synthetic_nifti(tmp_path, suffix):
    """Same as above without the shared data (runs on any machine)."""
    full = tmp_path / f"full{suffix}"
    nib.save(nib.Nifti1Image(np.arange(4000, dtype=np.float32).reshape(20, 20, 10), np.eye(4)),
             full)
    for cut in (100, 352, len(full.read_bytes()) // 2, len(full.read_bytes()) - 4):
        path = tmp_path / f"vol_00001{suffix}"
        path.write_bytes(full.read_bytes()[:cut])
        with pytest.raises(IncompleteFileError, match=re.escape(path.name)):
            read_volume(path)


def test_gzip_complete_data_without_trailer(tmp_path):
    full = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.eye(4)), full)
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(full.read_bytes()[:-4])  # the gzip trailer (CRC, size) still missing
    with pytest.raises(IncompleteFileError, match=r"cut\.nii\.gz"):
        read_volume(path)


# -- empty, junk, unsupported ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["empty.dcm", "empty.nii", "empty"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.touch()
    for reader in READERS:
        with pytest.raises(IngestError, match=rf"{re.escape(name)}: empty file") as err:
            reader(path)
        assert not isinstance(err.value, IncompleteFileError)


@pytest.mark.parametrize(("name", "content"), [
    ("random.dcm", np.random.default_rng(1).bytes(50_000)),
    ("random", np.random.default_rng(2).bytes(700)),
    ("notes.txt", b"scanner log\n" * 100),
    ("notes.nii", b"not an image\n" * 100),
    ("words.nii.gz", gzip.compress(b"just text " * 200)),
    ("junk.nii.gz", b"\x1f\x8b" + np.random.default_rng(3).bytes(400)),
])
def test_junk_is_ingest_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    for reader in READERS:
        with pytest.raises(IngestError, match=re.escape(name)) as err:
            reader(path)
        assert not isinstance(err.value, IncompleteFileError)
        assert err.value.__cause__ is None  # no library exception chained (or logged)


def test_missing_file(tmp_path):
    with pytest.raises(IngestError, match=r"ghost\.nii: no such file"):
        read_volume(tmp_path / "ghost.nii")


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "folder.nii").mkdir()
    with pytest.raises(IngestError, match=r"folder\.nii: not a regular file"):
        read_volume(tmp_path / "folder.nii")


def test_dicom_without_pixels_is_not_an_image(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert detect_format(path) == "dicom"
    with pytest.raises(IngestError, match=r"report\.dcm: DICOM object is not an image"):
        read_volume(path)


def test_short_file_still_being_written(tmp_path):
    path = tmp_path / "001_000013_000004.dcm"
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(IncompleteFileError, match="too short"):
        read_volume(path)


def test_missing_par_or_rec_given(tmp_path):
    for name in ("ghost.par", "ghost.REC"):
        with pytest.raises(IngestError, match=rf"{re.escape(name)}: no such file") as err:
            read_volume(tmp_path / name)
        assert not isinstance(err.value, IncompleteFileError)
