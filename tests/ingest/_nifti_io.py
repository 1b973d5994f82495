"""Small stand-ins for the rtfb.ingest.read contract, used by the watcher tests.

Files are NIfTI-1 single-file volumes named ``<prefix>_<NNNNN>.nii[.gz]`` (1-based number,
index = number - 1, series = prefix), and, for slice groups, raw float32 slices named
``<series>_<vol>_<part>[_copy].slc``.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import time
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from rtfb.exceptions import IncompleteFileError, IngestError
from rtfb.ingest.volume import Volume

AFFINE = np.array([[3.0, 0, 0, -90], [0, 3, 0, -126], [0, 0, 3.5, -72], [0, 0, 0, 1]])
NII_NAME = re.compile(r"(?P<prefix>.+)_(?P<num>\d{5})\.nii(?P<gz>\.gz)?")
SLICE_NAME = re.compile(r"(?P<series>[a-z]+)_(?P<vol>\d+)_(?P<part>\d+)(_copy)?\.slc")
SLICE_SHAPE = (4, 5)
SLICE_BYTES = 4 * 5 * 4


@dataclass(frozen=True)
class FileInfo:
    path: str
    kind: str
    series: str
    index: int
    n_parts: int = 1
    part: int = 0
    n_volumes: int = 1


def nii_probe(path):
    m = NII_NAME.fullmatch(os.path.basename(path))
    if m is None:
        raise IngestError("not a <prefix>_<NNNNN>.nii[.gz] file")
    if not m["gz"]:
        if os.path.getsize(path) < 348:
            raise IncompleteFileError("header incomplete")
        with open(path, "rb") as f:
            try:
                nib.Nifti1Header.from_fileobj(f, check=True)
            except Exception as err:
                raise IngestError(f"bad NIfTI header ({type(err).__name__})") from None
    return FileInfo(path, "volume", m["prefix"], int(m["num"]) - 1)


def nii_read(path):
    info = nii_probe(path)
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (EOFError, zlib.error, gzip.BadGzipFile):
            raise IncompleteFileError("gzip stream incomplete") from None
    if len(raw) < 348:
        raise IncompleteFileError("header incomplete")
    try:
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=True)
        need = hdr.get_data_offset() + int(np.prod(hdr.get_data_shape())) * \
            hdr.get_data_dtype().itemsize
    except Exception as err:
        raise IngestError(f"bad NIfTI header ({type(err).__name__})") from None
    if len(raw) < need:
        raise IncompleteFileError(f"{len(raw)} of {need} bytes")
    img = nib.Nifti1Image.from_bytes(raw)
    return Volume(np.asanyarray(img.dataobj), img.affine, info.index,
                  source=os.path.basename(path), series=info.series)


def nii_bytes(data, affine=AFFINE):
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_data_dtype(np.float32)
    return img.to_bytes()


def write_slowly(path, raw, pause=0.02):
    """Write like a scanner over a share: half, flush, pause, the rest."""
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
        f.flush()
        time.sleep(pause)
        f.write(raw[len(raw) // 2:])


def write_nifti(path, data, *, pause=0.02, gz=False):
    raw = nii_bytes(data)
    write_slowly(path, gzip.compress(raw) if gz else raw, pause)


def slice_probe(path):
    m = SLICE_NAME.fullmatch(os.path.basename(path))
    if m is None:
        raise IngestError("not a slice file")
    if os.path.getsize(path) < SLICE_BYTES:
        raise IncompleteFileError("slice incomplete")
    return FileInfo(path, "slice", m["series"], int(m["vol"]), n_parts=3, part=int(m["part"]))


def slice_read(paths):
    slices = []
    for p in paths:
        raw = open(p, "rb").read()
        if len(raw) < SLICE_BYTES:
            raise IncompleteFileError("slice incomplete")
        slices.append(np.frombuffer(raw[:SLICE_BYTES], "<f4").reshape(SLICE_SHAPE))
    info = slice_probe(paths[0])
    return Volume(np.stack(slices, axis=-1), AFFINE, info.index, source=os.path.basename(paths[0]),
                  series=info.series)
