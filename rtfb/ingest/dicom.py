"""DICOM to :class:`~rtfb.ingest.volume.Volume`: Siemens mosaics and single-slice series.

* **Siemens mosaics** (one file per volume, the slices tiled in one image, as the real-time
  export writes them): pydicom reads the file, :mod:`nibabel.nicom` (``csareader``,
  ``MosaicWrapper``) reads the Siemens CSA header, un-tiles the slices and gives the slice
  count, the slice normal and the corrected position of the first voxel.
* **Single-slice series** (GE and others: one file per slice): :func:`read_dicom_slices`
  stacks the slice files of one volume by their position along the slice normal and checks
  that they form one regular stack.
* Enhanced / multi-frame DICOM (several frames in one file, not a mosaic) is not supported:
  it raises :class:`~rtfb.exceptions.IngestError`.

Voxel layout and affine
-----------------------
Voxel axes follow dcm2niix: ``i`` runs along a DICOM row (column index), ``j`` runs up the
image (row index, last row first) and ``k`` runs along the slice normal (the cross product of
the row and column direction cosines, ImageOrientationPatient), so a Volume and the NIfTI file
dcm2niix makes of the same DICOM have the same voxel grid. ``Volume.affine`` maps voxel
indices to RAS+ millimetres (DICOM patient coordinates are LPS; the x and y axes are negated).

Patient data
------------
Only the fields named in :data:`~rtfb.ingest.volume.ALLOWED_HEADER_FIELDS` are read out of a
file. Error messages and log lines name the file (base name only) and never quote a header
value; warnings raised by pydicom or nibabel while reading are not passed on (see
:func:`rtfb.ingest._files.captured_warnings`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..exceptions import IncompleteFileError, IngestError
from ._files import (
    captured_warnings,
    check_file,
    describe_error,
    incomplete,
    reading,
    short_hash,
)
from .fileinfo import FileInfo
from .volume import Volume

with warnings.catch_warnings():  # nibabel.nicom warns on import that it is experimental
    warnings.simplefilter("ignore")
    from nibabel.nicom import csareader, dicomwrappers

logger = logging.getLogger("rtfb.ingest")

__all__ = ["is_dicom", "probe_dicom", "read_dicom", "read_dicom_slices"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Relative tolerance on slice spacing, pixel spacing and direction cosines of a slice stack.
_STACK_RTOL = 0.01
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d*)?$")


# --------------------------------------------------------------------------------------------
# file level: detection, reading, completeness
# --------------------------------------------------------------------------------------------
def has_dicm_magic(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) has the DICOM 'DICM' prefix at byte 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a DICOM file (by content, not by extension).

    True for files with the 'DICM' prefix at byte 128, and for preamble-less files that pydicom
    parses (forced) into a data set with DICOM image or SOP attributes.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fobj:
            head = fobj.read(132)
    except OSError:
        return False
    if has_dicm_magic(head):
        return True
    if len(head) < 8:
        return False
    # a preamble-less file starts with an element of group 0002 (meta) or 0008 (identity)
    group = int.from_bytes(head[:2], "little")
    if group not in (0x0002, 0x0008):
        return False
    try:
        with captured_warnings(path.name):
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True,
                                 specific_tags=["SOPClassUID", "Modality", "Rows"])
    except Exception:  # noqa: BLE001 - anything unparsable is simply not DICOM
        return False
    return any(key in ds for key in ("SOPClassUID", "Modality", "Rows"))


@dataclass
class _File:
    """A DICOM data set with what is needed to judge whether the file is complete."""

    path: Path
    ds: Dataset
    size: int
    pixels_at: int | None  # offset of the pixel data element (header-only reads)
    has_magic: bool

    @property
    def name(self) -> str:
        return self.path.name


def _load(path: str | os.PathLike, *, header_only: bool) -> _File:
    path = check_file(path)
    try:
        with captured_warnings(path.name), open(path, "rb") as fobj:
            head = fobj.read(132)
            fobj.seek(0)
            ds = pydicom.dcmread(fobj, force=True, stop_before_pixels=header_only)
            at = fobj.tell()
            size = os.fstat(fobj.fileno()).st_size
    except OSError as err:
        raise IngestError(f"{path.name}: cannot read the file ({err.strerror}).") from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on bad input
        raise IngestError(f"{path.name}: not a readable DICOM file "
                          f"({describe_error(err)}).") from None
    pixels_at = at if header_only and at < size else None
    return _File(path, ds, size, pixels_at, has_dicm_magic(head))


def _sop_class(ds: Dataset) -> Any:
    sop = ds.get("SOPClassUID")
    if not sop and hasattr(ds, "file_meta"):
        sop = ds.file_meta.get("MediaStorageSOPClassUID")
    return sop or None


def _is_image_class(sop: Any) -> bool:
    return sop is not None and "Image Storage" in getattr(sop, "name", "")


def _check_image(f: _File, *, header_only: bool) -> None:
    """Raise unless ``f`` is a complete (or, header-only, a not yet cut) DICOM image."""
    ds, name = f.ds, f.name
    sop = _sop_class(ds)
    looks_dicom = f.has_magic or sop is not None or "Modality" in ds or "Rows" in ds
    if not looks_dicom:
        raise IngestError(f"{name}: not a DICOM file (no 'DICM' prefix and no DICOM "
                          f"attributes).")
    has_geometry = "Rows" in ds and "Columns" in ds
    if header_only:
        reached_pixels = f.pixels_at is not None
    else:
        reached_pixels = "PixelData" in ds
    if not reached_pixels:
        # pydicom stops quietly at the end of a cut file: tell a cut file from a non-image
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise IngestError(f"{name}: float pixel data DICOM is not supported.")
        if sop is not None and not _is_image_class(sop):
            raise IngestError(f"{name}: DICOM object is not an image "
                              f"(SOP class {getattr(sop, 'name', '') or 'unknown'}).")
        expected = _expected_pixel_bytes(ds) if has_geometry else None
        if expected is not None:
            raise incomplete(name, "the file ends before its pixel data", expected, 0)
        raise IncompleteFileError(f"{name}: incomplete file: it ends after {f.size} bytes, "
                                  f"before the image attributes (Rows, Columns) and the pixel "
                                  f"data.")
    if not has_geometry:
        raise IngestError(f"{name}: DICOM image without Rows/Columns.")
    if header_only:
        return
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        return  # encapsulated: sizes unknown; decoding errors are reported by the reader
    expected = _expected_pixel_bytes(ds)
    present = len(ds.PixelData)
    if expected is not None and present < expected:
        raise incomplete(name, "pixel data shorter than the header says", expected, present)


def _expected_pixel_bytes(ds: Dataset) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None
    return (rows * cols * samples * frames * bits + 7) // 8


# --------------------------------------------------------------------------------------------
# header values (allow-listed only)
# --------------------------------------------------------------------------------------------
def _number(ds: Dataset, keyword: str, kind: type = float) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _positive_int(ds: Dataset, keyword: str) -> int | None:
    value = _number(ds, keyword, int)
    return value if value is not None and value >= 1 else None


def _private_value(ds: Dataset, group: int, creator: str, element: int) -> Any:
    try:
        block = ds.private_block(group, creator)
        return block[element].value if element in block else None
    except (KeyError, ValueError):
        return None


def _tm_seconds(value: Any) -> float | None:
    """DICOM TM ('HHMMSS.FFFFFF', also 'HH:MM:SS') to seconds after midnight."""
    if value is None:
        return None
    text = str(value).strip().replace(":", "")
    match = _TM.match(text)
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    total = 3600 * int(hours) + 60 * int(minutes or 0) + int(seconds or 0)
    return total + (float(fraction) if fraction and fraction != "." else 0.0)


def _series_key(ds: Dataset) -> str | None:
    number = _number(ds, "SeriesNumber", int)
    if number is not None:
        return str(number)
    uid = ds.get("SeriesInstanceUID")
    return short_hash(str(uid), "uid-") if uid else None


def _manufacturer(ds: Dataset) -> str:
    return str(ds.get("Manufacturer", "") or "").upper()


def _slices_per_volume(ds: Dataset) -> int | None:
    """Slices per volume of a single-slice series, from the header (None if not given)."""
    if _manufacturer(ds).startswith("GE"):
        value = _private_value(ds, 0x0021, "GEMS_RELA_01", 0x4F)  # LocationsInAcquisition
        try:
            if value is not None and int(value) >= 1:
                return int(value)
        except (TypeError, ValueError):
            pass
    return _positive_int(ds, "ImagesInAcquisition")


def _slice_index_and_part(ds: Dataset, n_slices: int, name: str) -> tuple[int, int]:
    """0-based volume index and 1-based slice number of one single-slice file.

    Rules, in order: TemporalPositionIdentifier - 1 when present; for Siemens,
    AcquisitionNumber - 1; otherwise (GE real-time and other vendors, whose AcquisitionNumber
    stays 1 over a run) (InstanceNumber - 1) // slices-per-volume. The slice number is
    InStackPositionNumber when present, else (InstanceNumber - 1) % slices-per-volume + 1.
    """
    instance = _positive_int(ds, "InstanceNumber")
    temporal = _positive_int(ds, "TemporalPositionIdentifier")
    acquisition = _positive_int(ds, "AcquisitionNumber")
    if temporal is not None:
        index = temporal - 1
    elif _manufacturer(ds).startswith("SIEMENS") and acquisition is not None:
        index = acquisition - 1
    elif instance is not None:
        index = (instance - 1) // n_slices
    else:
        raise IngestError(f"{name}: no InstanceNumber, TemporalPositionIdentifier or "
                          f"AcquisitionNumber: cannot tell which volume the slice belongs to.")
    part = _positive_int(ds, "InStackPositionNumber")
    if part is None or part > n_slices:
        if instance is None:
            raise IngestError(f"{name}: no InstanceNumber or InStackPositionNumber: cannot "
                              f"number the slice.")
        part = (instance - 1) % n_slices + 1
    return index, part


def _mosaic_index(ds: Dataset, name: str) -> int:
    """0-based volume index of a mosaic: AcquisitionNumber - 1 (else InstanceNumber - 1)."""
    for keyword in ("AcquisitionNumber", "InstanceNumber"):
        value = _positive_int(ds, keyword)
        if value is not None:
            return value - 1
    raise IngestError(f"{name}: no AcquisitionNumber or InstanceNumber: cannot tell the "
                      f"volume number.")


def _header(ds: Dataset, fmt: str) -> dict[str, Any]:
    """Allow-listed, JSON-friendly header fields; times in seconds, lengths in mm."""
    header: dict[str, Any] = {"format": fmt}
    for keyword in ("Manufacturer", "ManufacturerModelName"):
        value = ds.get(keyword)
        if value:
            header[keyword] = str(value)
    for keyword in ("MagneticFieldStrength", "FlipAngle", "SliceThickness",
                    "SpacingBetweenSlices"):
        value = _number(ds, keyword)
        if value is not None:
            header[keyword] = value
    for keyword in ("SeriesNumber", "AcquisitionNumber", "InstanceNumber"):
        value = _number(ds, keyword, int)
        if value is not None:
            header[keyword] = value
    for keyword in ("EchoTime", "RepetitionTime"):
        value = _number(ds, keyword)
        if value is not None:
            header[keyword] = value / 1000.0  # DICOM ms -> s
    spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        header["PixelSpacing"] = [float(v) for v in spacing]
    return header


def _tr_seconds(ds: Dataset) -> float | None:
    tr = _number(ds, "RepetitionTime")
    return tr / 1000.0 if tr is not None and tr > 0 else None


def _csa(ds: Dataset, name: str) -> dict | None:
    try:
        with captured_warnings(name):
            return csareader.get_csa_header(ds, "image")
    except Exception:  # noqa: BLE001 - a broken private header only costs the extras
        logger.debug("%s: Siemens CSA image header unreadable; ignored", name)
        return None


def _phase_encoding(ds: Dataset, csa: dict | None) -> str | None:
    """BIDS PhaseEncodingDirection in the Volume's voxel axes (Siemens CSA only)."""
    if csa is None:
        return None
    positive = csareader.get_scalar(csa, "PhaseEncodingDirectionPositive")
    direction = str(ds.get("InPlanePhaseEncodingDirection", "") or "").upper()
    if positive not in (0, 1) or direction not in ("ROW", "COL"):
        return None
    if direction == "ROW":  # along i, which runs like the DICOM column index
        return "i" if positive == 1 else "i-"
    return "j-" if positive == 1 else "j"  # j runs against the DICOM row index


