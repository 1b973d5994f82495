"""NIfTI and PAR/REC readers: synthetic files (always run) and the real pyneal data."""

from __future__ import annotations

import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from rtfb.exceptions import IncompleteFileError, IngestError
from rtfb.ingest.names import is_safe_name, name_hash
from rtfb.ingest.read import iter_volumes, probe, read_volume
from rtfb.ingest.volume import ALLOWED_HEADER_FIELDS

from ._data import PHILIPS, TEST_SERIES, need, philips_pars

AFFINE = np.array([[-3.0, 0, 0, 90], [0, 3, 0, -120], [0, 0, 4, -50], [0, 0, 0, 1]])


def _write(path, data, *, units=("mm", "sec"), tr=None, slope=None, inter=None,
           dtype=np.int16):
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE)
    img.header.set_xyzt_units(*units)
    if tr is not None:
        zooms = list(img.header.get_zooms())
        zooms[3] = tr
        img.header.set_zooms(zooms)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


@pytest.fixture
def vol(rng):
    return rng.integers(0, 1000, size=(6, 5, 4))


# -- NIfTI, synthetic ------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "index"), [("run_00001.nii", 0), ("run-00007.nii.gz", 6),
                                             ("sub_run_012.nii.gz", 11), ("single.nii", 0),
                                             ("run_1234.nii", 1233),
                                             # not counters: dcm2niix "%s_%e_%z", a run number
                                             ("8001_1_epfid2d1_64.nii.gz", 0),
                                             ("sub-01_run_2.nii", 0)])
def test_nifti_index_from_name(tmp_path, vol, name, index):
    path = _write(tmp_path / name, vol)
    volume = read_volume(path)
    assert volume.index == index == probe(path).index
    # the name itself only when it matches a non-identifying export pattern
    assert volume.source == (name if is_safe_name(name) else name_hash(name))
    np.testing.assert_array_equal(volume.data, vol.astype(np.float32))
    np.testing.assert_array_equal(volume.affine, AFFINE)
    assert dict(volume.header) == {"format": "nifti1", "NumberOfSlices": 4}
    assert volume.tr is None and volume.acquisition_time is None


def test_nifti_series_from_name_prefix(tmp_path, vol):
    a = probe(_write(tmp_path / "func_00001.nii", vol))
    b = probe(_write(tmp_path / "func-00002.nii.gz", vol))
    c = probe(_write(tmp_path / "other_00001.nii", vol))
    assert a.series == b.series != c.series
    assert a.series.startswith("name-") and "func" not in a.series


def test_nifti_volume_number_zero_rejected(tmp_path, vol):
    path = _write(tmp_path / "run_00000.nii", vol)
    with pytest.raises(IngestError, match="1-based"):
        read_volume(path)


def test_nifti_scaling_and_dtype(tmp_path, vol):
    path = _write(tmp_path / "scaled_00003.nii", vol, slope=2.0, inter=-1.5)
    volume = read_volume(path)
    assert volume.data.dtype == np.float32
    np.testing.assert_allclose(volume.data, vol * 2.0 - 1.5)


@pytest.mark.parametrize(("units", "pixdim4", "tr"), [
    (("mm", "sec"), 2.0, 2.0), (("mm", "msec"), 800.0, 0.8), (("mm", "usec"), 1.5e6, 1.5),
    (("mm", "unknown"), 1.2, 1.2), (("mm", "hz"), 3.0, None)])
def test_nifti_4d_tr_units(tmp_path, rng, units, pixdim4, tr):
    data = rng.integers(0, 100, size=(4, 4, 3, 5))
    path = _write(tmp_path / "series.nii.gz", data, units=units, tr=pixdim4)
    volumes = list(iter_volumes(path))
    assert [v.index for v in volumes] == list(range(5))
    for t, volume in enumerate(volumes):
        np.testing.assert_array_equal(volume.data, data[..., t])
        assert volume.tr == (pytest.approx(tr) if tr is not None else None)
    info = probe(path)
    assert (info.kind, info.index, info.n_volumes) == ("volume", 0, 5)


