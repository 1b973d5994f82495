"""NIfTI-1/2 (``.nii``, ``.nii.gz``) to :class:`~rtfb.ingest.volume.Volume`.

A 3D file (or a 4D file holding one volume) is one Volume (:func:`read_nifti`); a 4D file is a
run, read volume by volume with :func:`iter_nifti_volumes`. Completeness is checked before any
voxel is read: a plain file must be at least ``vox_offset`` + data bytes long, a gzip file must
hold a whole gzip stream that decompresses to that size; otherwise
:class:`~rtfb.exceptions.IncompleteFileError` says how many bytes are expected and present.

Volume numbers
--------------
Files exported one per volume are named ``<anything>_<NNNNN>.nii[.gz]`` or
``<anything>-<NNNNN>.nii[.gz]``, the trailing counter being the **1-based** volume number:
``Volume.index`` is that number - 1 (``func_00001.nii`` is volume 0). Only a zero-padded
number of 3 digits or more, or a number of 4 digits or more, is a counter: a file name without
one (``single.nii``, dcm2niix's ``..._epfid2d1_64.nii.gz``) gives index 0. In a 4D file volume
``t`` (0-based) gets index ``base + t``, ``base`` being the file's own index. The series key
is a short hash of the name before the number (non-identifying, shared by all files of one
export). Slice times coded in the header (slice_code, slice_duration) are kept only when they
are not all zero and lie within [0, TR).

Voxel data are kept in the file's storage order (scaled by ``scl_slope``/``scl_inter``,
float32); the affine is nibabel's (sform, else qform), RAS+ mm (converted to mm when
``xyzt_units`` says metres or microns).
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..exceptions import IncompleteFileError, IngestError
from ._files import (
    captured_warnings,
    check_file,
    describe_error,
    file_name,
    incomplete,
    read_head,
    reading,
    short_hash,
    source_name,
    split_numbered_name,
)
from ._timing import checked_slice_timing
from .fileinfo import FileInfo
from .volume import Volume

logger = logging.getLogger("rtfb.ingest")

__all__ = ["is_nifti", "iter_nifti_volumes", "probe_nifti", "read_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
GZIP_MAGIC = b"\x1f\x8b"
_HEADER_SIZES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_IMAGE_CLASSES = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_SPACE_UNITS = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


def _sizeof_hdr(head: bytes) -> int | None:
    """348 (NIfTI-1) or 540 (NIfTI-2) from the first 4 bytes, either byte order."""
    if len(head) < 4:
        return None
    for order in ("little", "big"):
        value = int.from_bytes(head[:4], order)
        if value in _HEADER_SIZES:
            return value
    return None


def _magic(head: bytes, sizeof_hdr: int) -> bytes:
    return head[344:348] if sizeof_hdr == 348 else head[4:8]


def gzip_peek(path: Path, n_bytes: int) -> tuple[bytes, bool]:
    """First ``n_bytes`` decompressed bytes of a gzip file, and whether the stream is cut.

    The second value is True when the file ends before ``n_bytes`` bytes (or the end of the
    stream) could be decompressed, i.e. the file is still being written.
    """
    out = b""
    try:
        with open(path, "rb") as fobj:
            decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while len(out) < n_bytes and not decomp.eof:
                chunk = fobj.read(65536)
                if not chunk:
                    return out, True
                out += decomp.decompress(chunk, n_bytes - len(out))
                while decomp.unconsumed_tail and len(out) < n_bytes:
                    out += decomp.decompress(decomp.unconsumed_tail, n_bytes - len(out))
    except OSError as err:
        raise IngestError(f"{file_name(path)}: cannot read the file ({err.strerror}).") from None
    except zlib.error as err:
        raise IngestError(f"{file_name(path)}: corrupt gzip data "
                          f"({describe_error(err)}).") from None
    return out[:n_bytes], False


def _gunzip(path: Path) -> tuple[bytes, bool]:
    """Decompress a (possibly still growing) gzip file: (bytes, whether the stream ended).

    Multi-member files are followed; a stream cut short returns what was decompressed.
    """
    try:
        compressed = path.read_bytes()
    except OSError as err:
        raise IngestError(f"{file_name(path)}: cannot read the file ({err.strerror}).") from None
    out = []
    complete = False
    data = compressed
    try:
        while data:
            decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out.append(decomp.decompress(data))
            if not decomp.eof:
                complete = False
                break
            complete = True
            data = decomp.unused_data
    except zlib.error as err:
        raise IngestError(f"{file_name(path)}: corrupt gzip data "
                          f"({describe_error(err)}).") from None
    return b"".join(out), complete


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a single-file NIfTI-1/2 image (plain or gzip), by content."""
    path = Path(path)
    head = read_head(path, 540)
    if head[:2] == GZIP_MAGIC:
        try:
            head, _ = gzip_peek(path, 540)
        except IngestError:
            return False
    sizeof_hdr = _sizeof_hdr(head)
    if sizeof_hdr is None:
        return False
    if len(head) < sizeof_hdr:  # too short to see the magic yet: take sizeof_hdr's word
        return True
    return _magic(head, sizeof_hdr)[:3] in (b"n+1", b"n+2", b"ni1", b"ni2")