def _scaled(ds: Dataset, raw: np.ndarray) -> np.ndarray:
    slope = _number(ds, "RescaleSlope")
    intercept = _number(ds, "RescaleIntercept")
    data = raw.astype(np.float64)
    if slope is not None and slope != 1:
        data *= slope
    if intercept:
        data += intercept
    return data.astype(np.float32)


def _pixels(f: _File) -> np.ndarray:
    try:
        with captured_warnings(f.name):
            return f.ds.pixel_array
    except Exception as err:  # noqa: BLE001 - decoders raise many types
        raise IngestError(f"{f.name}: cannot decode the pixel data "
                          f"({describe_error(err)}).") from None


# --------------------------------------------------------------------------------------------
# geometry: (row, column, slice) + LPS affine -> dcm2niix voxel layout + RAS+ affine
# --------------------------------------------------------------------------------------------
def _to_volume_layout(data_rcs: np.ndarray, affine_lps: np.ndarray,
                      normal: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Re-lay a (rows, columns, slices) array and its LPS affine out like dcm2niix does.

    Returns the (columns, rows reversed, slices) array, its RAS+ affine and whether the slice
    order was reversed so that ``k`` runs along ``normal``.
    """
    n_rows = data_rcs.shape[0]
    # new (i, j, k) -> old (row = n_rows - 1 - j, column = i, slice = k)
    swap = np.array([[0.0, -1.0, 0.0, n_rows - 1.0],
                     [1.0, 0.0, 0.0, 0.0],
                     [0.0, 0.0, 1.0, 0.0],
                     [0.0, 0.0, 0.0, 1.0]])
    data = data_rcs[::-1, :, :].transpose(1, 0, 2)
    affine = affine_lps @ swap
    reverse = data.shape[2] > 1 and float(affine[:3, 2] @ normal) < 0
    if reverse:
        n_slices = data.shape[2]
        flip = np.diag([1.0, 1.0, -1.0, 1.0])
        flip[2, 3] = n_slices - 1.0
        data = data[:, :, ::-1]
        affine = affine @ flip
    return np.ascontiguousarray(data), _LPS_TO_RAS @ affine, reverse


def _orientation(ds: Dataset, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine, column cosine and (row x column) normal from ImageOrientationPatient."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        raise IngestError(f"{name}: no valid ImageOrientationPatient: cannot place the image.")
    iop = np.asarray([float(v) for v in iop])
    row, col = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3
            and abs(row @ col) < 1e-3):
        raise IngestError(f"{name}: ImageOrientationPatient is not two orthogonal unit "
                          f"vectors.")
    return row, col, np.cross(row, col)


def _pixel_spacing(ds: Dataset, name: str) -> np.ndarray:
    spacing = ds.get("PixelSpacing")
    if spacing is None or len(spacing) != 2 or min(float(v) for v in spacing) <= 0:
        raise IngestError(f"{name}: no valid PixelSpacing: cannot scale the image.")
    return np.asarray([float(v) for v in spacing])


# --------------------------------------------------------------------------------------------
# mosaics
# --------------------------------------------------------------------------------------------
def _mosaic_wrapper(f: _File, csa: dict) -> Any:
    try:
        with captured_warnings(f.name):
            return dicomwrappers.MosaicWrapper(f.ds, csa)
    except Exception as err:  # noqa: BLE001
        raise IngestError(f"{f.name}: unreadable Siemens mosaic ({describe_error(err)}).") \
            from None


def _mosaic_volume(f: _File, csa: dict) -> Volume:
    name, ds = f.name, f.ds
    wrapper = _mosaic_wrapper(f, csa)
    try:
        with captured_warnings(name):
            raw = wrapper.get_unscaled_data()
            affine_lps = np.asarray(wrapper.affine, dtype=np.float64)
            n_slices = int(wrapper.n_mosaic)
    except Exception as err:  # noqa: BLE001
        raise IngestError(f"{name}: cannot un-tile the Siemens mosaic "
                          f"({describe_error(err)}).") from None
    if raw.ndim != 3 or raw.shape[2] != n_slices:
        raise IngestError(f"{name}: mosaic un-tiled to shape {raw.shape}, expected "
                          f"{n_slices} slices.")
    _, _, normal = _orientation(ds, name)
    data, affine, reversed_ = _to_volume_layout(_scaled(ds, raw), affine_lps, normal)
    header = _header(ds, "dicom-mosaic")
    header["NumberOfSlices"] = n_slices
    header["MosaicTiles"] = int(wrapper.mosaic_size)
    times = csa.get("tags", {}).get("MosaicRefAcqTimes", {}).get("items", [])
    if len(times) == n_slices:
        timing = [round(float(t) / 1000.0, 6) for t in times]  # ms -> s
        header["SliceTiming"] = timing[::-1] if reversed_ else timing
    phase = _phase_encoding(ds, csa)
    if phase is not None:
        header["PhaseEncodingDirection"] = phase
    index = _mosaic_index(ds, name)
    logger.debug("%s: Siemens mosaic, volume %d, %d slices, shape %s", name, index, n_slices,
                 data.shape)
    return Volume(data=data, affine=affine, index=index,
                  acquisition_time=_tm_seconds(ds.get("AcquisitionTime")), tr=_tr_seconds(ds),
                  source=name, series=_series_key(ds), header=header)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def _n_frames(ds: Dataset) -> int:
    value = _number(ds, "NumberOfFrames", int)
    return value if value is not None and value > 0 else 1


def _kind(f: _File) -> tuple[str, dict | None]:
    """('mosaic' | 'slice', CSA header) of a checked file; multi-frame raises."""
    ds = f.ds
    csa = _csa(ds, f.name) if _manufacturer(ds).startswith("SIEMENS") or \
        "MOSAIC" in [str(v).upper() for v in ds.get("ImageType", [])] else None
    if csa is not None and csareader.is_mosaic(csa):
        return "mosaic", csa
    frames = _n_frames(ds)
    if frames > 1:
        raise IngestError(f"{f.name}: multi-frame (enhanced) DICOM with {frames} frames is not "
                          f"supported; export Siemens mosaics or one file per slice.")
    return "slice", csa


def probe_dicom(path: str | os.PathLike) -> FileInfo:
    """Header-only look at one DICOM file (see :func:`rtfb.ingest.read.probe`)."""
    with reading(Path(path).name):
        return _probe_dicom(path)


def _probe_dicom(path: str | os.PathLike) -> FileInfo:
    f = _load(path, header_only=True)
    _check_image(f, header_only=True)
    kind, _ = _kind(f)
    ds, name = f.ds, f.name
    series = _series_key(ds)
    number = _number(ds, "SeriesNumber", int)
    ident = dict(study_uid=ds.get("StudyInstanceUID") or None,
                 series_uid=ds.get("SeriesInstanceUID") or None,
                 series_number=None if number is None else str(number))
    ident = {k: (None if v is None else str(v)) for k, v in ident.items()}
    if kind == "mosaic":
        return FileInfo(f.path, "volume", series, _mosaic_index(ds, name), **ident)
    n_slices = _slices_per_volume(ds)
    if n_slices is None:
        raise IngestError(f"{name}: single-slice DICOM without ImagesInAcquisition (or GE "
                          f"LocationsInAcquisition): cannot tell how many slice files make up "
                          f"a volume.")
    index, part = _slice_index_and_part(ds, n_slices, name)
    if n_slices == 1:
        return FileInfo(f.path, "volume", series, index, **ident)
    return FileInfo(f.path, "slice", series, index, n_parts=n_slices, part=part, **ident)


def read_dicom(path: str | os.PathLike) -> Volume:
    """Read a whole-volume DICOM file: a Siemens mosaic (or a one-slice volume).

    Parameters
    ----------
    path : str | path-like
        DICOM file, with or without extension or 'DICM' preamble.

    Returns
    -------
    Volume
        ``index`` is AcquisitionNumber - 1 (InstanceNumber - 1 if absent).

    Raises
    ------
    IncompleteFileError
        The file is shorter than its header says (still being written).
    IngestError
        Not DICOM, not an image, multi-frame, or one slice of a multi-slice volume (read those
        with :func:`read_dicom_slices`).
    """
    f = _load(path, header_only=False)
    _check_image(f, header_only=False)
    kind, csa = _kind(f)
    if kind == "mosaic":
        return _mosaic_volume(f, csa)
    n_slices = _slices_per_volume(f.ds)
    if n_slices == 1:
        return _stack([f], n_slices=1)
    if n_slices is None:
        raise IngestError(f"{f.name}: a single-slice DICOM file without slices-per-volume "
                          f"information; read the slice files of one volume together with "
                          f"read_dicom_slices().")
    index, part = _slice_index_and_part(f.ds, n_slices, f.name)
    raise IngestError(f"{f.name}: slice {part} of {n_slices} of volume {index}, not a whole "
                      f"volume; read the {n_slices} slice files together with "
                      f"read_dicom_slices().")


def read_dicom_slices(paths: Iterable[str | os.PathLike]) -> Volume:
    """Assemble one volume from its single-slice DICOM files (GE and other vendors).

    Slices are ordered by their position along the slice normal (ImagePositionPatient
    projected on the cross product of the ImageOrientationPatient row and column cosines),
    whatever the order of ``paths`` or of their InstanceNumbers.

    Parameters
    ----------
    paths : iterable of str | path-like
        All slice files of one volume.

    Returns
    -------
    Volume
        Voxel layout as dcm2niix (see the module notes); ``acquisition_time`` is the earliest
        AcquisitionTime of the slices; ``index`` as :func:`rtfb.ingest.read.probe` gives it.

    Raises
    ------
    IncompleteFileError
        A slice file is shorter than its header says.
    IngestError
        A file is not a single-slice DICOM image, or the slices do not form one regular stack:
        different series, volumes, sizes, pixel spacings or orientations, a count different
        from the header's slices per volume, two slices at one position, uneven spacing (a
        missing slice) or positions not along the slice normal.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_dicom_slices needs at least one slice file, got none.")
    with reading(paths[0].name):
        return _read_dicom_slices(paths)


