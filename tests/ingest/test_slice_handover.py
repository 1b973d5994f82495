"""Classic slice series handed over at the last slice: the slices are read, decoded and read
out as they arrive (the probe), so stacking a volume opens no file; a file that is cut or
changed after that is read again and judged on what is on disk now."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from rtfb.exceptions import IncompleteFileError, IngestError
from rtfb.ingest import _dicom_common, dicom_slices
from rtfb.ingest.read import probe, read_dicom_slices
from simulator.dicom_writers import ClassicDicomSource

SHAPE = (8, 6, 5)


@pytest.fixture
def slices(tmp_path):
    """The slice files of volume 2 of a simulated XA-interoperability run (no slice count)."""
    rng = np.random.default_rng(7)
    data = (1000 + 50 * rng.standard_normal(SHAPE + (3,))).astype(np.float32)
    run = tmp_path / "run.nii"
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 4.0, 1.0])), run)
    paths = []
    for name, content in ClassicDicomSource(run).render_files(2, 2.0):
        (tmp_path / name).write_bytes(content)
        paths.append(tmp_path / name)
    dicom_slices._PRELOADED.clear()
    yield paths
    dicom_slices._PRELOADED.clear()


@pytest.fixture
def loads(monkeypatch):
    """Names of the files parsed by the slice reader (pydicom reads) from now on."""
    seen = []

    def counting(path, **kwargs):
        seen.append(path.name if hasattr(path, "name") else str(path))
        return _dicom_common._load(path, **kwargs)

    monkeypatch.setattr(dicom_slices, "_load", counting)
    return seen


@pytest.fixture
def scalings(monkeypatch):
    """Number of slices whose pixels the slice reader decodes and scales from now on."""
    count = [0]

    def counting(ds, raw):
        count[0] += 1
        return _dicom_common._scaled(ds, raw)

    monkeypatch.setattr(dicom_slices, "_scaled", counting)
    return count


def _same(a, b):
    assert a.index == b.index
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.header == b.header and a.source == b.source and a.tr == b.tr


def test_volume_stacked_from_probed_slices_without_reading_them_again(slices, loads,
                                                                    scalings):
    cold = read_dicom_slices(slices)
    assert sorted(loads) == sorted(p.name for p in slices)  # nothing probed: all read
    assert scalings[0] == len(slices)
    for path in slices:
        assert probe(path).kind == "slice"  # as the watcher does when each slice arrives
    loads.clear()
    scalings[0] = 0
    warm = read_dicom_slices(slices[::-1])
    assert loads == [] and scalings[0] == 0  # stacking only: no parsing, no decoding
    _same(warm, cold)
    assert warm.header["NumberOfSlices"] == SHAPE[2] and "SliceTiming" in warm.header


def test_slice_cut_after_it_was_probed_is_read_again_and_refused(slices, loads):
    expected = read_dicom_slices(slices)
    for path in slices:
        probe(path)
    content = slices[-1].read_bytes()
    slices[-1].write_bytes(content[:-10])  # cut in its pixel data (being rewritten)
    loads.clear()
    with pytest.raises(IncompleteFileError, match="pixel data shorter"):
        read_dicom_slices(slices)
    assert loads == [slices[-1].name]
    slices[-1].write_bytes(content)
    loads.clear()
    _same(read_dicom_slices(slices), expected)
    assert loads == [slices[-1].name]  # the slices read ahead are kept until stacked


def test_last_slice_probed_while_cut_is_not_taken_as_complete(slices, loads):
    expected = read_dicom_slices(slices)
    content = slices[-1].read_bytes()
    slices[-1].write_bytes(content[:-10])
    for path in slices:
        assert probe(path).kind == "slice"  # the header is there: it probes fine
    loads.clear()
    with pytest.raises(IncompleteFileError):
        read_dicom_slices(slices)
    assert loads == [slices[-1].name]  # the others were complete and read ahead
    slices[-1].write_bytes(content)
    _same(read_dicom_slices(slices), expected)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]),
     "different slice orientations"),
    (lambda ds: setattr(ds, "PixelSpacing", [2.0, 2.0]), "different pixel spacings"),
    (lambda ds: delattr(ds, "ImagePositionPatient"), "no valid ImagePositionPatient"),
    (lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.3.4"), "different series"),
])
def test_read_ahead_slices_refused_as_when_read_at_once(slices, edit, match):
    ds = pydicom.dcmread(slices[2])
    edit(ds)
    ds.save_as(slices[2])
    with pytest.raises(IngestError, match=match) as cold:
        read_dicom_slices(slices)
    for path in slices:
        probe(path)
    with pytest.raises(IngestError, match=match) as warm:
        read_dicom_slices(slices)
    assert str(warm.value) == str(cold.value)