def test_nifti_4d_index_offset_from_name(tmp_path, rng):
    path = _write(tmp_path / "chunk_00011.nii", rng.integers(0, 9, size=(3, 3, 2, 3)))
    assert [v.index for v in iter_volumes(path)] == [10, 11, 12]


def test_nifti_metre_units_converted_to_mm(tmp_path, vol):
    path = _write(tmp_path / "metres.nii", vol, units=("meter", "sec"))
    np.testing.assert_allclose(read_volume(path).affine[:3], AFFINE[:3] * 1000)


def test_nifti_4d_single_volume_accepted_several_rejected(tmp_path, rng):
    one = _write(tmp_path / "one.nii", rng.integers(0, 9, size=(4, 4, 3, 1)))
    assert read_volume(one).shape == (4, 4, 3)
    many = _write(tmp_path / "many.nii", rng.integers(0, 9, size=(4, 4, 3, 2)))
    with pytest.raises(IngestError, match=r"many\.nii.*2 volumes.*iter_volumes"):
        read_volume(many)


def test_nifti_without_extension_detected_by_content(tmp_path, vol):
    path = _write(tmp_path / "vol_00002.nii.gz", vol)
    renamed = tmp_path / "vol_blob"
    shutil.copy(path, renamed)
    np.testing.assert_array_equal(read_volume(renamed).data, vol)


def test_nifti_complex_rejected(tmp_path):
    img = nib.Nifti1Image(np.ones((3, 3, 3), np.complex64), np.eye(4))
    nib.save(img, tmp_path / "complex.nii")
    with pytest.raises(IngestError, match=r"complex\.nii.*not supported"):
        read_volume(tmp_path / "complex.nii")


def test_nifti_pair_rejected(tmp_path, vol):
    nib.save(nib.Nifti1Pair(vol.astype(np.int16), np.eye(4)), tmp_path / "pair.img")
    with pytest.raises(IngestError, match=r"pair\.hdr.*\.hdr/\.img pair"):
        read_volume(tmp_path / "pair.hdr")


def test_nifti2_read(tmp_path, vol):
    nib.save(nib.Nifti2Image(vol.astype(np.float32), AFFINE), tmp_path / "v2_00001.nii")
    volume = read_volume(tmp_path / "v2_00001.nii")
    assert volume.header["format"] == "nifti2"
    np.testing.assert_array_equal(volume.data, vol)


# -- NIfTI, real -----------------------------------------------------------------------------
def test_test_series_matches_nibabel():
    img = nib.load(need(TEST_SERIES))
    expected = img.get_fdata()
    volumes = list(iter_volumes(TEST_SERIES))
    assert len(volumes) == expected.shape[3] == 3
    for t, volume in enumerate(volumes):
        assert volume.index == t and volume.shape == (64, 64, 30)
        np.testing.assert_array_equal(volume.data, expected[..., t].astype(np.float32))
        np.testing.assert_array_equal(volume.affine, img.affine)
        assert volume.tr == pytest.approx(1.0)  # pixdim[4] = 1, time unit unknown (4D: s)
    info = probe(TEST_SERIES)
    assert (info.kind, info.index, info.n_parts, info.n_volumes) == ("volume", 0, 1, 3)
    with pytest.raises(IngestError, match="iter_volumes"):
        read_volume(TEST_SERIES)


