"""Single-slice DICOM series (GE and others: one file per slice): stacking the slice files of one
volume by their position along the slice normal, after checking that they form one regular stack.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..exceptions import IngestError
from ._dicom_common import (
    _check_image,
    _csa,
    _File,
    _header,
    _kind,
    _load,
    _manufacturer,
    _number,
    _orientation,
    _phase_encoding,
    _pixel_spacing,
    _pixels,
    _positive_int,
    _private_value,
    _refuse_tiled,
    _scaled,
    _series_key,
    _tm_seconds,
    _to_volume_layout,
    _tr_seconds,
)
from ._files import CONVERT_ADVICE, file_name, reading, source_name
from ._timing import checked_slice_timing
from .volume import Volume

logger = logging.getLogger("rtfb.ingest")

#: Relative tolerance on slice spacing, pixel spacing and direction cosines of a slice stack.
_STACK_RTOL = 0.01

def _slices_per_volume(ds: Dataset) -> int | None:
    """Slices per volume of a single-slice series, from the header (None if not given).

    GE private LocationsInAcquisition (0021,xx4F), Philips private number of slices
    (2001,xx18), else ImagesInAcquisition. Classic exports without any of them (Siemens XA
    interoperability mode, Siemens E11, Philips without private tags) give None: the watcher
    then learns the count from the first complete volume.
    """
    manufacturer = _manufacturer(ds)
    private = None
    if manufacturer.startswith("GE"):
        private = _private_value(ds, 0x0021, "GEMS_RELA_01", 0x4F)  # LocationsInAcquisition
    elif manufacturer.startswith("PHILIPS"):
        private = _private_value(ds, 0x2001, "Philips Imaging DD 001", 0x18)  # slices
    try:
        if private is not None and int(private) >= 1:
            return int(private)
    except (TypeError, ValueError):
        pass
    return _positive_int(ds, "ImagesInAcquisition")


def _slice_index_and_part(ds: Dataset, n_slices: int | None, name: str) -> tuple[int, int]:
    """0-based volume index and 1-based slice number of one single-slice file.

    Rules, in order: TemporalPositionIdentifier - 1 when present; for Siemens, or when the
    slices per volume are not known, AcquisitionNumber - 1; otherwise (GE real-time and other
    vendors, whose AcquisitionNumber stays 1 over a run) (InstanceNumber - 1) //
    slices-per-volume. The slice number is InStackPositionNumber when present, else the
    Philips private slice number (2001,xx0A), else (InstanceNumber - 1) % slices-per-volume
    + 1, else (slices per volume not known) InstanceNumber: it only tells the slices of one
    volume apart, they are stacked by position.
    """
    instance = _positive_int(ds, "InstanceNumber")
    temporal = _positive_int(ds, "TemporalPositionIdentifier")
    acquisition = _positive_int(ds, "AcquisitionNumber")
    if temporal is not None:
        index = temporal - 1
    elif (n_slices is None or _manufacturer(ds).startswith("SIEMENS")) and \
            acquisition is not None:
        index = acquisition - 1
    elif instance is not None and n_slices is not None:
        index = (instance - 1) // n_slices
    else:
        raise IngestError(f"{name}: no TemporalPositionIdentifier or AcquisitionNumber (and no "
                          f"slices-per-volume count with an InstanceNumber): cannot tell which "
                          f"volume the slice belongs to.")
    part = _positive_int(ds, "InStackPositionNumber")
    if part is None and _manufacturer(ds).startswith("PHILIPS"):
        value = _private_value(ds, 0x2001, "Philips Imaging DD 001", 0x0A)
        try:
            part = int(value) if value is not None and int(value) >= 1 else None
        except (TypeError, ValueError):
            part = None
    if n_slices is None:
        if part is None:
            if instance is None:
                raise IngestError(f"{name}: no InstanceNumber or InStackPositionNumber: "
                                  f"cannot number the slice.")
            part = instance
        return index, part
    if part is None or part > n_slices:
        if instance is None:
            raise IngestError(f"{name}: no InstanceNumber or InStackPositionNumber: cannot "
                              f"number the slice.")
        part = (instance - 1) % n_slices + 1
    return index, part


def slice_position(ds: Dataset) -> float | None:
    """Position of a slice along its normal (mm, LPS), None if the header does not place it."""
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    try:
        iop = np.asarray([float(v) for v in iop])
        ipp = np.asarray([float(v) for v in ipp])
    except (TypeError, ValueError):
        return None
    if iop.shape != (6,) or ipp.shape != (3,):
        return None
    return round(float(ipp @ np.cross(iop[:3], iop[3:])), 4)


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
    with reading(file_name(paths[0])):
        return _read_dicom_slices(paths)


#: Slice files read and decoded ahead (by the watcher's probe, as they arrive), by
#: (path, size, mtime): the volume is then stacked without reading its files again when its
#: last slice lands (see :func:`preload_slice`).
_PRELOADED: OrderedDict[tuple, _File] = OrderedDict()
_PRELOADED_MAX = 1024


def _file_key(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns)


def preload_slice(path: str | os.PathLike) -> None:
    """Read and decode a complete slice file now, for :func:`read_dicom_slices` later.

    Called by the probe of a slice file: the work of reading a classic series is then spread
    over the slices' arrival, and handing a volume over after its last slice costs one file
    and the stacking. A file still being written is left alone (read later as usual).
    """
    path = Path(path)
    key = _file_key(path)
    if key is None or key in _PRELOADED:
        return
    try:
        f = _load(path, header_only=False)
        _check_image(f, header_only=False)
        _pixels(f)  # pydicom keeps the decoded array with the data set
    except IngestError:  # incomplete or bad: the reader reports it when asked
        return
    if _file_key(path) != key:
        return  # changed while read
    _PRELOADED[key] = f
    while len(_PRELOADED) > _PRELOADED_MAX:
        _PRELOADED.popitem(last=False)


def _read_dicom_slices(paths: list[Path]) -> Volume:
    files = []
    for path in paths:
        key = _file_key(path)
        f = _PRELOADED.pop(key, None) if key is not None else None
        if f is None:
            f = _load(path, header_only=False)
            _check_image(f, header_only=False)
        kind, _ = _kind(f)
        if kind == "slice":
            _refuse_tiled(f.ds, f.name)
        if kind == "enhanced":
            raise IngestError(f"{f.name}: an enhanced (multi-frame) DICOM file holds whole "
                              f"volumes; read it with read_volume() or iter_volumes(), not "
                              f"read_dicom_slices().")
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
    if len(times) == len(files) > 1:  # classic series: each slice stamped (all equal: unknown)
        timing = checked_slice_timing(times, _tr_seconds(ds), name)
        if timing is not None:
            header["SliceTiming"] = timing
    logger.debug("%s: %d DICOM slice file(s), volume %d, shape %s", _names(files), len(files),
                 index, data.shape)
    return Volume(data=data, affine=affine, index=index,
                  acquisition_time=min(times) if times else None, tr=_tr_seconds(ds),
                  source=source_name(files[0].name), series=_series_key(ds), header=header)


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
                          f"(tilted or sheared stack): not supported; "
                          f"{CONVERT_ADVICE}.")
    return (positions[-1] - positions[0]) / (len(files) - 1)
