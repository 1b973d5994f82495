"""Ingest: volumes from the scanner's export folder or a TCP stream, as :class:`Volume`.

Readers (:func:`read_volume`, :func:`iter_volumes`, :func:`read_dicom_slices`,
:func:`probe`) turn Siemens mosaics, single-slice DICOM series (GE), Philips PAR/REC and
NIfTI into volumes; :class:`FolderWatcher` and :class:`TCPReceiver` each run one
acquisition thread that hands volumes, in order, through a bounded queue, together with
:class:`Missing` and :class:`Late` events.
"""

from .fileinfo import FileInfo
from .names import install_name_filter
from .ordering import Late, Missing
from .read import iter_volumes, probe, read_dicom_slices, read_volume
from .tcp import TCPReceiver, send_volume
from .volume import ALLOWED_HEADER_FIELDS, Volume
from .watcher import FolderWatcher

__all__ = [
    "ALLOWED_HEADER_FIELDS",
    "FileInfo",
    "FolderWatcher",
    "Late",
    "Missing",
    "TCPReceiver",
    "Volume",
    "iter_volumes",
    "probe",
    "read_dicom_slices",
    "read_volume",
    "send_volume",
]

install_name_filter()  # no file name that may identify a patient in a log line
