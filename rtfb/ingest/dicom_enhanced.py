"""Enhanced (multi-frame) DICOM: Siemens XA, Philips and Canon Enhanced MR Image Storage.

One file holds many frames (2D images); the per-frame functional groups (falling back on the
shared functional groups) say where each frame is and how to scale it:

* Plane Position / Plane Orientation: ImagePositionPatient and ImageOrientationPatient of the
  frame; frames are put into slices by their position along the slice normal;
* Pixel Measures: PixelSpacing (and SliceThickness);
* Pixel Value Transformation: RescaleSlope / RescaleIntercept, applied per frame;
* Frame Content: DimensionIndexValues (whose order the DimensionIndexSequence gives),
  TemporalPositionIndex, StackID, InStackPositionNumber and FrameAcquisitionDateTime.

Frames are grouped into volumes as dcm2niix does: the number of distinct slice positions is
the number of slices per volume; at each position the frames are ranked by their non-spatial
dimension indices (temporal position, echo, label type, ... in the DimensionIndexSequence's
order of significance; frame order if there are none), and the ``v``-th frame of every
position makes volume ``v``. Siemens XA writes one file per volume; Philips and Canon may
write the whole series into one file (read with :func:`rtfb.ingest.read.iter_volumes`).

pydicom decodes the pixels (all frames at once, any transfer syntax it has a handler for);
nibabel's ``MultiframeWrapper`` was tried first and kept out: it rejects the Canon file
("Non-singular index precedes the slice index") and returns the Philips pCASL file as 5D.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from ..exceptions import IngestError
from ._dicom_common import (
    _File,
    _header,
    _manufacturer,
    _number,
    _philips_scale,
    _pixels,
    _positive_int,
    _regular_step,
    _series_key,
    _tm_seconds,
    _to_volume_layout,
)
from ._files import source_name
from ._timing import checked_slice_timing
from .volume import Volume

logger = logging.getLogger("rtfb.ingest")

__all__ = ["enhanced_volumes", "frame_table"]

#: Whether per-frame positions and frame content are read from their raw bytes when they are
#: plain explicit VR little endian items (:func:`_raw_first_item`); False: always pydicom.
_FAST = True
#: Positions closer than this along the slice normal (mm) are one slice.
_SAME_POSITION_MM = 0.01
#: Relative tolerance on slice spacing, pixel spacing and direction cosines.
_RTOL = 0.01
_SPATIAL_DIMENSIONS = {Tag("StackID"), Tag("InStackPositionNumber"),
                       Tag("ImagePositionPatient")}


@dataclass
class FrameTable:
    """Where each frame of an enhanced file goes, read from the functional groups.

    ``order[v, k]`` is the frame number of slice ``k`` (along the slice normal, ascending) of
    volume ``v``.
    """

    order: np.ndarray  # (n_volumes, n_slices) frame numbers
    positions: np.ndarray  # (n_frames, 3) ImagePositionPatient, LPS mm
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    spacing: np.ndarray  # (row spacing, column spacing) mm
    slope: np.ndarray  # (n_frames,)
    intercept: np.ndarray  # (n_frames,)
    times: np.ndarray | None  # (n_frames,) FrameAcquisitionDateTime, s after the first day
    step: np.ndarray  # LPS step between slices

    @property
    def n_volumes(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_slices(self) -> int:
        return int(self.order.shape[1])


def _item(seq_owner: Dataset | None, keyword: str) -> Dataset | None:
    if seq_owner is None:
        return None
    seq = seq_owner.get(keyword)
    if seq is None or len(seq) == 0:
        return None
    return seq[0]


def _group(frame: Dataset, shared: Dataset | None, keyword: str) -> Dataset | None:
    """First item of a functional group sequence, per frame if present, else shared."""
    found = _item(frame, keyword)
    return found if found is not None else _item(shared, keyword)


_TAGS = {keyword: Tag(keyword) for keyword in (
    "PlaneOrientationSequence", "PixelMeasuresSequence", "PixelValueTransformationSequence")}


def _memo_group(frame: Dataset, shared: Dataset | None, keyword: str, parse: Any,
                memo: dict) -> Any:
    """``parse(item)`` of a functional group, parsed once per distinct encoding.

    Siemens XA repeats the same orientation, pixel measures and scaling in every frame's
    group: an element still raw (not yet decoded by pydicom, :meth:`Dataset.get_item`) whose
    bytes were seen before gives the value parsed then, without decoding the sequence again
    (most of an enhanced file's read time otherwise).
    """
    tag = _TAGS[keyword]
    element = frame.get_item(tag) if tag in frame else None
    if element is None:
        key = ("shared", keyword)
        if key not in memo:
            memo[key] = parse(_item(shared, keyword))
        return memo[key]
    raw = element.value if isinstance(element, RawDataElement) else None
    key = (keyword, raw)
    if raw is not None and key in memo:
        return memo[key]
    value = parse(_group(frame, shared, keyword))
    if raw is not None:
        memo[key] = value
    return value


# -- fast path: the two groups that differ per frame ----------------------------------------
#: Elements read from the raw bytes of a per-frame Plane Position or Frame Content item:
#: tag -> (keyword, VR).
_FAST_ELEMENTS = {0x00200032: ("ImagePositionPatient", b"DS"),
                  0x00189074: ("FrameAcquisitionDateTime", b"DT"),
                  0x00209157: ("DimensionIndexValues", b"UL"),
                  0x00209128: ("TemporalPositionIndex", b"UL")}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_FAST_TAGS = {keyword: Tag(keyword) for keyword in ("PlanePositionSequence",
                                                    "FrameContentSequence")}


class _RawItem:
    """The few values read from one sequence item's bytes (explicit VR little endian)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self._values


def _raw_first_item(raw: bytes) -> _RawItem | None:
    """Decode the first item of a sequence value, or None if it is not a plain explicit VR
    little endian item of simple elements (then pydicom decodes it).

    pydicom decodes each small per-frame sequence through its general reader (about 0.2 ms
    each on a quiet machine, two per frame): the frame table of a 36-frame file took most of
    the read time. Only :data:`_FAST_ELEMENTS` are kept; any other VR, a nested sequence or an
    undefined element length gives None. Tests compare the result with pydicom's.
    """
    try:
        if struct.unpack_from("<HHI", raw, 0)[:2] != (0xFFFE, 0xE000):
            return None
        length = struct.unpack_from("<I", raw, 4)[0]
        end = len(raw) if length == 0xFFFFFFFF else min(len(raw), 8 + length)
        pos, values = 8, {}
        while pos + 8 <= end:
            group, element = struct.unpack_from("<HH", raw, pos)
            if group == 0xFFFE:
                break  # item delimiter
            vr = raw[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                if vr == b"SQ":
                    return None
                size, start = struct.unpack_from("<I", raw, pos + 8)[0], pos + 12
            elif vr.isalpha() and vr.isupper():
                size, start = struct.unpack_from("<H", raw, pos + 6)[0], pos + 8
            else:
                return None  # not explicit VR
            if size == 0xFFFFFFFF or start + size > len(raw):
                return None
            known = _FAST_ELEMENTS.get((group << 16) | element)
            if known is not None:
                keyword, expected = known
                if vr != expected:
                    return None
                value = raw[start:start + size]
                if vr == b"UL":
                    numbers = list(struct.unpack(f"<{size // 4}I", value[:size - size % 4]))
                    values[keyword] = numbers if keyword == "DimensionIndexValues" else (
                        numbers[0] if numbers else None)
                else:
                    text = value.decode("ascii").strip(" \x00")
                    values[keyword] = text.split("\\") if vr == b"DS" else text
            pos = start + size
        return _RawItem(values)
    except (struct.error, UnicodeDecodeError):
        return None


def _fast_item(frame: Dataset, keyword: str) -> _RawItem | None:
    tag = _FAST_TAGS[keyword]
    if tag not in frame:
        return None
    element = frame.get_item(tag)
    if not isinstance(element, RawDataElement) or not element.value:
        return None
    return _raw_first_item(element.value)


def _orientation_of(item: Dataset | None) -> list[float] | None:
    return _floats(item.get("ImageOrientationPatient"), 6) if item is not None else None


def _spacing_of(item: Dataset | None) -> list[float] | None:
    return _floats(item.get("PixelSpacing"), 2) if item is not None else None


def _rescale_of(item: Dataset | None) -> tuple[float, float]:
    if item is None:
        return 1.0, 0.0
    value = _number(item, "RescaleSlope")
    return (1.0 if value is None or value == 0 else value,
            _number(item, "RescaleIntercept") or 0.0)


def _floats(value: Any, n: int) -> list[float] | None:
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return values if len(values) == n else None


def _dt_day_seconds(value: Any) -> tuple[int, float] | None:
    """DICOM DT ('YYYYMMDDHHMMSS.FFFFFF') to (day number, seconds after midnight)."""
    text = str(value or "").strip()
    if len(text) < 10 or not text[:8].isdigit():
        return None
    try:
        day = _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal()
    except ValueError:
        return None
    seconds = _tm_seconds(text[8:].split("+")[0].split("-")[0])
    return None if seconds is None else (day, seconds)


def frame_table(ds: Dataset, name: str) -> FrameTable:
    """Read the functional groups of an enhanced DICOM header into a :class:`FrameTable`.

    Raises
    ------
    IngestError
        Missing or inconsistent functional groups (no position or orientation of a frame,
        frames of different orientations or pixel spacings, a number of frames that is not a
        whole number of volumes, uneven slice spacing).
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n_frames = _positive_int(ds, "NumberOfFrames") or 1
    if per_frame is None or len(per_frame) != n_frames:
        raise IngestError(f"{name}: multi-frame DICOM with {n_frames} frames but "
                          f"{0 if per_frame is None else len(per_frame)} per-frame functional "
                          f"groups: not an enhanced image that can be sorted into volumes.")
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    positions = np.empty((n_frames, 3))
    orientations = np.empty((n_frames, 6))
    spacings = np.empty((n_frames, 2))
    slope = np.ones(n_frames)
    intercept = np.zeros(n_frames)
    times = np.full(n_frames, np.nan)
    dims = [Tag(item.DimensionIndexPointer) for item in ds.get("DimensionIndexSequence", [])
            if "DimensionIndexPointer" in item]
    temporal_dims = [i for i, tag in enumerate(dims) if tag not in _SPATIAL_DIMENSIONS]
    keys = np.zeros((n_frames, max(1, len(temporal_dims))), dtype=np.int64)
    philips = _manufacturer(ds).startswith("PHILIPS")
    day0 = None
    memo: dict = {}
    fast = _FAST and getattr(ds, "original_encoding", None) == (False, True)
    for i, frame in enumerate(per_frame):
        position = _fast_item(frame, "PlanePositionSequence") if fast else None
        if position is None:
            position = _group(frame, shared, "PlanePositionSequence")
        ipp = _floats(position.get("ImagePositionPatient"), 3) if position else None
        iop = _memo_group(frame, shared, "PlaneOrientationSequence", _orientation_of, memo)
        ps = _memo_group(frame, shared, "PixelMeasuresSequence", _spacing_of, memo)
        if ipp is None or iop is None or ps is None:
            missing = ("ImagePositionPatient" if ipp is None else
                       "ImageOrientationPatient" if iop is None else "PixelSpacing")
            raise IngestError(f"{name}: frame {i + 1} has no valid {missing} in its "
                              f"functional groups: cannot place it.")
        positions[i], orientations[i], spacings[i] = ipp, iop, ps
        rs, ri = _memo_group(frame, shared, "PixelValueTransformationSequence", _rescale_of,
                             memo)
        scale = _philips_scale(frame, ds) if philips else None
        if scale is None:
            slope[i], intercept[i] = rs, ri
        else:  # (RS * PV + RI) / (RS * SS), as dcm2niix
            slope[i], intercept[i] = 1.0 / scale, ri / (rs * scale)
        content = _fast_item(frame, "FrameContentSequence") if fast else None
        if content is None:
            content = _item(frame, "FrameContentSequence")
        if content is not None:
            t = _dt_day_seconds(content.get("FrameAcquisitionDateTime"))
            if t is not None:
                day0 = t[0] if day0 is None else day0
                times[i] = 86400.0 * (t[0] - day0) + t[1]
            values = content.get("DimensionIndexValues")
            if values is not None and temporal_dims:
                values = list(values) if not isinstance(values, int) else [values]
                if len(values) == len(dims):
                    keys[i] = [int(values[j]) for j in temporal_dims]
            elif not temporal_dims:
                keys[i, 0] = _positive_int(content, "TemporalPositionIndex") or 0
    if not temporal_dims and np.all(keys == keys[0]):
        keys[:, 0] = 0  # no ordering information: frame order decides below
    iop0 = orientations[0]
    if not np.allclose(orientations, iop0, atol=1e-4):
        raise IngestError(f"{name}: frames of different orientations "
                          f"(ImageOrientationPatient): not one stack of slices.")
    if not np.allclose(spacings, spacings[0], rtol=_RTOL):
        raise IngestError(f"{name}: frames of different pixel spacings: not one stack.")
    row, col = iop0[:3], iop0[3:]
    if not (abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3
            and abs(row @ col) < 1e-3):
        raise IngestError(f"{name}: ImageOrientationPatient is not two orthogonal unit "
                          f"vectors.")
    normal = np.cross(row, col)
    along = positions @ normal
    slice_of, centres = _cluster(along)
    n_slices = len(centres)
    if n_frames % n_slices:
        raise IngestError(f"{name}: {n_frames} frames at {n_slices} slice positions: not a "
                          f"whole number of volumes.")
    n_volumes = n_frames // n_slices
    order = np.empty((n_volumes, n_slices), dtype=np.int64)
    for k in range(n_slices):
        at_k = np.flatnonzero(slice_of == k)
        if len(at_k) != n_volumes:
            raise IngestError(f"{name}: {len(at_k)} frame(s) at slice position {k + 1}, "
                              f"expected {n_volumes} (one per volume): frames missing or "
                              f"several stacks.")
        rank = np.lexsort((at_k,) + tuple(keys[at_k, j] for j in
                                          range(keys.shape[1] - 1, -1, -1)))
        order[:, k] = at_k[rank]
    step = _stack_step(name, positions[order[0]], centres, normal)
    return FrameTable(order=order, positions=positions, row=row, col=col, normal=normal,
                      spacing=spacings[0], slope=slope, intercept=intercept,
                      times=None if np.isnan(times).all() else times, step=step)


def _cluster(along: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slice number (ascending along the normal) of each frame, and the slice positions."""
    order = np.argsort(along, kind="stable")
    values = along[order]
    starts = np.concatenate([[True], np.diff(values) > _SAME_POSITION_MM])
    labels_sorted = np.cumsum(starts) - 1
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    centres = values[starts]
    return labels, centres


def _stack_step(name: str, first: np.ndarray, centres: np.ndarray,
                normal: np.ndarray) -> np.ndarray:
    """LPS step between consecutive slices, after checking the stack is regular."""
    if len(centres) == 1:
        return normal.copy()
    return _regular_step(name, first, np.diff(centres), normal, _RTOL,
                         "not one regular stack")


def _enhanced_header(ds: Dataset) -> dict[str, Any]:
    header = _header(ds, "dicom-enhanced")
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    first = per_frame[0] if per_frame else None
    timing = _group(first, shared, "MRTimingAndRelatedParametersSequence") \
        if first is not None else _item(shared, "MRTimingAndRelatedParametersSequence")
    if timing is not None:
        tr = _number(timing, "RepetitionTime")
        if tr is not None and tr > 0:
            header["RepetitionTime"] = tr / 1000.0
        flip = _number(timing, "FlipAngle")
        if flip is not None:
            header["FlipAngle"] = flip
    echo = _group(first, shared, "MREchoSequence") if first is not None else None
    if echo is not None:
        te = _number(echo, "EffectiveEchoTime")
        if te is not None:
            header["EchoTime"] = te / 1000.0
    measures = _group(first, shared, "PixelMeasuresSequence") if first is not None else None
    if measures is not None:
        thickness = _number(measures, "SliceThickness")
        if thickness is not None:
            header["SliceThickness"] = thickness
        spacing = measures.get("PixelSpacing")
        if spacing is not None and len(spacing) == 2:
            header["PixelSpacing"] = [float(v) for v in spacing]
    return header


def _volume_index(ds: Dataset, v: int, n_volumes: int, name: str) -> int:
    """0-based volume index: the file's volume number when it holds one volume, else v."""
    if n_volumes > 1:
        return v
    keywords = ("AcquisitionNumber", "InstanceNumber")
    if not _manufacturer(ds).startswith("SIEMENS"):
        keywords = ("TemporalPositionIdentifier",) + keywords
    for keyword in keywords:
        value = _positive_int(ds, keyword)
        if value is not None:
            return value - 1
    raise IngestError(f"{name}: no AcquisitionNumber or InstanceNumber: cannot tell the "
                      f"volume number.")


#: Frame tables of the last files read, by (path, size, mtime): the watcher probes a file
#: and then reads it; the functional groups (most of the read time) are parsed once.
_TABLES: OrderedDict[tuple, FrameTable] = OrderedDict()
_TABLES_MAX = 8


def _cached_table(f: _File) -> FrameTable:
    try:
        st = os.stat(f.path)
        key = (str(f.path), f.size, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    table = _TABLES.get(key) if key is not None else None
    if table is None:
        table = frame_table(f.ds, f.name)
        if key is not None:
            _TABLES[key] = table
            while len(_TABLES) > _TABLES_MAX:
                _TABLES.popitem(last=False)
    return table


def probe_enhanced(f: _File) -> tuple[int, int]:
    """(index of the first volume, number of volumes) of an enhanced file, header only."""
    table = _cached_table(f)
    return _volume_index(f.ds, 0, table.n_volumes, f.name), table.n_volumes


def enhanced_volumes(f: _File) -> Iterator[Volume]:
    """Yield the volumes of an enhanced multi-frame file, in order (pixels decoded once)."""
    ds, name = f.ds, f.name
    table = _cached_table(f)
    frames = _pixels(f)
    n_frames = table.positions.shape[0]
    if n_frames == 1 and frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or frames.shape[0] != n_frames:
        raise IngestError(f"{name}: decoded pixel data of shape {frames.shape}, expected "
                          f"{n_frames} frames of {int(ds.Rows)}x{int(ds.Columns)}.")
    header = _enhanced_header(ds)
    header["NumberOfSlices"] = table.n_slices
    tr = header.get("RepetitionTime")
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = table.col * table.spacing[0]  # next row: along the column cosine
    affine_lps[:3, 1] = table.row * table.spacing[1]  # next column: along the row cosine
    affine_lps[:3, 2] = table.step
    series = _series_key(ds)
    whole = _tm_seconds(str(ds.get("AcquisitionDateTime", "") or "")[8:] or None)
    uniform = bool(np.all(table.slope == 1.0) and np.all(table.intercept == 0.0))
    for v in range(table.n_volumes):
        picks = table.order[v]
        raw = frames[picks]  # (slices, rows, columns)
        if uniform:
            data = raw.astype(np.float32)
        else:
            data = (raw * table.slope[picks, None, None]
                    + table.intercept[picks, None, None]).astype(np.float32)
        affine_lps[:3, 3] = table.positions[picks[0]]
        data, affine, reversed_ = _to_volume_layout(data.transpose(1, 2, 0), affine_lps,
                                                    table.normal)
        vol_header = dict(header)
        acquisition_time = whole
        if table.times is not None:
            t = table.times[picks]
            if not np.isnan(t).any():
                acquisition_time = float(t.min() % 86400.0)
                timing = checked_slice_timing(t - t.min(), tr, name)
                if timing is not None:
                    vol_header["SliceTiming"] = timing[::-1] if reversed_ else timing
        index = _volume_index(ds, v, table.n_volumes, name)
        logger.debug("%s: enhanced DICOM, volume %d of %d, shape %s", name, v + 1,
                     table.n_volumes, data.shape)
        yield Volume(data=data, affine=affine, index=index, acquisition_time=acquisition_time,
                     tr=tr, source=source_name(name), series=series, header=vol_header)
