"""Single-slice DICOM series (GE and others: one file per slice): stacking the slice files of one
volume by their position along the slice normal, after checking that they form one regular stack.

Slices are read ahead: the probe of a complete slice file (what the watcher does as each slice
arrives) reads, decodes, scales and reads it out (:func:`preload_slice`), so that stacking
the volume when its last slice lands is numpy work on arrays already there. A slice that is
incomplete, or that changed since it was read ahead (size or mtime), is read again then.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ..exceptions import IngestError
from ._dicom_common import (
    _check_image,
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
    _regular_step,
    _scaled,
    _series_key,
    _tm_seconds,
    _to_volume_layout,
    _tr_seconds,
)
from ._files import file_name, reading, source_name
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


@dataclass(frozen=True)
class _Numbers:
    """The numbering tags of one single-slice file (see :func:`_slice_index_and_part`)."""

    instance: int | None
    temporal: int | None
    acquisition: int | None
    siemens: bool
    in_stack: int | None  # InStackPositionNumber, else the Philips private slice number


def _numbers(ds: Dataset) -> _Numbers:
    in_stack = _positive_int(ds, "InStackPositionNumber")
    if in_stack is None and _manufacturer(ds).startswith("PHILIPS"):
        value = _private_value(ds, 0x2001, "Philips Imaging DD 001", 0x0A)
        try:
            in_stack = int(value) if value is not None and int(value) >= 1 else None
        except (TypeError, ValueError):
            in_stack = None
    return _Numbers(_positive_int(ds, "InstanceNumber"),
                    _positive_int(ds, "TemporalPositionIdentifier"),
                    _positive_int(ds, "AcquisitionNumber"),
                    _manufacturer(ds).startswith("SIEMENS"), in_stack)


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
    return _index_and_part(_numbers(ds), n_slices, name)


def _index_and_part(numbers: _Numbers, n_slices: int | None, name: str) -> tuple[int, int]:
    """:func:`_slice_index_and_part` from the tags read out by :func:`_numbers`."""
    instance, acquisition = numbers.instance, numbers.acquisition
    if numbers.temporal is not None:
        index = numbers.temporal - 1
    elif (n_slices is None or numbers.siemens) and acquisition is not None:
        index = acquisition - 1
    elif instance is not None and n_slices is not None:
        index = (instance - 1) // n_slices
    else:
        raise IngestError(f"{name}: no TemporalPositionIdentifier or AcquisitionNumber (and no "
                          f"slices-per-volume count with an InstanceNumber): cannot tell which "
                          f"volume the slice belongs to.")
    part = numbers.in_stack
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


@dataclass(eq=False)
class _Slice:
    """What stacking needs of one checked single-slice file, read out of its header once.

    Built when the file arrives (:func:`preload_slice`, called by the watcher's probe), so
    that stacking a volume when its last slice lands costs no pixel decoding and reads the
    header of one slice only (the volume's header fields). A value that :func:`_stack` would
    refuse is kept as the error to raise (``problems``): :func:`_stack` raises it at the
    point where it checks that value, so the errors are the same as when the file is read
    at stacking time.
    """

    name: str
    ds: Dataset  # the header (pixel data dropped once read ahead, see preload_slice)
    csa: dict | None  # Siemens CSA image header, if any
    series_uid: Any
    shape: tuple[int, int]
    row: tuple[float, ...] = ()
    col: tuple[float, ...] = ()
    normal: np.ndarray | None = None
    spacing: tuple[float, ...] = ()
    position: list[float] | None = None
    numbers: _Numbers | None = None
    instance: int | None = None
    time: float | None = None  # AcquisitionTime, seconds after midnight
    data: np.ndarray | None = None  # scaled pixels, (rows, columns) float32
    problems: dict[str, Exception] = field(default_factory=dict)

    def need(self, what: str) -> None:
        """Raise the error found reading ``what`` out of this file, if any."""
        err = self.problems.get(what)
        if err is not None:
            raise err


def _slice_of(f: _File, csa: dict | None) -> _Slice:
    """Read out of a checked single-slice file what :func:`_stack` needs (see :class:`_Slice`).

    ``csa`` is the Siemens CSA image header of the file (:func:`_kind`), or None.
    """
    ds, name = f.ds, f.name
    s = _Slice(name, ds, csa, ds.get("SeriesInstanceUID"), (int(ds.Rows), int(ds.Columns)))

    def attempt(what: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception as err:  # noqa: BLE001 - raised by _stack where it looks at it
            s.problems[what] = err
            return None

    orientation = attempt("orientation", lambda: _orientation(ds, name))
    if orientation is not None:
        s.row, s.col = tuple(orientation[0]), tuple(orientation[1])
        s.normal = orientation[2]
    s.spacing = attempt("spacing", lambda: tuple(_pixel_spacing(ds, name))) or ()
    s.position = attempt("position", lambda: _position(ds, name))
    s.numbers = attempt("numbers", lambda: _numbers(ds))
    s.instance = _number(ds, "InstanceNumber", int)
    s.time = _tm_seconds(ds.get("AcquisitionTime"))
    s.data = attempt("pixels", lambda: _scaled(ds, _pixels(f)))
    return s


def _position(ds: Dataset, name: str) -> list[float]:
    ipp = ds.get("ImagePositionPatient")
    if ipp is None or len(ipp) != 3:
        raise IngestError(f"{name}: no valid ImagePositionPatient: cannot place the slice.")
    return [float(v) for v in ipp]


def _close(a: Sequence[float], b: Sequence[float], rtol: float, atol: float) -> bool:
    """``np.allclose(a, b, rtol, atol)`` for a few floats, without numpy's call overhead."""
    return len(a) == len(b) and all(x == y or abs(x - y) <= atol + rtol * abs(y)
                                    for x, y in zip(a, b, strict=True))


#: Slice files read, decoded and read out ahead (by the watcher's probe, as they arrive), by
#: (path, size, mtime): the volume is then stacked without reading its files again when its
#: last slice lands (see :func:`preload_slice`).
_PRELOADED: OrderedDict[tuple, _Slice] = OrderedDict()
_PRELOADED_MAX = 1024


def _file_key(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns)


def preload_slice(path: str | os.PathLike) -> None:
    """Read, decode and read out a complete slice file now, for :func:`read_dicom_slices`.

    Called by the probe of a slice file: the work of reading a classic series is then spread
    over the slices' arrival, and handing a volume over after its last slice costs the
    stacking only. A file still being written (pixel data shorter than the header says), or
    one that changes while it is read, is left alone: it is read later, checked as usual.
    """
    path = Path(path)
    key = _file_key(path)
    if key is None or key in _PRELOADED:
        return
    try:
        f = _load(path, header_only=False)
        _check_image(f, header_only=False)
        kind, csa = _kind(f)
        if kind != "slice":
            return
        _refuse_tiled(f.ds, f.name)
        entry = _slice_of(f, csa)
        del f.ds.PixelData  # decoded and scaled in the entry: the cache keeps the header only
    except Exception:  # noqa: BLE001 - incomplete or bad: the reader reports it when asked
        return
    if _file_key(path) != key:
        return  # changed while read
    _PRELOADED[key] = entry
    while len(_PRELOADED) > _PRELOADED_MAX:
        _PRELOADED.popitem(last=False)


def _read_dicom_slices(paths: list[Path]) -> Volume:
    slices, keys = [], []
    for path in paths:
        key = _file_key(path)
        entry = _PRELOADED.get(key) if key is not None else None
        if entry is None:
            entry = _read_slice(path)
        slices.append(entry)
        keys.append(key)
    header_slices = _slices_per_volume(slices[0].ds)
    if header_slices is not None and header_slices != len(slices):
        raise IngestError(f"{_names(slices)}: {len(slices)} slice file(s) given, the header "
                          f"says {header_slices} slices per volume.")
    volume = _stack(slices, n_slices=len(slices))
    for key in keys:  # kept until stacked: a slice still being written costs only itself
        _PRELOADED.pop(key, None)
    return volume


def _read_slice(path: Path) -> _Slice:
    f = _load(path, header_only=False)
    _check_image(f, header_only=False)
    kind, csa = _kind(f)
    if kind == "slice":
        _refuse_tiled(f.ds, f.name)
    if kind == "enhanced":
        raise IngestError(f"{f.name}: an enhanced (multi-frame) DICOM file holds whole "
                          f"volumes; read it with read_volume() or iter_volumes(), not "
                          f"read_dicom_slices().")
    if kind == "mosaic":
        raise IngestError(f"{f.name}: a Siemens mosaic holds a whole volume; read it with "
                          f"read_volume(), not read_dicom_slices().")
    return _slice_of(f, csa)


def _names(files: Sequence[_Slice], limit: int = 3) -> str:
    names = [f.name for f in files[:limit]]
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return ", ".join(names) + more


def _stack(slices: list[_Slice], n_slices: int) -> Volume:
    first = slices[0]
    name = first.name
    first.need("orientation")
    first.need("spacing")
    row, col, normal, spacing = first.row, first.col, first.normal, first.spacing
    shape = first.shape
    series_uid = first.series_uid
    indices = set()
    positions = []
    for s in slices:
        if s.series_uid != series_uid:
            raise IngestError(f"{first.name} and {s.name}: slices of different series.")
        if s.shape != shape:
            raise IngestError(f"{first.name} and {s.name}: different slice sizes "
                              f"{shape[0]}x{shape[1]} and {s.shape[0]}x{s.shape[1]}.")
        s.need("spacing")
        if not _close(s.spacing, spacing, _STACK_RTOL, 1e-8):
            raise IngestError(f"{first.name} and {s.name}: different pixel spacings.")
        s.need("orientation")
        if not (_close(s.row, row, 1e-5, 1e-4) and _close(s.col, col, 1e-5, 1e-4)):
            raise IngestError(f"{first.name} and {s.name}: different slice orientations "
                              f"(ImageOrientationPatient).")
        s.need("position")
        positions.append(s.position)
        s.need("numbers")
        indices.add(_index_and_part(s.numbers, n_slices, s.name)[0])
    if len(indices) > 1:
        raise IngestError(f"{_names(slices)}: slices of different volumes "
                          f"{sorted(indices)}; give the slice files of one volume.")
    positions = np.asarray(positions)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    step = _check_spacing(slices, positions, along, normal)
    for s in slices:
        s.need("pixels")
    if any(s.data.shape != shape for s in slices):
        raise IngestError(f"{_names(slices)}: decoded pixel arrays do not have the Rows x "
                          f"Columns shape {shape}.")
    data_rcs = np.stack([s.data for s in slices], axis=-1)
    row, col = np.asarray(row), np.asarray(col)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = col * spacing[0]  # next row: along the column cosine
    affine_lps[:3, 1] = row * spacing[1]  # next column: along the row cosine
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    data, affine, _ = _to_volume_layout(data_rcs, affine_lps, normal)
    ds = slices[0].ds
    index = indices.pop()
    header = _header(ds, "dicom-slices")
    header["NumberOfSlices"] = len(slices)
    header.pop("InstanceNumber", None)
    instances = [s.instance for s in slices]
    if None not in instances:
        header["InstanceNumber"] = min(instances)
    phase = _phase_encoding(ds, slices[0].csa if _manufacturer(ds).startswith("SIEMENS")
                            else None)
    if phase is not None:
        header["PhaseEncodingDirection"] = phase
    times = [s.time for s in slices if s.time is not None]
    if len(times) == len(slices) > 1:  # classic series: each slice stamped (all equal: unknown)
        timing = checked_slice_timing(times, _tr_seconds(ds), name)
        if timing is not None:
            header["SliceTiming"] = timing
    logger.debug("%s: %d DICOM slice file(s), volume %d, shape %s", _names(slices),
                 len(slices), index, data.shape)
    return Volume(data=data, affine=affine, index=index,
                  acquisition_time=min(times) if times else None, tr=_tr_seconds(ds),
                  source=source_name(slices[0].name), series=_series_key(ds), header=header)


def _check_spacing(files: list[_Slice], positions: np.ndarray, along: np.ndarray,
                   normal: np.ndarray) -> np.ndarray:
    """Step vector between sorted slices after checking the stack is regular (LPS mm)."""
    if len(files) == 1:
        ds = files[0].ds
        thickness = _number(ds, "SpacingBetweenSlices") or _number(ds, "SliceThickness")
        return normal * (thickness if thickness and thickness > 0 else 1.0)
    gaps = np.diff(along)
    if gaps.min() <= 1e-3:
        i = int(np.argmin(gaps))
        raise IngestError(f"{files[i].name} and {files[i + 1].name}: two slices at the same "
                          f"position (duplicate slice, or slices of two volumes).")
    return _regular_step(_names(files), positions, gaps, normal, _STACK_RTOL,
                         "a slice is missing or the files are not one stack")
