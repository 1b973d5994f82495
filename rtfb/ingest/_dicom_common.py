"""Shared pieces of the DICOM readers: loading and checking a file, allow-listed header values,
pixel decoding and the dcm2niix voxel layout.

See :mod:`rtfb.ingest.dicom` for the layout and patient-data rules.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..exceptions import IncompleteFileError, IngestError
from ._files import (
    CONVERT_ADVICE,
    captured_warnings,
    check_file,
    describe_error,
    file_name,
    incomplete,
    short_hash,
)

with warnings.catch_warnings():  # nibabel.nicom warns on import that it is experimental
    warnings.simplefilter("ignore")
    from nibabel.nicom import csareader

logger = logging.getLogger("rtfb.ingest")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
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
        with captured_warnings(file_name(path)):
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
        with captured_warnings(file_name(path)), open(path, "rb") as fobj:
            head = fobj.read(132)
            fobj.seek(0)
            ds = pydicom.dcmread(fobj, force=True, stop_before_pixels=header_only)
            at = fobj.tell()
            size = os.fstat(fobj.fileno()).st_size
    except OSError as err:
        raise IngestError(f"{file_name(path)}: cannot read the file ({err.strerror}).") from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on bad input
        raise IngestError(f"{file_name(path)}: not a readable DICOM file "
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
            raise IngestError(f"{name}: float pixel data DICOM is not supported; "
                              f"{CONVERT_ADVICE}.")
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


def _split_series_number(ds: Dataset) -> int | None:
    """SeriesNumber of the run, undoing Siemens XA interoperability numbering.

    XA exports in interoperability mode ("MFSPLIT" in ImageType) give every volume of a run
    its own series: SeriesNumber = 1000 x run series + volume (8001, 8002, ...) and a new
    SeriesInstanceUID; dcm2niix stacks them as one run, and so does rtfb (series 8).
    """
    number = _number(ds, "SeriesNumber", int)
    if number is None:
        return None
    image_type = [str(v).upper() for v in ds.get("ImageType", []) or []]
    if "MFSPLIT" in image_type and number >= 1000:
        return number // 1000
    return number


def _is_split(ds: Dataset) -> bool:
    number = _number(ds, "SeriesNumber", int)
    return number is not None and _split_series_number(ds) != number


def _series_key(ds: Dataset) -> str | None:
    number = _split_series_number(ds)
    if number is not None:
        return str(number)
    uid = ds.get("SeriesInstanceUID")
    return short_hash(str(uid), "uid-") if uid else None


def lock_fields(ds: Dataset) -> dict[str, str | None]:
    """``FileInfo`` identity fields for the series lock (:mod:`rtfb.ingest.series_lock`).

    Raw ``study_uid`` and ``series_uid`` (compared in memory, never written) and the run's
    ``series_number`` as text; ``series_uid`` is None for XA interoperability exports, whose
    every volume has its own (see :func:`_split_series_number`).
    """
    def text(value: Any) -> str | None:
        return str(value).strip() or None if value is not None else None

    number = _split_series_number(ds)
    return {"study_uid": text(ds.get("StudyInstanceUID")),
            "series_uid": None if _is_split(ds) else text(ds.get("SeriesInstanceUID")),
            "series_number": None if number is None else str(number)}


def series_identity(ds: Dataset) -> dict[str, Any]:
    """What identifies the run a file belongs to, without patient data.

    ``SeriesNumber`` (of the run, see :func:`_split_series_number`), and short hashes of
    ``StudyInstanceUID`` and ``SeriesInstanceUID`` (``None`` where absent, and the series
    UID ``None`` for XA interoperability exports, whose every volume has its own).
    """
    def hashed(keyword: str) -> str | None:
        uid = ds.get(keyword)
        return short_hash(str(uid), "uid-") if uid else None

    return {"SeriesNumber": _split_series_number(ds),
            "SeriesInstanceUID": None if _is_split(ds) else hashed("SeriesInstanceUID"),
            "StudyInstanceUID": hashed("StudyInstanceUID")}


def _manufacturer(ds: Dataset) -> str:
    return str(ds.get("Manufacturer", "") or "").upper()



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
    for keyword in ("AcquisitionNumber", "InstanceNumber"):
        value = _number(ds, keyword, int)
        if value is not None:
            header[keyword] = value
    identity = series_identity(ds)
    if identity["SeriesNumber"] is not None:
        header["SeriesNumber"] = identity["SeriesNumber"]
    for keyword, key in (("SeriesInstanceUID", "SeriesUIDHash"),
                         ("StudyInstanceUID", "StudyUIDHash")):
        if identity[keyword] is not None:
            header[key] = identity[keyword]
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
    if _manufacturer(ds).startswith("PHILIPS"):
        scale = _philips_scale(ds, ds)
        if scale is not None:  # (RS * PV + RI) / (RS * SS), as dcm2niix
            rs = slope if slope else 1.0
            return ((data * rs + (intercept or 0.0)) / (rs * scale)).astype(np.float32)
    if slope is not None and slope != 1:
        data *= slope
    if intercept:
        data += intercept
    return data.astype(np.float32)


def _philips_scale(frame: Dataset, ds: Dataset) -> float | None:
    """Philips private MR scale slope (2005,100E) of a frame (else of the file), if any.

    dcm2niix's default Philips scaling ("precise" floating point values) divides the
    displayed value RescaleSlope * stored + RescaleIntercept by RescaleSlope * this slope.
    """
    private = frame.get((0x2005, 0x140F))
    sources = ([private.value[0]] if private is not None and private.VR == "SQ"
               and len(private.value) else []) + [ds]
    for source in sources:
        element = source.get((0x2005, 0x100E))
        if element is not None:
            try:
                value = float(element.value)
            except (TypeError, ValueError):
                continue
            if np.isfinite(value) and value > 0:
                return value
    return None


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


def _regular_step(label: str, positions: np.ndarray, gaps: np.ndarray, normal: np.ndarray,
                  rtol: float, uneven: str) -> np.ndarray:
    """LPS step between consecutive slices of a stack, after checking that it is regular.

    ``positions`` (n x 3, LPS mm) are the slices in order along the unit ``normal`` and
    ``gaps`` (n - 1) the distances between consecutive slices along it. The gaps must all be
    within ``rtol`` of their median, and each step must follow the normal (no tilt or shear)
    to within ``rtol`` of the median gap. Errors name ``label``; an uneven spacing ends with
    ``uneven`` (what it means for this reader).
    """
    median = float(np.median(gaps))
    if np.abs(gaps - median).max() > rtol * median:
        raise IngestError(f"{label}: uneven slice spacing (from {gaps.min():.3f} to "
                          f"{gaps.max():.3f} mm along the slice normal): {uneven}.")
    steps = np.diff(positions, axis=0)
    off_axis = steps - np.outer(gaps, normal)
    if np.linalg.norm(off_axis, axis=1).max() > rtol * median:
        raise IngestError(f"{label}: slice positions do not follow the slice normal (tilted "
                          f"or sheared stack): not supported; {CONVERT_ADVICE}.")
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def _n_frames(ds: Dataset) -> int:
    value = _number(ds, "NumberOfFrames", int)
    return value if value is not None and value > 0 else 1


def _kind(f: _File) -> tuple[str, dict | None]:
    """('mosaic' | 'enhanced' | 'slice', CSA header) of a checked file ('enhanced': several
    frames that are not a mosaic).
    """
    ds = f.ds
    csa = _csa(ds, f.name) if _manufacturer(ds).startswith("SIEMENS") or \
        "MOSAIC" in [str(v).upper() for v in ds.get("ImageType", [])] else None
    if csa is not None and csareader.is_mosaic(csa):
        return "mosaic", csa
    if _n_frames(ds) > 1:
        return "enhanced", csa
    return "slice", csa


def _refuse_tiled(ds: Dataset, name: str) -> None:
    """Tiled (mosaic) images without a Siemens CSA mosaic header (UIH, Siemens XA secondary
    capture mosaics): no reader here; say what works instead.
    """
    image_type = [str(v).upper() for v in ds.get("ImageType", []) or []]
    if "MOSAIC" in image_type or "VFRAME" in image_type:
        vendor = "UIH " if _manufacturer(ds).startswith("UIH") else ""
        raise IngestError(f"{name}: {vendor}tiled (mosaic) DICOM without a Siemens CSA mosaic "
                          f"header is not supported; export the run as enhanced or single-slice "
                          f"DICOM, or {CONVERT_ADVICE}.")