# -- PAR/REC, real ---------------------------------------------------------------------------
def test_philips_matches_nibabel_and_mask():
    pars = philips_pars()
    mask = nib.load(need(PHILIPS.parent.parent / "dummyMask.nii.gz"))
    for t, par in enumerate(pars):
        volume = read_volume(par)
        img = nib.load(par, strict_sort=True)
        labels = img.header.get_volume_labels()["image_type_mr"]
        first = int(np.argmin(labels))  # lowest image type (16 here) is the one kept
        expected = img.get_fdata()[..., first]
        assert volume.shape == mask.shape == expected.shape == (80, 80, 15)
        np.testing.assert_allclose(volume.data, expected, rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(volume.affine, img.affine)
        assert volume.index == t
        assert volume.source == par.name
        assert volume.tr is None  # header says "1 ms": implausible, left unknown
        assert set(volume.header) <= ALLOWED_HEADER_FIELDS
        assert volume.header["format"] == "parrec"
        assert volume.header["FlipAngle"] == pytest.approx(79.0)
        rec = read_volume(par.with_suffix(".rec"))
        np.testing.assert_array_equal(rec.data, volume.data)


def test_philips_probe():
    pars = philips_pars()
    infos = [probe(p) for p in pars]
    assert [i.index for i in infos] == list(range(len(pars)))
    assert {i.kind for i in infos} == {"volume"}
    assert len({i.series for i in infos}) == 1
    assert [i.path for i in infos] == pars
    assert probe(pars[0].with_suffix(".rec")) == infos[0]  # the pair, named by its .par


def _pair_copy(tmp_path, par, name="Dump-0000"):
    dst = tmp_path / f"{name}.par"
    shutil.copy(par, dst)
    shutil.copy(par.with_suffix(".rec"), dst.with_suffix(".rec"))
    return dst


def test_philips_truncated_rec(tmp_path):
    par = _pair_copy(tmp_path, philips_pars()[0])
    rec = par.with_suffix(".rec")
    rec.write_bytes(rec.read_bytes()[:100_000])
    with pytest.raises(IncompleteFileError, match=r"Dump-0000\.rec.*expected 384000 bytes, "
                                                  r"found 100000"):
        read_volume(par)


def test_philips_missing_rec_and_cut_par(tmp_path):
    par = _pair_copy(tmp_path, philips_pars()[0])
    par.with_suffix(".rec").unlink()
    with pytest.raises(IncompleteFileError, match=r"Dump-0000\.rec.*not there yet"):
        read_volume(par)
    text = par.read_bytes()
    par.write_bytes(text[:len(text) // 2])
    shutil.copy(philips_pars()[0].with_suffix(".rec"), par.with_suffix(".rec"))
    with pytest.raises(IncompleteFileError, match=r"Dump-0000\.par.*END OF DATA"):
        read_volume(par)


def test_philips_multi_dynamic_pair(tmp_path):
    """A pair holding two dynamics (built from two real single-dynamic pairs)."""
    par0, par1 = philips_pars()[:2]
    image_line = re.compile(r"^\s*\d")
    lines0 = par0.read_text(encoding="latin-1").splitlines()
    lines1 = par1.read_text(encoding="latin-1").splitlines()
    n_images = sum(bool(image_line.match(x)) for x in lines0)
    out = []
    for line in lines0:
        if image_line.match(line):
            continue
        if "Max. number of dynamics" in line:
            line = re.sub(r":\s*\d+\s*$", ":   2", line)
        if line.startswith("# === END"):
            for lines, dynamic, offset in ((lines0, 1, 0), (lines1, 2, n_images)):
                for image in filter(image_line.match, lines):
                    fields = image.split()
                    fields[2], fields[6] = str(dynamic), str(int(fields[6]) + offset)
                    out.append(" ".join(fields))
            out.append("")
        out.append(line)
    par = tmp_path / "Run-0001.par"
    par.write_text("\n".join(out) + "\n", encoding="latin-1")
    par.with_suffix(".rec").write_bytes(par0.with_suffix(".rec").read_bytes()
                                        + par1.with_suffix(".rec").read_bytes())
    volumes = list(iter_volumes(par))
    assert [v.index for v in volumes] == [0, 1]  # dynamic number - 1
    np.testing.assert_array_equal(volumes[0].data, read_volume(par0).data)
    np.testing.assert_array_equal(volumes[1].data, read_volume(par1).data)
    info = probe(par)
    assert (info.index, info.n_volumes) == (0, 2)
    with pytest.raises(IngestError, match="2 dynamics.*iter_volumes"):
        read_volume(par)