def _read_dicom_slices(paths: list[Path]) -> Volume:
    files = []
    for path in paths:
        f = _load(path, header_only=False)
        _check_image(f, header_only=False)
        kind, _ = _kind(f)
        if kind == "mosaic":
            raise IngestError(f"{f.name}: a Siemens mosaic holds a whole volume; read it with "
                              f"read_volume(), not read_dicom_slices().")
        files.append(f)
    header_slices = _slices_per_volume(files[0].ds)
    if header_slices is not None and header_slices != len(files):
        raise IngestError(f"{_names(files)}: {len(files)} slice file(s) given, the header "
                          f"says {header_slices} slices per volume.")
    return _stack(files, n_slices=len(files))


def _names(files: Sequence[_File], limit: int = 3) -> str:
    names = [f.name for f in files[:limit]]
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return ", ".join(names) + more


def _stack(files: list[_File], n_slices: int) -> Volume:
    first = files[0]
    name = first.name
    row, col, normal = _orientation(first.ds, name)
    spacing = _pixel_spacing(first.ds, name)
    shape = (int(first.ds.Rows), int(first.ds.Columns))
    series_uid = first.ds.get("SeriesInstanceUID")
    indices = set()
    positions = []
    for f in files:
        ds = f.ds
        if ds.get("SeriesInstanceUID") != series_uid:
            raise IngestError(f"{first.name} and {f.name}: slices of different series.")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise IngestError(f"{first.name} and {f.name}: different slice sizes "
                              f"{shape[0]}x{shape[1]} and {int(ds.Rows)}x{int(ds.Columns)}.")
        if not np.allclose(_pixel_spacing(ds, f.name), spacing, rtol=_STACK_RTOL):
            raise IngestError(f"{first.name} and {f.name}: different pixel spacings.")
        f_row, f_col, _ = _orientation(ds, f.name)
        if not (np.allclose(f_row, row, atol=1e-4) and np.allclose(f_col, col, atol=1e-4)):
            raise IngestError(f"{first.name} and {f.name}: different slice orientations "
                              f"(ImageOrientationPatient).")
        ipp = ds.get("ImagePositionPatient")
        if ipp is None or len(ipp) != 3:
            raise IngestError(f"{f.name}: no valid ImagePositionPatient: cannot place the "
                              f"slice.")
        positions.append([float(v) for v in ipp])
        indices.add(_slice_index_and_part(ds, n_slices, f.name)[0])
    if len(indices) > 1:
        raise IngestError(f"{_names(files)}: slices of different volumes "
                          f"{sorted(indices)}; give the slice files of one volume.")
    positions = np.asarray(positions)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files = [files[i] for i in order]
    positions, along = positions[order], along[order]
    step = _check_spacing(files, positions, along, normal)
    raws = [_scaled(f.ds, _pixels(f)) for f in files]
    if any(r.shape != shape for r in raws):
        raise IngestError(f"{_names(files)}: decoded pixel arrays do not have the Rows x "
                          f"Columns shape {shape}.")
    data_rcs = np.stack(raws, axis=-1)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = col * spacing[0]  # next row: along the column cosine
    affine_lps[:3, 1] = row * spacing[1]  # next column: along the row cosine
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    data, affine, _ = _to_volume_layout(data_rcs, affine_lps, normal)
    ds = files[0].ds
    index = indices.pop()
    header = _header(ds, "dicom-slices")
    header["NumberOfSlices"] = len(files)
    header.pop("InstanceNumber", None)
    instances = [_number(f.ds, "InstanceNumber", int) for f in files]
    if None not in instances:
        header["InstanceNumber"] = min(instances)
    phase = _phase_encoding(ds, _csa(ds, name) if _manufacturer(ds).startswith("SIEMENS")
                            else None)
    if phase is not None:
        header["PhaseEncodingDirection"] = phase
    times = [t for t in (_tm_seconds(f.ds.get("AcquisitionTime")) for f in files)
             if t is not None]
    logger.debug("%s: %d DICOM slice file(s), volume %d, shape %s", _names(files), len(files),
                 index, data.shape)
    return Volume(data=data, affine=affine, index=index,
                  acquisition_time=min(times) if times else None, tr=_tr_seconds(ds),
                  source=files[0].name, series=_series_key(ds), header=header)


