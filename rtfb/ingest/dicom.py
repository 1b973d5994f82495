"""DICOM to :class:`~rtfb.ingest.volume.Volume`: mosaics, enhanced files and slice series.

* **Siemens mosaics** (:mod:`rtfb.ingest.dicom_mosaic`): one file per volume, un-tiled with
  :mod:`nibabel.nicom` and the Siemens CSA header.
* **Enhanced multi-frame DICOM** (:mod:`rtfb.ingest.dicom_enhanced`; Siemens XA, Philips,
  Canon): frames sorted into slices and volumes from the per-frame functional groups; one
  volume per file (:func:`read_dicom`) or several (:func:`iter_dicom_volumes`).
* **Single-slice series** (:mod:`rtfb.ingest.dicom_slices`; GE, Siemens XA interoperability
  and E11 classic, Philips classic): :func:`read_dicom_slices` stacks the slice files of one
  volume by their position along the slice normal and checks that they form one regular stack.
* Compressed pixel data (JPEG lossless and baseline, JPEG-LS, JPEG 2000, RLE) is decoded by
  pydicom's pixel handlers (pylibjpeg with its libjpeg, openjpeg and rle plugins, pyjpegls).

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

import os
from collections.abc import Iterator

from ..exceptions import IngestError
from ._dicom_common import (
    _check_image,
    _kind,
    _load,
    _refuse_tiled,
    _series_key,
    has_dicm_magic,
    is_dicom,
    lock_fields,
)
from ._files import file_name, reading
from .dicom_enhanced import enhanced_volumes, probe_enhanced
from .dicom_mosaic import _mosaic_index, _mosaic_volume
from .dicom_slices import (
    _slice_index_and_part,
    _slice_of,
    _slices_per_volume,
    _stack,
    preload_slice,
    read_dicom_slices,
    slice_position,
)
from .fileinfo import FileInfo
from .volume import Volume

__all__ = ["has_dicm_magic", "is_dicom", "iter_dicom_volumes", "probe_dicom", "read_dicom",
           "read_dicom_slices"]

# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def probe_dicom(path: str | os.PathLike) -> FileInfo:
    """Header-only look at one DICOM file (see :func:`rtfb.ingest.read.probe`)."""
    with reading(file_name(path)):
        return _probe_dicom(path)


def _probe_dicom(path: str | os.PathLike) -> FileInfo:
    f = _load(path, header_only=True)
    _check_image(f, header_only=True)
    kind, _ = _kind(f)
    ds, name = f.ds, f.name
    series = _series_key(ds)
    ident = lock_fields(ds)
    if kind == "mosaic":
        return FileInfo(f.path, "volume", series, _mosaic_index(ds, name), **ident)
    if kind == "enhanced":
        index, n_volumes = probe_enhanced(f)
        return FileInfo(f.path, "volume", series, index, n_volumes=n_volumes, **ident)
    _refuse_tiled(ds, name)
    n_slices = _slices_per_volume(ds)
    index, part = _slice_index_and_part(ds, n_slices, name)
    if n_slices == 1:
        return FileInfo(f.path, "volume", series, index, **ident)
    preload_slice(f.path)
    return FileInfo(f.path, "slice", series, index, n_parts=n_slices or 0, part=part,
                    position=slice_position(ds), **ident)


def read_dicom(path: str | os.PathLike) -> Volume:
    """Read a whole-volume DICOM file: a Siemens mosaic, an enhanced (multi-frame) file
    holding one volume, or a one-slice volume.

    Parameters
    ----------
    path : str | path-like
        DICOM file, with or without extension or 'DICM' preamble.

    Returns
    -------
    Volume
        ``index`` is AcquisitionNumber - 1 (InstanceNumber - 1 if absent; for an enhanced
        file of another vendor than Siemens, TemporalPositionIdentifier - 1 first).

    Raises
    ------
    IncompleteFileError
        The file is shorter than its header says (still being written).
    IngestError
        Not DICOM, not an image, an enhanced file holding several volumes (read it with
        :func:`iter_dicom_volumes`), or one slice of a multi-slice volume (read those with
        :func:`read_dicom_slices`).
    """
    with reading(file_name(path)):
        return _read_dicom(path)


def _read_dicom(path: str | os.PathLike) -> Volume:
    f = _load(path, header_only=False)
    _check_image(f, header_only=False)
    kind, csa = _kind(f)
    if kind == "mosaic":
        return _mosaic_volume(f, csa)
    if kind == "enhanced":
        volumes = list(enhanced_volumes(f))
        if len(volumes) > 1:
            raise IngestError(f"{f.name}: enhanced DICOM holding {len(volumes)} volumes; read "
                              f"it with iter_volumes().")
        return volumes[0]
    _refuse_tiled(f.ds, f.name)
    n_slices = _slices_per_volume(f.ds)
    if n_slices == 1:
        return _stack([_slice_of(f, csa)], n_slices=1)
    if n_slices is None:
        raise IngestError(f"{f.name}: one slice of a single-slice DICOM series; read the slice "
                          f"files of one volume together with read_dicom_slices(), or watch "
                          f"the folder (the watcher groups them).")
    index, part = _slice_index_and_part(f.ds, n_slices, f.name)
    raise IngestError(f"{f.name}: slice {part} of {n_slices} of volume {index}, not a whole "
                      f"volume; read the {n_slices} slice files together with "
                      f"read_dicom_slices().")


def iter_dicom_volumes(path: str | os.PathLike) -> Iterator[Volume]:
    """Yield every volume of a DICOM file: all volumes of an enhanced (multi-frame) file,
    else the one volume :func:`read_dicom` reads. The pixels are decoded before the first
    volume is yielded.
    """
    name = file_name(path)
    with reading(name):
        f = _load(path, header_only=False)
        _check_image(f, header_only=False)
        kind, _ = _kind(f)
        if kind != "enhanced":
            volumes = [_read_dicom(path)]
        else:
            volumes = list(enhanced_volumes(f))
    yield from volumes