@dataclass
class _Opened:
    image: Any  # nibabel Nifti1Image | Nifti2Image
    fmt: str


def _parse_header(name: str, head: bytes, available: int) -> Any:
    sizeof_hdr = _sizeof_hdr(head)
    if sizeof_hdr is None:
        raise IngestError(f"{name}: not a NIfTI-1/2 file (sizeof_hdr is not 348 or 540).")
    if available < sizeof_hdr:
        raise incomplete(name, "the NIfTI header is cut", sizeof_hdr, available)
    magic = _magic(head, sizeof_hdr)
    if magic[:3] in (b"ni1", b"ni2"):
        raise IngestError(f"{name}: NIfTI header of a .hdr/.img pair; only single-file NIfTI "
                          f"(.nii, .nii.gz) is supported.")
    if magic[:3] not in (b"n+1", b"n+2"):
        raise IngestError(f"{name}: not a NIfTI-1/2 file (bad magic string).")
    try:
        with captured_warnings(name):
            return _HEADER_SIZES[sizeof_hdr].from_fileobj(io.BytesIO(head[:sizeof_hdr]),
                                                          check=False)
    except Exception as err:  # noqa: BLE001 - nibabel raises several types on bad headers
        raise IngestError(f"{name}: invalid NIfTI header ({describe_error(err)}).") from None


def _shape(name: str, header: Any) -> tuple[tuple[int, ...], int]:
    """Spatial shape (3 dims) and number of volumes; higher dims must be 1."""
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) < 2 or min(shape) < 1:
        raise IngestError(f"{name}: NIfTI data shape {shape} is not an image.")
    if len(shape) > 4 and any(n != 1 for n in shape[4:]):
        raise IngestError(f"{name}: {len(shape)}D NIfTI (shape {shape}) is not supported; "
                          f"expected 3D or 4D.")
    spatial = shape[:3] if len(shape) >= 3 else shape + (1,)
    n_volumes = shape[3] if len(shape) >= 4 else 1
    return spatial, n_volumes


def _expected_bytes(name: str, header: Any) -> int:
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise IngestError(f"{name}: NIfTI data type {dtype} is not supported (real numbers "
                          f"only).")
    n_voxels = int(np.prod([int(n) for n in header.get_data_shape()], dtype=np.int64))
    return int(header.get_data_offset()) + n_voxels * dtype.itemsize


def _open(path: str | os.PathLike) -> _Opened:
    path = check_file(path)
    name = file_name(path)
    head = read_head(path, 540)
    if head[:2] == GZIP_MAGIC:
        raw, complete = _gunzip(path)
        header = _parse_header(name, raw[:540], len(raw))
        expected = _expected_bytes(name, header)
        if len(raw) < expected:
            what = ("the gzip stream ends early" if not complete
                    else "decompressed data shorter than the header says")
            raise incomplete(name, f"{what} (decompressed size)", expected, len(raw))
        if not complete:
            raise IncompleteFileError(f"{name}: incomplete file: the gzip stream has no end "
                                      f"marker yet (data complete, trailer missing).")
        holder = nib.FileHolder(fileobj=io.BytesIO(raw))
    else:
        size = path.stat().st_size
        header = _parse_header(name, head, size)
        expected = _expected_bytes(name, header)
        if size < expected:
            raise incomplete(name, "shorter than vox_offset + data size", expected, size)
        holder = nib.FileHolder(filename=str(path))
    klass = _IMAGE_CLASSES[header.sizeof_hdr]
    try:
        with captured_warnings(name):
            image = klass.from_file_map({"image": holder}, mmap=False)
    except Exception as err:  # noqa: BLE001
        raise IngestError(f"{name}: unreadable NIfTI ({describe_error(err)}).") from None
    fmt = "nifti1" if header.sizeof_hdr == 348 else "nifti2"
    return _Opened(image, fmt)


def _index_base(name: str) -> tuple[int, str]:
    """(0-based index of the file's first volume, series key) from the file name."""
    prefix, number = split_numbered_name(name, NIFTI_SUFFIXES)
    if number is None:
        return 0, short_hash(prefix, "name-")
    if number < 1:
        raise IngestError(f"{name}: volume number {number} in the file name; numbers are "
                          f"1-based (the first volume is _00001).")
    return number - 1, short_hash(prefix, "name-")