def _check_spacing(files: list[_File], positions: np.ndarray, along: np.ndarray,
                   normal: np.ndarray) -> np.ndarray:
    """Step vector between sorted slices after checking the stack is regular (LPS mm)."""
    ds = files[0].ds
    if len(files) == 1:
        thickness = _number(ds, "SpacingBetweenSlices") or _number(ds, "SliceThickness")
        return normal * (thickness if thickness and thickness > 0 else 1.0)
    gaps = np.diff(along)
    if gaps.min() <= 1e-3:
        i = int(np.argmin(gaps))
        raise IngestError(f"{files[i].name} and {files[i + 1].name}: two slices at the same "
                          f"position (duplicate slice, or slices of two volumes).")
    median = float(np.median(gaps))
    if np.abs(gaps - median).max() > _STACK_RTOL * median:
        raise IngestError(f"{_names(files)}: uneven slice spacing (from {gaps.min():.3f} to "
                          f"{gaps.max():.3f} mm along the slice normal): a slice is missing "
                          f"or the files are not one stack.")
    steps = np.diff(positions, axis=0)
    off_axis = steps - np.outer(gaps, normal)
    if np.linalg.norm(off_axis, axis=1).max() > _STACK_RTOL * median:
        raise IngestError(f"{_names(files)}: slice positions do not follow the slice normal "
                          f"(tilted or sheared stack): not supported.")
    return (positions[-1] - positions[0]) / (len(files) - 1)
