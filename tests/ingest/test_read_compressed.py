"""Compressed transfer syntaxes (JPEG lossless, JPEG-LS, JPEG 2000, RLE) via pydicom's handlers."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest

from rtfb.ingest.read import probe, read_volume

from ._dcm_qa import dicom_copies, reference
from .test_read_enhanced import _same_as_reference

FOLDER = "siemens_b17_mosaic_ts"
#: MD5 of the decoded 384x384 mosaic, from dcmtk (dcmdjpeg / dcmdjpls), see dcm_qa/README.md
MOSAIC_MD5 = "8680e6fdccd8635581a3d21d131e95dd"
SYNTAXES = {"1.dcm": "1.2.840.10008.1.2.1", "5.dcm": "1.2.840.10008.1.2.4.70",
            "6.dcm": "1.2.840.10008.1.2.4.70", "7.dcm": "1.2.840.10008.1.2.4.80",
            "9.dcm": "1.2.840.10008.1.2.4.90"}


@pytest.mark.parametrize("name", sorted(SYNTAXES))
def test_compressed_mosaic_decodes_like_dcmtk_and_matches_dcm2niix(name, tmp_path):
    files = {p.name: p for p in dicom_copies(FOLDER, tmp_path)}
    path = files[name]
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == SYNTAXES[name]
    assert hashlib.md5(ds.pixel_array.astype("<u2").tobytes()).hexdigest() == MOSAIC_MD5
    info = probe(path)
    assert info.kind == "volume"
    volume = read_volume(path)
    assert volume.shape == (64, 64, 35)
    # 7.dcm (JPEG-LS) has no dcm2niix reference: the build used cannot decode it; its
    # pixels equal the uncompressed file's, which has one
    stem = "1_1_epfid2d1_64" if name == "7.dcm" else f"{name[0]}_1_epfid2d1_64"
    ref_data, ref_affine, _ = reference(FOLDER, stem)
    _same_as_reference(volume, ref_data[..., 0], ref_affine)


def test_rle_lossless(tmp_path):
    """RLE: the uncompressed mosaic re-encoded by pydicom reads back the same volume."""
    from pydicom.uid import RLELossless

    src = dicom_copies(FOLDER, tmp_path)[0]
    ds = pydicom.dcmread(src)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    path = tmp_path / "rle.dcm"
    ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_volume(path).data, read_volume(src).data)

