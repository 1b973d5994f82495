"""Header sanity: slice timing normalised and checked, volume counters in names, advice that
works for what rtfb cannot read."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from rtfb.exceptions import IngestError
from rtfb.ingest._timing import checked_slice_timing
from rtfb.ingest.read import iter_volumes, probe, read_dicom_slices, read_volume

from ._data import ge_files, need
from ._dcm_qa import DCM_QA


def test_slice_times_wrapped_past_midnight_unwrapped_like_dcm2niix():
    """CMRR multiband mosaics write times before the reference as 86399.9 s (a day minus
    0.1 s): dcm2niix's range for such a run is 0 .. 2.37 s."""
    true = np.array([0.0, 0.79, 1.58, 2.37, 0.395, 1.185, 1.975] * 2)  # MB 2, s
    wrapped = (true - 0.1) % 86400.0  # the first excitation 0.1 s before the reference
    assert wrapped.max() > 86399.8
    timing = checked_slice_timing(wrapped, 2.5, "x")
    np.testing.assert_allclose(timing, true, atol=1e-6)
    assert min(timing) == 0.0 and max(timing) == pytest.approx(2.37)


@pytest.mark.parametrize(("times", "tr"), [
    ([0.0] * 6, 2.0),  # all zero: not known
    ([0.0, 1.0, 2.5], 2.0),  # beyond TR
    ([0.0, float("nan"), 1.0], 2.0),
    ([], 2.0),
])
def test_unknown_or_impossible_slice_timing_is_none(times, tr):
    assert checked_slice_timing(times, tr, "x") is None


def test_nifti_all_zero_slice_timing_recorded_as_unknown(tmp_path):
    data = np.zeros((4, 4, 6, 2), np.int16)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_dim_info(slice=2)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((1, 1, 1, 2.0))
    img.header["slice_code"] = 1  # sequential increasing
    img.header["slice_end"] = 5
    img.header["slice_duration"] = 0.0  # what dcm2niix writes when it has no times
    nib.save(img, tmp_path / "zero_00001.nii")
    assert all("SliceTiming" not in v.header for v in iter_volumes(tmp_path / "zero_00001.nii"))
    img.header["slice_duration"] = 0.3
    nib.save(img, tmp_path / "timed_00001.nii")
    volume = next(iter_volumes(tmp_path / "timed_00001.nii"))
    assert volume.header["SliceTiming"] == pytest.approx([0, 0.3, 0.6, 0.9, 1.2, 1.5])


def test_dcm2niix_4d_named_after_the_matrix_starts_at_volume_0():
    """``8001_1_epfid2d1_64.nii.gz``: 64 is the matrix in the sequence name, not a counter."""
    path = need(DCM_QA / "siemens_xa30i_classic_bold" / "ref" / "8001_1_epfid2d1_64.nii.gz")
    assert probe(path).index == 0
    assert [v.index for v in iter_volumes(path)] == [0, 1, 2]


def _tiled(tmp_path, manufacturer, image_type):
    ds = pydicom.dcmread(ge_files()[0])
    ds.Manufacturer = manufacturer
    ds.ImageType = image_type
    for keyword in ("ImagesInAcquisition",):
        if keyword in ds:
            delattr(ds, keyword)
    path = tmp_path / f"{manufacturer}.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("image_type", [["ORIGINAL", "PRIMARY", "M", "MOSAIC"],
                                        ["ORIGINAL", "PRIMARY", "VFRAME"]])
def test_uih_tiled_files_get_advice_that_works(tmp_path, image_type):
    path = _tiled(tmp_path, "UIH", image_type)
    for call in (probe, read_volume, lambda p: read_dicom_slices([p]),
                 lambda p: list(iter_volumes(p))):
        with pytest.raises(IngestError, match="UIH tiled.*dcm2niix.*iter_volumes") as err:
            call(path)
        assert "read_dicom_slices" not in str(err.value)
    # the advice: dcm2niix's NIfTI read with iter_volumes() (any run dcm2niix wrote)
    ref = need(DCM_QA / "siemens_xa60_enh_bold" / "ref" / "6_1_.nii.gz")
    assert len(list(iter_volumes(ref))) == 3


def test_one_classic_slice_advice_works(tmp_path):
    """read_volume on one slice of a classic series points at read_dicom_slices, which then
    reads the volume (the advice is followed here)."""
    src = need(DCM_QA / "siemens_xa30i_classic_bold" / "dicom")
    import gzip
    import shutil

    files = []
    for k, gz in enumerate(sorted(src.glob("8001*.dcm.gz"))):
        out = tmp_path / f"s{k:02d}.dcm"
        with gzip.open(gz) as fin, open(out, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        files.append(out)
    with pytest.raises(IngestError, match="read_dicom_slices"):
        read_volume(files[0])
    assert read_dicom_slices(files).shape == (64, 64, 33)
