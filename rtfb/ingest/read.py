"""Public entry points of the volume readers: one function whatever the scanner's format.

* :func:`read_volume` - one whole-volume file (Siemens mosaic DICOM, 3D NIfTI, PAR/REC pair)
  to a :class:`~rtfb.ingest.volume.Volume`;
* :func:`read_dicom_slices` - the single-slice DICOM files of one volume (GE and others);
* :func:`iter_volumes` - every volume of a 4D NIfTI or multi-dynamic PAR/REC (any file);
* :func:`probe` - a cheap header-only look (:class:`~rtfb.ingest.fileinfo.FileInfo`) so that
  the export-folder watcher can group slice files and order volumes before reading pixels.

The format is recognised from the content, not only the extension: DICOM by the 'DICM' prefix
at byte 128 (or, for preamble-less files, by what pydicom parses), NIfTI by its header size and
magic string (plain or gzip), PAR/REC by the ``.par``/``.rec`` extension. GE files such as
``i2862280.MRDC.1`` need no extension.

Errors
------
All failures are :class:`~rtfb.exceptions.IngestError` naming the file (base name) and what is
wrong; a file that is still being written (shorter than its header says, a gzip stream cut
short, a PAR/REC pair missing its partner) raises the subclass
:class:`~rtfb.exceptions.IncompleteFileError`, with the expected and present byte counts when
they are known. Exceptions of pydicom and nibabel are not let through (nor chained, so their
text cannot reach a log), and no patient data is ever quoted.

Volume fields
-------------
``data`` float32 (X, Y, Z); ``affine`` voxel -> RAS+ mm; ``index`` 0-based volume number (rule
per format in :func:`probe`); ``acquisition_time`` seconds after midnight (DICOM
AcquisitionTime, else None); ``tr`` seconds; ``source`` the file name; ``series`` a
non-identifying key; ``header`` allow-listed fields only
(:data:`~rtfb.ingest.volume.ALLOWED_HEADER_FIELDS`) plus ``"format"`` (``"dicom-mosaic"``,
``"dicom-slices"``, ``"nifti1"``, ``"nifti2"``, ``"parrec"``), with times in seconds and lengths
in mm.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..exceptions import IncompleteFileError, IngestError
from ._files import check_file, file_name, read_head, reading
from .dicom import (
    has_dicm_magic,
    is_dicom,
    iter_dicom_volumes,
    probe_dicom,
    read_dicom,
    read_dicom_slices,
)
from .fileinfo import FileInfo
from .nifti import GZIP_MAGIC, gzip_peek, is_nifti, iter_nifti_volumes, probe_nifti, read_nifti
from .parrec import is_parrec, iter_parrec_volumes, probe_parrec, read_parrec
from .volume import Volume

__all__ = ["FileInfo", "detect_format", "iter_volumes", "probe", "read_dicom_slices",
           "read_volume"]

FORMATS = ("dicom", "nifti", "parrec")
_IMAGE_SUFFIXES = (".dcm", ".ima", ".nii", ".nii.gz")


def detect_format(path: str | os.PathLike) -> str:
    """Format of ``path`` from its content: ``"dicom"``, ``"nifti"`` or ``"parrec"``.

    Raises
    ------
    IngestError
        Missing, empty, or none of the supported formats.
    IncompleteFileError
        Too short to tell yet (a cut gzip stream, or a file named ``.dcm``, ``.ima``, ``.nii``
        shorter than a DICOM preamble).
    """
    if is_parrec(path):  # a .rec may not exist yet when its .par is probed: check the pair
        return "parrec"
    with reading(file_name(path)):
        return _detect_format(path)


def _detect_format(path: str | os.PathLike) -> str:
    path = check_file(path)
    head = read_head(path, 540)
    if has_dicm_magic(head):
        return "dicom"
    if head[:2] == GZIP_MAGIC:
        inner, cut = gzip_peek(path, 540)
        if is_nifti(path):
            return "nifti"
        if cut and len(inner) < 4:
            raise IncompleteFileError(f"{file_name(path)}: incomplete file: gzip data too short to "
                                      f"recognise its header yet.")
        raise IngestError(f"{file_name(path)}: unsupported file: gzip data that is not a NIfTI-1/2 "
                          f"image.")
    if is_nifti(path):
        return "nifti"
    if is_dicom(path):
        return "dicom"
    if head.startswith(b"# === DATA DESCRIPTION FILE"):
        raise IngestError(f"{file_name(path)}: a Philips PAR header without the .par extension; "
                          f"rename it so that its .rec partner can be found.")
    if len(head) < 132 and path.name.lower().endswith(_IMAGE_SUFFIXES):
        raise IncompleteFileError(f"{file_name(path)}: incomplete file: only {len(head)} bytes, "
                                  f"too short to recognise its header yet.")
    raise IngestError(f"{file_name(path)}: unsupported or corrupt file: not DICOM (no 'DICM' "
                      f"prefix and no DICOM attributes), not NIfTI-1/2 and not PAR/REC.")


def read_volume(path: str | os.PathLike) -> Volume:
    """Read one whole volume from a file.

    Parameters
    ----------
    path : str | path-like
        A Siemens mosaic DICOM (or a one-slice DICOM volume), a 3D NIfTI (or 4D with one
        volume), or a single-dynamic PAR/REC pair (the .par or the .rec).

    Returns
    -------
    Volume

    Raises
    ------
    IncompleteFileError
        The file is still being written (see the module notes).
    IngestError
        Empty, corrupt or unsupported file; a file holding several volumes (use
        :func:`iter_volumes`); a single slice of a multi-slice volume (use
        :func:`read_dicom_slices`).
    """
    fmt = detect_format(path)
    if fmt == "dicom":
        return read_dicom(path)
    if fmt == "nifti":
        return read_nifti(path)
    return read_parrec(path)


def iter_volumes(path: str | os.PathLike) -> Iterator[Volume]:
    """Yield every volume of a file in order: the volumes of a 4D NIfTI, the dynamics of a
    PAR/REC pair, or the one volume of any other supported file.

    The file is checked for completeness before the first volume is yielded.
    """
    fmt = detect_format(path)
    if fmt == "nifti":
        yield from iter_nifti_volumes(path)
    elif fmt == "parrec":
        yield from iter_parrec_volumes(path)
    else:
        yield from iter_dicom_volumes(path)


def probe(path: str | os.PathLike) -> FileInfo:
    """Cheap header-only look at one exported file, to group and order files before reading.

    No pixel data is read (pydicom ``stop_before_pixels``, nibabel headers), so a file whose
    pixels are still being written usually probes fine and fails later in the reader with
    :class:`~rtfb.exceptions.IncompleteFileError`; a file cut inside its header raises it here.

    Volume index rules (``FileInfo.index``, 0-based; the readers give the same):

    * **Siemens mosaic DICOM** (real-time export, one file per volume): AcquisitionNumber - 1
      (InstanceNumber - 1 if absent). ``kind="volume"``.
    * **Single-slice DICOM** (``kind="slice"``, ``n_parts`` = slices per volume from the GE
      private LocationsInAcquisition (0021,xx4F), else ImagesInAcquisition): the index is
      TemporalPositionIdentifier - 1 when present; else for Siemens AcquisitionNumber - 1; else
      (GE real-time, whose AcquisitionNumber stays 1, and other vendors)
      ``(InstanceNumber - 1) // n_parts``. ``part`` is InStackPositionNumber, else
      ``(InstanceNumber - 1) % n_parts + 1``. A one-slice volume has ``kind="volume"``.
    * **NIfTI**: from the file name ``<anything>_<NNNNN>.nii[.gz]`` (or ``-<NNNNN>``), the
      1-based volume number: index = NNNNN - 1; 0 without a number. ``n_volumes`` is the 4th
      dimension.
    * **PAR/REC**: ``acq_nr - 1`` for a single-dynamic pair (real-time export), else the first
      dynamic number - 1. ``path`` is the .par whichever file of the pair was probed, so the
      pair appears twice when a folder is listed: match ``*.par`` only, or de-duplicate on
      ``path``.

    Series keys: DICOM SeriesNumber as a string (a short hash of SeriesInstanceUID without
    it); NIfTI and PAR/REC a short hash of the file name before its volume number.

    Raises
    ------
    IncompleteFileError, IngestError
        As :func:`read_volume`, for what the header shows; also a multi-frame DICOM or a
        single-slice DICOM without slices-per-volume information.
    """
    fmt = detect_format(path)
    if fmt == "dicom":
        return probe_dicom(path)
    if fmt == "nifti":
        return probe_nifti(path)
    return probe_parrec(path)