def _tr(header: Any, n_dims: int) -> float | None:
    """TR in seconds from pixdim[4] and the time unit, for files with a time dimension.

    A 3D file (dim[0] = 3) has no TR: its pixdim[4] is unused (often a default 1). An unknown
    time unit is taken as seconds.
    """
    if n_dims < 4:
        return None
    _, time_unit = header.get_xyzt_units()
    value = float(header["pixdim"][4])
    if not np.isfinite(value) or value <= 0:
        return None
    if time_unit in _TIME_UNITS:
        return value * _TIME_UNITS[time_unit]
    return value if time_unit == "unknown" else None


def _affine_mm(header: Any, affine: np.ndarray) -> np.ndarray:
    space_unit, _ = header.get_xyzt_units()
    factor = _SPACE_UNITS.get(space_unit, 1.0)
    if factor != 1.0:
        affine = affine.copy()
        affine[:3, :] *= factor
    return affine


def _slice_timing(header: Any, tr: float | None, name: str) -> list[float] | None:
    """Slice times from the NIfTI header; None if not coded, all zero or not within [0, TR)."""
    try:
        _, _, slice_dim = header.get_dim_info()
        if slice_dim != 2:
            return None
        times = header.get_slice_times()
    except Exception:  # noqa: BLE001 - slice timing is optional and often not coded
        return None
    if times is None or any(t is None for t in times):
        return None
    return checked_slice_timing(times, tr, name)


def _volumes(path: str | os.PathLike, *, single: bool) -> Iterator[Volume]:
    name = file_name(path)
    with reading(name):
        opened = _open(path)
        image = opened.image
        header = image.header
        spatial, n_volumes = _shape(name, header)
        if single and n_volumes > 1:
            raise IngestError(f"{name}: 4D NIfTI holding {n_volumes} volumes; read it with "
                              f"iter_volumes(), read_volume() reads one volume.")
        base, series = _index_base(Path(path).name)
        affine = _affine_mm(header, np.asarray(image.affine, dtype=np.float64))
        if not np.isfinite(affine).all():
            raise IngestError(f"{name}: the NIfTI affine (sform/qform) is not finite.")
        tr = _tr(header, len(header.get_data_shape()))
        info: dict[str, Any] = {"format": opened.fmt, "NumberOfSlices": spatial[2]}
        if tr is not None:
            info["RepetitionTime"] = tr
        timing = _slice_timing(header, tr, name)
        if timing is not None and len(timing) == spatial[2]:
            info["SliceTiming"] = timing
        proxy = image.dataobj
    logger.debug("%s: NIfTI, %d volume(s) from index %d, shape %s", name, n_volumes, base,
                 spatial)
    for t in range(n_volumes):
        try:
            with captured_warnings(name):
                if len(proxy.shape) >= 4:
                    block = proxy[(slice(None),) * 3 + (t,) + (0,) * (len(proxy.shape) - 4)]
                else:
                    block = proxy[...]
                data = np.asarray(block, dtype=np.float32).reshape(spatial)
        except Exception as err:  # noqa: BLE001
            raise IngestError(f"{name}: cannot read volume {t} ({describe_error(err)}).") \
                from None
        yield Volume(data=data, affine=affine, index=base + t, tr=tr, source=source_name(name),
                     series=series, header=info)


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a 3D NIfTI file (or a 4D file holding one volume) as one Volume.

    Parameters
    ----------
    path : str | path-like
        ``.nii`` or ``.nii.gz`` file (recognised by content).

    Returns
    -------
    Volume
        ``index`` from the file name (see the module notes); ``tr`` from pixdim[4] for a 4D
        file (None for a 3D file); ``acquisition_time`` None (NIfTI does not store it).

    Raises
    ------
    IncompleteFileError
        Shorter than its header says, or a gzip stream cut short.
    IngestError
        Not single-file NIfTI, unsupported data type or shape, or several volumes (use
        :func:`iter_nifti_volumes`).
    """
    volumes = _volumes(path, single=True)
    try:
        return next(volumes)
    finally:
        volumes.close()


def iter_nifti_volumes(path: str | os.PathLike) -> Iterator[Volume]:
    """Yield the volumes of a NIfTI file in order (a 3D file yields one).

    The file is opened and checked for completeness before the first volume is yielded;
    volume ``t`` has index ``base + t`` (see the module notes) and ``tr`` from pixdim[4]
    (seconds; an unknown time unit is taken as seconds).
    """
    yield from _volumes(path, single=False)


def probe_nifti(path: str | os.PathLike) -> FileInfo:
    """Header-only look at a NIfTI file (see :func:`rtfb.ingest.read.probe`)."""
    with reading(file_name(path)):
        return _probe_nifti(path)


def _probe_nifti(path: str | os.PathLike) -> FileInfo:
    path = check_file(path)
    head = read_head(path, 540)
    available = path.stat().st_size
    if head[:2] == GZIP_MAGIC:
        head, _ = gzip_peek(path, 540)
        available = len(head)
    header = _parse_header(file_name(path), head, available)
    _, n_volumes = _shape(file_name(path), header)
    base, series = _index_base(path.name)
    return FileInfo(path, "volume", series, base, n_volumes=n_volumes)
