"""Philips PAR/REC to :class:`~rtfb.ingest.volume.Volume`, through :mod:`nibabel.parrec`.

A ``.par`` text header describes the images of the binary ``.rec`` file next to it (same
name, matching case). The real-time export writes one pair per dynamic (volume); an offline
export may hold a whole run (several dynamics): :func:`iter_parrec_volumes` yields them all,
:func:`read_parrec` accepts single-dynamic pairs only.

Which images make the volume
----------------------------
A pair may hold several image types per dynamic (magnitude, phase, real, imaginary, ...), or
several echoes, cardiac phases, labels. nibabel sorts the images (``strict_sort=True``) and
labels each stacked volume; for every dynamic the volume with the lowest label of every other
kind is kept: lowest ``image_type_mr`` (0, magnitude, when present), first echo, first cardiac
phase, first label type. Values are nibabel's default "displayed value" scaling (``dv``).

Volume number and TR
--------------------
``index`` is ``acq_nr - 1`` ("Acquisition nr" of the general header, which the real-time
export increments per pair) when the pair holds a single dynamic numbered 1, else ``dynamic
scan number - 1``. ``tr`` is the header's "Repetition time [ms]" in seconds, or None when it is
missing or implausibly short (< 10 ms: some export tools write placeholders such as 1).
The echo time is left out when below 1 ms for the same reason.
``acquisition_time`` is None. The series key is a short hash of the file name before its
trailing number (``Dump`` for ``Dump-0003.par``). The general header's patient, examination
and protocol names and dates are never read out.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import parrec

from ..exceptions import IncompleteFileError, IngestError
from ._files import (
    captured_warnings,
    check_file,
    describe_error,
    file_name,
    incomplete,
    reading,
    short_hash,
    source_name,
    split_numbered_name,
)
from .fileinfo import FileInfo
from .volume import Volume

logger = logging.getLogger("rtfb.ingest")

__all__ = ["is_parrec", "iter_parrec_volumes", "parrec_pair", "probe_parrec", "read_parrec"]

PARREC_SUFFIXES = (".par", ".rec")
_END_MARK = b"END OF DATA DESCRIPTION FILE"
_MIN_TR_MS = 10.0  # shorter "TR"s are placeholders or values in seconds: left unknown
_MIN_TE_MS = 1.0
#: labels nibabel may attach to stacked volumes, other than the dynamic number
_OTHER_LABELS = ("image_type_mr", "echo number", "cardiac phase number", "label type",
                 "scanning sequence", "gradient orientation number",
                 "diffusion b value number")


def is_parrec(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a .par or .rec file (by extension, case-insensitive)."""
    return Path(path).suffix.lower() in PARREC_SUFFIXES


def parrec_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """(.par, .rec) paths of the pair ``path`` belongs to (the partner may not exist yet).

    The partner's extension follows the case of the given one (``.PAR`` -> ``.REC``); if that
    file does not exist but the other case does, that one is used.
    """
    path = Path(path)
    suffix = path.suffix
    if suffix.lower() not in PARREC_SUFFIXES:
        raise IngestError(f"{file_name(path)}: not a .par or .rec file.")
    want = ".rec" if suffix.lower() == ".par" else ".par"
    upper = suffix.isupper()
    partner = path.with_suffix(want.upper() if upper else want)
    if not partner.exists():
        other = path.with_suffix(want if upper else want.upper())
        if other.exists():
            partner = other
    return (path, partner) if suffix.lower() == ".par" else (partner, path)


def _read_par(par: Path) -> bytes:
    if not par.exists():
        raise IncompleteFileError(f"{file_name(par)}: incomplete PAR/REC pair: the .par header is "
                                  f"not there yet.")
    check_file(par)
    try:
        text = par.read_bytes()
    except OSError as err:
        raise IngestError(f"{file_name(par)}: cannot read the file ({err.strerror}).") from None
    if b"DATA DESCRIPTION FILE" not in text[:2000] and b"IMAGE INFORMATION" not in text:
        raise IngestError(f"{file_name(par)}: not a Philips PAR header.")
    if _END_MARK not in text:
        raise IncompleteFileError(f"{file_name(par)}: incomplete file: the PAR header ends after "
                                  f"{len(text)} bytes, before its '{_END_MARK.decode()}' "
                                  f"line.")
    return text


def _header(par: Path, text: bytes) -> Any:
    try:
        with captured_warnings(file_name(par)):
            fobj = io.StringIO(text.decode("latin-1"))
            return parrec.PARRECHeader.from_fileobj(fobj, permit_truncated=False,
                                                    strict_sort=True)
    except Exception as err:  # noqa: BLE001 - nibabel raises several types on bad headers
        raise IngestError(f"{file_name(par)}: invalid PAR header "
                          f"({describe_error(err)}).") from None


def _expected_rec_bytes(header: Any) -> int:
    defs = header.image_defs
    resolution = np.asarray(defs["recon resolution"], dtype=np.int64).reshape(len(defs), 2)
    bits = np.asarray(defs["image pixel size"], dtype=np.int64)
    return int(np.sum(resolution[:, 0] * resolution[:, 1] * bits // 8))


def _selected(header: Any, name: str) -> list[tuple[int, int]]:
    """[(position in the stacked 4th dimension, dynamic number)], one per dynamic."""
    shape = header.get_data_shape()
    n_stacked = int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1
    if len(shape) > 4:
        raise IngestError(f"{name}: PAR/REC data shape {shape} is not supported.")
    try:
        labels = header.get_volume_labels()
    except Exception as err:  # noqa: BLE001
        raise IngestError(f"{name}: cannot label the PAR/REC volumes "
                          f"({describe_error(err)}).") from None
    labels = {key: np.asarray(value) for key, value in labels.items()}
    keep = np.ones(n_stacked, dtype=bool)
    for key in _OTHER_LABELS:
        if key in labels:
            keep &= labels[key] == labels[key].min()
    if "dynamic scan number" in labels:
        dynamics = labels["dynamic scan number"].astype(int)
    else:
        dynamics = np.full(n_stacked, int(header.image_defs["dynamic scan number"][0]))
    positions = np.flatnonzero(keep)
    chosen = [(int(p), int(dynamics[p])) for p in positions]
    if len({d for _, d in chosen}) != len(chosen):
        raise IngestError(f"{name}: PAR/REC volumes could not be told apart (several images "
                          f"per dynamic with the same labels).")
    return sorted(chosen, key=lambda item: item[1])


def _tr_seconds(general: dict, name: str) -> float | None:
    values = np.atleast_1d(np.asarray(general.get("repetition_time", []), dtype=float))
    if values.size == 0 or not np.isfinite(values[0]):
        return None
    tr_ms = float(values[0])
    if tr_ms < _MIN_TR_MS:
        logger.debug("%s: PAR repetition time %.3g ms is implausible; tr left unknown", name,
                     tr_ms)
        return None
    return tr_ms / 1000.0


def _index(general: dict, dynamic: int, n_dynamics: int) -> int:
    acquisition = int(general.get("acq_nr", 1) or 1)
    if n_dynamics == 1 and dynamic == 1 and acquisition >= 1:
        return acquisition - 1
    return max(dynamic, 1) - 1


def _series(par: Path) -> str:
    prefix, _ = split_numbered_name(par.name, (".par",))
    return short_hash(prefix, "name-")


def _volumes(path: str | os.PathLike, *, single: bool) -> Iterator[Volume]:
    with reading(file_name(path)):
        check_file(path)
        par, rec = parrec_pair(path)
        text = _read_par(par)
        header = _header(par, text)
        name = file_name(par)
        if not rec.exists():
            raise IncompleteFileError(f"{file_name(rec)}: incomplete PAR/REC pair: the .rec "
                                      "image file is not there yet.")
        expected = _expected_rec_bytes(header)
        present = rec.stat().st_size
        if present < expected:
            raise incomplete(file_name(rec), "REC image data shorter than its PAR header says",
                             expected, present)
        chosen = _selected(header, name)
        if single and len(chosen) > 1:
            raise IngestError(f"{name}: PAR/REC pair holding {len(chosen)} dynamics; read it with "
                              f"iter_volumes(), read_volume() reads one volume.")
        general = header.general_info
        tr = _tr_seconds(general, name)
        info = _info(header, tr)
        series = _series(par)
    try:
        fobj = open(rec, "rb")  # closed by the with block below
    except OSError as err:
        raise IngestError(f"{file_name(rec)}: cannot read the file ({err.strerror}).") from None
    with fobj:
        try:
            with captured_warnings(name):
                image = parrec.PARRECImage.from_file_map(
                    {"header": nib.FileHolder(fileobj=io.StringIO(text.decode("latin-1"))),
                     "image": nib.FileHolder(fileobj=fobj)},
                    mmap=False, permit_truncated=False, scaling="dv", strict_sort=True)
                affine = np.asarray(image.affine, dtype=np.float64)
                if not np.isfinite(affine).all():
                    raise ValueError("the affine is not finite")
                info["NumberOfSlices"] = int(image.shape[2])
                proxy = image.dataobj
                stacked = len(image.shape) > 3
        except Exception as err:  # noqa: BLE001
            raise IngestError(f"{name}: unreadable PAR/REC ({describe_error(err)}).") \
                from None
        logger.debug("%s: PAR/REC, %d dynamic(s), shape %s", name, len(chosen),
                     image.shape[:3])
        for position, dynamic in chosen:
            try:
                with captured_warnings(name):
                    data = np.asarray(proxy[..., position] if stacked else proxy[...],
                                      dtype=np.float32)
            except Exception as err:  # noqa: BLE001
                raise IngestError(f"{name}: cannot read dynamic {dynamic} "
                                  f"({describe_error(err)}).") from None
            yield Volume(data=data, affine=affine,
                         index=_index(general, dynamic, len(chosen)), tr=tr,
                         source=source_name(name), series=series, header=info)


def _info(header: Any, tr: float | None) -> dict[str, Any]:
    """Allow-listed header fields (seconds, mm, degrees); implausible times are left out."""
    info: dict[str, Any] = {"format": "parrec"}
    if tr is not None:
        info["RepetitionTime"] = tr
    defs = header.image_defs
    names = defs.dtype.names
    if "echo_time" in names:
        te_ms = float(defs["echo_time"][0])
        if te_ms >= _MIN_TE_MS:
            info["EchoTime"] = round(te_ms / 1000.0, 9)
    if "image_flip_angle" in names:
        info["FlipAngle"] = float(defs["image_flip_angle"][0])
    if "slice thickness" in names:
        info["SliceThickness"] = float(defs["slice thickness"][0])
    if "pixel spacing" in names:
        info["PixelSpacing"] = [float(v) for v in np.ravel(defs["pixel spacing"][0])]
    return info


def read_parrec(path: str | os.PathLike) -> Volume:
    """Read a single-dynamic PAR/REC pair as one Volume (``path``: the .par or the .rec).

    Raises
    ------
    IncompleteFileError
        The partner file is missing, the .par has no end line yet, or the .rec is shorter
        than the .par says.
    IngestError
        Not a PAR/REC pair, an invalid header, or several dynamics (use
        :func:`iter_parrec_volumes`).
    """
    volumes = _volumes(path, single=True)
    try:
        return next(volumes)
    finally:
        volumes.close()


def iter_parrec_volumes(path: str | os.PathLike) -> Iterator[Volume]:
    """Yield the dynamics of a PAR/REC pair in order, one Volume each."""
    yield from _volumes(path, single=False)


def probe_parrec(path: str | os.PathLike) -> FileInfo:
    """Header-only look at a PAR/REC pair (see :func:`rtfb.ingest.read.probe`).

    Only the .par is read; ``FileInfo.path`` is the .par whichever file was given.
    """
    with reading(file_name(path)):
        return _probe_parrec(path)


def _probe_parrec(path: str | os.PathLike) -> FileInfo:
    check_file(path)
    par, _ = parrec_pair(path)
    header = _header(par, _read_par(par))
    chosen = _selected(header, file_name(par))
    first = chosen[0][1]
    return FileInfo(par, "volume", _series(par), _index(header.general_info, first,
                                                        len(chosen)),
                    n_volumes=len(chosen))
