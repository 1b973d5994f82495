"""Play a run in real time, as a scanner would, with optional injected faults.

``stream(source, to, tr)`` sends volume after volume on a drift-corrected TR clock
(:class:`simulator.clock.TRClock`, ``interval = tr / speed``):

* to a **folder** (the scanner's export folder): NIfTI sources become one 3D NIfTI-1 file
  per volume, ``vol_<NNNNN>.nii`` (1-based, 5 digits, float32, TR in ``pixdim[4]``);
  DICOM sources are replayed file by file, Siemens real-time mosaics as
  ``<prefix>_<series:06d>_<vol:06d>.dcm``, GE slices as ``i<n>.MRDC.<instance>`` (other
  slice series as ``<series:06d>_<vol:06d>_<slice:04d>.dcm``). Every file is written
  directly under its final name in ``chunks`` pieces with ``chunk_pause`` seconds in
  between, so a watcher sees partial files, as on a real scanner (no rename trick).
* to **TCP** (``tcp://HOST:PORT``): one frame per volume in framing version 2 of
  ``docs/tcp_protocol.md`` (implemented here independently of rtfb), each frame tagged with
  HMAC-SHA256 under the session's key (``key``: the bytes or the key file of
  ``rtfb run --key FILE``). The sender waits for the receiver (``connect_timeout``),
  reconnects when the connection drops, and, since a receiver closes the connection after a
  bad frame, closes and reopens it itself after sending a truncated or corrupted frame. It
  reads the receiver's signed acknowledgements and records, per frame, what the receiver
  said became of it (``ack``). TCP output needs a NIfTI source.

Looping: ``volumes=N`` plays the source's volumes again and again up to ``N`` volumes. For
DICOM the looped copies get the continuing numbers (InstanceNumber; AcquisitionNumber
when the source numbers acquisitions), new deterministic SOPInstanceUIDs, the same
SeriesInstanceUID, and names that continue the run. Files of the first pass whose header
needs no change are copied byte for byte.

Faults (``faults={"drop": 0.1, "delay": [5, 17], ...}``; a rate in [0, 1) drawn with the
seeded RNG ``fault_seed`` or a list of 1-based volume numbers); each volume gets at most
one fault (precedence: drop, truncate, corrupt, shuffle, delay, duplicate; conflicting
explicit lists are an error):

=============  =====================================================================
``drop``       never written / sent
``duplicate``  written twice: ``duplicate_mode="same"`` rewrites the same file half an
               interval later, ``"copy"`` writes a second file ``<stem>_copy<ext>``
               with the same content (same volume number in the DICOM header); TCP:
               the same frame sent twice
``truncate``   only the first ``truncate_fraction`` of the bytes are ever written (TCP:
               the frame is cut and the connection closed); last file of a slice volume
``delay``      written ``delay_seconds`` (scanner seconds, default 2 TR) late, after later
               volumes
``shuffle``    swapped with the next volume (volume v at v+1's time and vice versa); the
               partner is marked ``shuffled`` too
``corrupt``    ``corrupt_mode="random"``: random bytes of the right length (TCP: the whole
               frame); ``"header"``: the header bytes are damaged (NIfTI: the 348-byte
               header; DICOM: the ``DICM`` magic and file meta; TCP: the JSON header)
=============  =====================================================================

A JSON manifest (``manifest``, default ``<out>/../stream_manifest.json`` for a folder,
``./stream_manifest.json`` for TCP) is written when the stream starts (``status:
"running"``, the plan) and when it ends (``"completed"``, or ``"interrupted"`` after a
stop request or Ctrl-C). Times in it are seconds after the schedule origin ``t0`` (real
seconds, on :func:`time.perf_counter`); see :func:`stream` for the fields.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import heapq
import hmac
import io
import json
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from .clock import TimingReport, TRClock

__all__ = [
    "FAULT_TYPES", "MANIFEST_VERSION", "DicomSource", "NiftiSource", "encode_frame",
    "load_source", "parse_fault_value", "plan_faults", "stream",
]

#: Fault types, in order of precedence when a volume is drawn for several.
FAULT_TYPES = ("drop", "truncate", "corrupt", "shuffle", "delay", "duplicate")
#: Action recorded for a volume, per fault (``written`` when no fault).
ACTIONS = {"drop": "dropped", "truncate": "truncated", "corrupt": "corrupted",
           "shuffle": "shuffled", "delay": "delayed", "duplicate": "duplicated"}
MANIFEST_VERSION = 1
TCP_MAGIC = b"RTFB"
TCP_VERSION = 2
_TCP_NONCE = 16
_TCP_HELLO = 24  # magic, version (u32 big-endian), nonce
_TCP_DTYPES = {"<u1", "<i2", "<u2", "<i4", "<f4", "<f8"}
_NIFTI_HEADER_BYTES = 348
_DICOM_META_START = 128
_SIEMENS_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.dcm$", re.IGNORECASE)
_GE_NAME = re.compile(r"^i(\d+)\.MRDC\.(\d+)$")
_ABSENT = object()


# ----------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------
@dataclass
class _Rendered:
    """One output volume, ready to send: files (name, bytes) or one TCP frame."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    frame: dict | None = None  # TCP: arguments of encode_frame (framed when sent)


class NiftiSource:
    """A 4D NIfTI run (a file, or a ``write_subject`` folder holding ``bold.nii.gz``)."""

    kind = "nifti"

    def __init__(self, path: str | Path) -> None:
        import nibabel as nib

        path = Path(path)
        if path.is_dir():
            path = path / "bold.nii.gz"
        self.path = path
        img = nib.load(str(path))
        if len(img.shape) != 4:
            raise ValueError(f"{path} is not a 4D NIfTI image (shape {img.shape}).")
        self._img = img
        self.affine = np.asarray(img.affine, dtype=np.float64)
        self.shape = tuple(int(s) for s in img.shape[:3])
        self.n_volumes = int(img.shape[3])
        self._data: np.ndarray | None = None
        zooms = img.header.get_zooms()
        tr = float(zooms[3]) if len(zooms) > 3 else 0.0
        unit = img.header.get_xyzt_units()[1]
        tr *= {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
        self.tr = tr if np.isfinite(tr) and tr > 0 else None

    def volume(self, k: int) -> np.ndarray:
        """Source volume ``k`` (0-based) as float32, shape (X, Y, Z)."""
        if self._data is None:  # load once: the whole run is read anyway when looping
            self._data = np.asarray(self._img.get_fdata(dtype=np.float32), dtype=np.float32)
        return self._data[..., k]

    files_per_volume = 1

    @staticmethod
    def names(volume: int) -> list[str]:
        """File name of output volume ``volume`` (1-based): ``["vol_NNNNN.nii"]``."""
        return [f"vol_{volume:05d}.nii"]

    def render_files(self, volume: int, tr: float) -> list[tuple[str, bytes]]:
        """Files of output volume ``volume`` (1-based): ``[("vol_NNNNN.nii", bytes)]``."""
        import nibabel as nib

        data = np.ascontiguousarray(self.volume((volume - 1) % self.n_volumes))
        img = nib.Nifti1Image(data, self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        img.header.set_data_dtype(np.float32)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = float(tr)
        return [(self.names(volume)[0], img.to_bytes())]

    def render_frame(self, volume: int, tr: float, acquisition_time: float | None,
                     series: str | None) -> dict:
        """Arguments of :func:`encode_frame` for output volume ``volume`` (1-based)."""
        data = self.volume((volume - 1) % self.n_volumes)
        return dict(data=data, affine=self.affine, index=volume - 1, tr=tr,
                    acquisition_time=acquisition_time, series=series)


def _dicom_files(folder: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(str(path))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # masks, notes, ... next to the images
        if "PixelData" in ds:
            out.append((path, ds))
    return out


def _shift_tm(value, seconds: float):
    """Add ``seconds`` to a DICOM TM string (``HHMMSS.ffffff``); empty stays empty."""
    text = str(value or "").strip()
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not m:
        return value
    total = (int(m.group(1)) * 3600 + int(m.group(2) or 0) * 60 + int(m.group(3) or 0)
             + float(m.group(4) or 0.0) + seconds) % 86400.0
    hh, rest = divmod(total, 3600.0)
    mm, ss = divmod(rest, 60.0)
    return f"{int(hh):02d}{int(mm):02d}{ss:09.6f}"


class DicomSource:
    """A recorded DICOM series: Siemens real-time mosaics (one file per volume) or slices.

    Files are ordered by (AcquisitionNumber, InstanceNumber); the number of slices per
    volume is the number of distinct ImagePositionPatient values (1 for mosaics).
    """

    kind = "dicom"

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder)
        found = _dicom_files(self.path)
        if not found:
            raise ValueError(f"no DICOM image file in {self.path}.")
        series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in found}
        if len(series) > 1:
            raise ValueError(f"{self.path} holds {len(series)} series "
                             f"({sorted(series)}); replay one series per folder.")

        def _key(item):
            ds = item[1]
            return (int(ds.get("AcquisitionNumber") or 0), int(ds.get("InstanceNumber") or 0),
                    item[0].name)

        found.sort(key=_key)
        positions = {tuple(np.round(np.asarray(ds.get("ImagePositionPatient", [0, 0, 0]),
                                               dtype=float), 3)) for _, ds in found}
        n_slices = len(positions)
        if len(found) % n_slices:
            raise ValueError(f"{self.path}: {len(found)} files are not a whole number of "
                             f"volumes of {n_slices} slices.")
        self.n_slices = n_slices
        self.mosaic = n_slices == 1
        self.n_volumes = len(found) // n_slices
        self._paths = [p for p, _ in found]
        self._datasets = [ds for _, ds in found]
        first = self._datasets[0]
        self.series_number = int(first.get("SeriesNumber") or 1)
        self.series_uid = str(first.get("SeriesInstanceUID", "")) or None
        tr_ms = first.get("RepetitionTime")
        self.tr = float(tr_ms) / 1000.0 if tr_ms not in (None, "") and float(tr_ms) > 0 \
            else None
        acq = [int(ds.get("AcquisitionNumber") or 0) for ds in self._datasets]
        per_volume = [acq[v * n_slices] for v in range(self.n_volumes)]
        self.numbers_acquisitions = self.mosaic or (
            len(set(per_volume)) == self.n_volumes and self.n_volumes > 1)
        self._instance0 = int(first.get("InstanceNumber") or 1)
        m = _SIEMENS_NAME.match(self._paths[0].name)
        self._prefix = m.group(1) if m else "001"
        ge = [_GE_NAME.match(p.name) for p in self._paths]
        self._ge_base = None
        if not self.mosaic and all(ge):
            # i<counter>.MRDC.<instance>: counter - instance is constant in a GE export
            self._ge_base = int(ge[0].group(1)) - int(ge[0].group(2))
        self._raw: dict[int, bytes] = {}

    @property
    def files_per_volume(self) -> int:
        """Files written per volume."""
        return self.n_slices

    def _instance(self, volume: int, slice_index: int) -> int:
        if self.mosaic:
            return volume
        return self._instance0 + (volume - 1) * self.n_slices + slice_index

    def names(self, volume: int) -> list[str]:
        """File names of output volume ``volume`` (1-based), in writing order."""
        return [self._name(volume, s + 1, self._instance(volume, s))
                for s in range(self.n_slices)]

    def _name(self, volume: int, slice_: int, instance: int) -> str:
        if self.mosaic:
            return f"{self._prefix}_{self.series_number:06d}_{volume:06d}.dcm"
        if self._ge_base is not None:
            return f"i{self._ge_base + instance}.MRDC.{instance}"
        return f"{self.series_number:06d}_{volume:06d}_{slice_:04d}.dcm"

    def render_files(self, volume: int, tr: float) -> list[tuple[str, bytes]]:
        """Files of output volume ``volume`` (1-based), renumbered as a continuing run."""
        import pydicom
        from pydicom.uid import generate_uid

        src_vol = (volume - 1) % self.n_volumes
        loop = (volume - 1) // self.n_volumes
        files = []
        for s in range(self.n_slices):
            i = src_vol * self.n_slices + s
            ds = self._datasets[i]
            instance = self._instance(volume, s)
            acquisition = volume if self.numbers_acquisitions else ds.get("AcquisitionNumber")
            name = self._name(volume, s + 1, instance)
            unchanged = (loop == 0 and int(ds.get("InstanceNumber") or 0) == instance
                         and (not self.numbers_acquisitions
                              or int(ds.get("AcquisitionNumber") or 0) == volume))
            if unchanged:
                if i not in self._raw:
                    self._raw[i] = self._paths[i].read_bytes()
                files.append((name, self._raw[i]))
                continue
            # modify in place, write, restore (much faster than a deep copy)
            changes = {"InstanceNumber": instance}
            if acquisition not in (None, ""):
                changes["AcquisitionNumber"] = int(acquisition)
            meta_changes = {}
            if loop:
                uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), str(volume)])
                changes["SOPInstanceUID"] = uid
                if getattr(ds, "file_meta", None) is not None:
                    meta_changes["MediaStorageSOPInstanceUID"] = uid
                shift = loop * self.n_volumes * float(tr)
                for keyword in ("AcquisitionTime", "ContentTime"):
                    if keyword in ds and str(ds.get(keyword) or ""):
                        changes[keyword] = _shift_tm(ds.get(keyword), shift)
            saved = [(target, kw, target[kw].value if kw in target else _ABSENT)
                     for target, todo in ((ds, changes), (getattr(ds, "file_meta", None),
                                                           meta_changes))
                     for kw in todo]
            buf = io.BytesIO()
            try:
                for kw, value in changes.items():
                    setattr(ds, kw, value)
                for kw, value in meta_changes.items():
                    setattr(ds.file_meta, kw, value)
                pydicom.dcmwrite(buf, ds)
            finally:
                for target, kw, value in saved:
                    if value is _ABSENT:
                        if kw in target:
                            del target[kw]
                    else:
                        target[kw].value = value
            files.append((name, buf.getvalue()))
        return files


def load_source(source: str | Path) -> NiftiSource | DicomSource:
    """Open ``source``: a 4D NIfTI file, a ``write_subject`` folder or a DICOM folder."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source {path} does not exist.")
    if path.is_file():
        if path.name.endswith((".nii", ".nii.gz")):
            return NiftiSource(path)
        raise ValueError(f"source file {path} is not a NIfTI file (.nii/.nii.gz); for "
                         "DICOM give the folder of the series.")
    if (path / "bold.nii.gz").is_file():
        return NiftiSource(path / "bold.nii.gz")
    return DicomSource(path)


# ----------------------------------------------------------------------------------------
# TCP framing (docs/tcp_protocol.md, version 2)
# ----------------------------------------------------------------------------------------
def _hmac(key: bytes, *parts: bytes):
    mac = hmac.new(key, b"", hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac


def encode_frame(data: np.ndarray, affine: np.ndarray, index: int, *, tr: float | None,
                 acquisition_time: float | None = None, series: str | None = None,
                 key: bytes = b"", nonce: bytes = bytes(_TCP_NONCE),
                 seq: int = 0) -> tuple[bytes, int]:
    """One TCP frame: magic, header length (u32 big-endian), JSON header, header tag,
    C-order payload, frame tag (HMAC-SHA256 with ``key`` and the connection's ``nonce``).

    Returns
    -------
    frame : bytes
    header_bytes : int
        Bytes before the payload (prefix, header and header tag).
    """
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError(f"a frame carries a 3D volume, got shape {arr.shape}.")
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.dtype.str not in _TCP_DTYPES:
        arr = arr.astype("<f4")
    payload = arr.tobytes(order="C")
    header = {
        "version": TCP_VERSION,
        "seq": int(seq),
        "index": int(index),
        "shape": [int(s) for s in arr.shape],
        "dtype": arr.dtype.str,
        "nbytes": len(payload),
        "affine": np.asarray(affine, dtype=float).tolist(),
        "tr": None if tr is None else float(tr),
        "acquisition_time": None if acquisition_time is None else float(acquisition_time),
        "series": series,
    }
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    prefix = TCP_MAGIC + struct.pack(">I", len(head))
    head_tag = _hmac(key, b"rtfb tcp v2 header\0", nonce, prefix, head).digest()
    frame_tag = _hmac(key, b"rtfb tcp v2 frame\0", nonce, prefix, head, payload).digest()
    before = prefix + head + head_tag
    return before + payload + frame_tag, len(before)


def read_key(key: bytes | str | os.PathLike | None) -> bytes:
    """The key as bytes: given, read from a key file (64 hex characters), or ``b""``."""
    if key is None:
        return b""
    if isinstance(key, bytes):
        return key
    text = Path(key).read_text().strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise ValueError(f"key file {key} does not hold a key (64 hexadecimal characters).")
    return bytes.fromhex(text)


def _parse_tcp(to: str) -> tuple[str, int] | None:
    if not str(to).startswith("tcp://"):
        return None
    parts = urlsplit(str(to))
    if not parts.hostname or parts.port is None:
        raise ValueError(f"bad TCP address {to!r}; expected tcp://HOST:PORT.")
    return parts.hostname, parts.port


# ----------------------------------------------------------------------------------------
# fault plan
# ----------------------------------------------------------------------------------------
def parse_fault_value(text: str) -> float | list[int]:
    """Parse a command-line fault value: a rate in [0, 1) or 1-based volume numbers.

    ``"0.1"`` -> 0.1; ``"5,17"`` -> [5, 17]; ``"5"`` -> [5]; ``"0"`` -> 0.0.
    """
    text = str(text).strip()
    if "," in text or re.fullmatch(r"[1-9]\d*", text):
        try:
            vols = [int(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise ValueError(f"bad volume list {text!r}; expected e.g. 5,17.") from err
        if not vols or min(vols) < 1:
            raise ValueError(f"volume numbers are 1-based, got {text!r}.")
        return vols
    try:
        rate = float(text)
    except ValueError as err:
        raise ValueError(f"bad fault value {text!r}: a rate in [0, 1) or volume numbers "
                         "like 5,17.") from err
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"a fault rate must lie in [0, 1), got {text!r}.")
    return rate


def plan_faults(n_volumes: int, faults: Mapping[str, float | Sequence[int]] | None,
                seed: int = 0) -> dict[int, tuple[str, int | None]]:
    """Assign at most one fault to each volume.

    Parameters
    ----------
    n_volumes : int
        Number of volumes streamed.
    faults : mapping
        Fault type (:data:`FAULT_TYPES`) to a rate in [0, 1) or to 1-based volume numbers.
        Explicit numbers are applied first and must not conflict (one fault per volume;
        a shuffled volume needs an unfaulted next volume); rates are then drawn per volume
        with ``numpy.random.default_rng(seed)``, type by type in precedence order, a
        volume already faulted being left alone.
    seed : int
        Seed of the rate draws.

    Returns
    -------
    dict of int to (str, int | None)
        Volume number -> (fault type, partner volume for ``shuffle`` else ``None``). Both
        volumes of a swapped pair are present.
    """
    faults = dict(faults or {})
    unknown = set(faults) - set(FAULT_TYPES)
    if unknown:
        raise ValueError(f"unknown fault types {sorted(unknown)}; known: {list(FAULT_TYPES)}.")
    plan: dict[int, tuple[str, int | None]] = {}
    spec = {k: (parse_fault_value(v) if isinstance(v, str) else v) for k, v in faults.items()}

    def _assign(v, kind):
        if kind == "shuffle":
            plan[v] = ("shuffle", v + 1)
            plan[v + 1] = ("shuffle", v)
        else:
            plan[v] = (kind, None)

    for kind in FAULT_TYPES:
        value = spec.get(kind)
        if value is None or np.isscalar(value):
            continue
        for v in sorted({int(x) for x in value}):
            if not 1 <= v <= n_volumes:
                raise ValueError(f"{kind}: volume {v} is outside 1..{n_volumes}.")
            if v in plan:
                raise ValueError(f"volume {v} has two faults ({plan[v][0]} and {kind}).")
            if kind == "shuffle":
                if v == n_volumes:
                    raise ValueError(f"shuffle: volume {v} is the last one; nothing to swap.")
                if v + 1 in plan:
                    raise ValueError(f"shuffle: volume {v + 1}, the partner of {v}, already "
                                     f"has a fault ({plan[v + 1][0]}).")
            _assign(v, kind)
    rng = np.random.default_rng(seed)
    for kind in FAULT_TYPES:
        value = spec.get(kind)
        if value is None or not np.isscalar(value):
            continue
        rate = float(value)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{kind}: a rate must lie in [0, 1), got {rate!r}.")
        draws = rng.random(n_volumes)
        for v in range(1, n_volumes + 1):
            if draws[v - 1] >= rate or v in plan:
                continue
            if kind == "shuffle" and (v == n_volumes or v + 1 in plan):
                continue
            _assign(v, kind)
    return dict(sorted(plan.items()))


# ----------------------------------------------------------------------------------------
# sinks
# ----------------------------------------------------------------------------------------
def _chunk_bounds(size: int, chunks: int) -> list[int]:
    return [round(size * i / chunks) for i in range(chunks + 1)]


class _FolderSink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def deliver(self, name: str, content: bytes, limit: int, chunks: int,
                pause: Callable[[], bool], retry: bool = True) -> dict:
        """Write ``content[:limit]`` in chunks under ``name``; returns bytes written."""
        bounds = _chunk_bounds(len(content), chunks)
        written = 0
        stopped = False
        # buffering=0: every write() is a system call, visible to a watcher at once
        with open(self.folder / name, "wb", buffering=0) as fh:
            for i in range(chunks):
                lo, hi = bounds[i], min(bounds[i + 1], limit)
                if hi > lo:
                    view = memoryview(content)[lo:hi]
                    while view:
                        n = fh.write(view)
                        written += n
                        view = view[n:]
                if hi >= limit or i == chunks - 1:
                    break
                if not pause():
                    stopped = True
                    break
        return {"bytes_written": written, "stopped": stopped}

    def close(self) -> None:
        pass


class _TcpSink:
    """Framing v2 sender: greeting, tagged frames, signed acknowledgements."""

    def __init__(self, host: str, port: int, connect_timeout: float,
                 stop_event: threading.Event | None, log: Callable[[str], None],
                 key: bytes = b"") -> None:
        self.host, self.port = host, port
        self.connect_timeout = float(connect_timeout)
        self.stop_event = stop_event
        self.log = log
        self.key = key
        self.sock: socket.socket | None = None
        self.nonce = b""
        self.seq = 0
        self.connections = 0
        self._inbox = bytearray()
        #: (connection, seq) -> volume index of the frames sent; -> ack when answered
        self.sent: dict[tuple[int, int], int] = {}
        self.acks: dict[tuple[int, int], dict] = {}
        self.bad_acks = 0

    def _read_acks(self, timeout: float = 0.0) -> bool:
        """Read what the receiver sent; False when it closed the connection."""
        deadline = time.monotonic() + timeout
        while self.sock is not None:
            if timeout > 0.0 and all(k in self.acks for k in self.sent
                                     if k[0] == self.connections):
                return True  # every complete frame of this connection is acknowledged
            try:
                readable, _, _ = select.select(
                    [self.sock], [], [], max(0.0, deadline - time.monotonic()))
                if not readable:
                    return True
                chunk = self.sock.recv(65536)
            except OSError:
                return False
            if not chunk:
                return False
            self._inbox += chunk
            while b"\n" in self._inbox:
                line, _, rest = bytes(self._inbox).partition(b"\n")
                self._inbox = bytearray(rest)
                text, _, tag = line.rpartition(b" ")
                expected = _hmac(self.key, b"rtfb tcp v2 ack\0", self.nonce,
                                 text).hexdigest().encode()
                try:
                    ack = json.loads(text) if hmac.compare_digest(tag, expected) else None
                except ValueError:
                    ack = None
                if not isinstance(ack, dict) or not isinstance(ack.get("seq"), int):
                    self.bad_acks += 1
                    continue
                self.acks[(self.connections, ack["seq"])] = ack
        return self.sock is not None

    def connect(self) -> bool:
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.02
        while True:
            if self.stop_event is not None and self.stop_event.is_set():
                return False
            try:
                sock = socket.create_connection((self.host, self.port), timeout=5.0)
                hello = b""
                while len(hello) < _TCP_HELLO:
                    chunk = sock.recv(_TCP_HELLO - len(hello))
                    if not chunk:
                        raise ConnectionError("closed before its greeting")
                    hello += chunk
                if hello[:4] != TCP_MAGIC or struct.unpack(">I", hello[4:8])[0] != TCP_VERSION:
                    sock.close()
                    raise ConnectionError(f"not an rtfb framing v{TCP_VERSION} receiver")
            except OSError as err:
                if time.monotonic() >= deadline:
                    self.log(f"cannot connect to tcp://{self.host}:{self.port}: {err}")
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock, self.nonce, self.seq = sock, hello[8:], 0
            self._inbox.clear()
            self.connections += 1
            return True

    def close(self, wait_acks: float = 0.0) -> None:
        if self.sock is not None:
            if wait_acks > 0:
                self._read_acks(wait_acks)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None

    def deliver(self, name: str, content: dict, limit: float, chunks: int,
                pause: Callable[[], bool], retry: bool = True,
                damage: Callable[[bytes, int], bytes] | None = None) -> dict:
        """Frame ``content`` (encode_frame arguments) for the current connection and send
        its first ``limit`` fraction of bytes (1.0: whole), ``damage``-d if given.
        """
        resent = False
        for attempt in range(2 if retry else 1):
            if self.sock is not None and not self._read_acks():
                self.log("receiver closed the connection; reconnecting")
                self.close()
            if self.sock is None and not self.connect():
                return {"bytes_written": 0, "stopped": False, "error": "not connected",
                        "connection": None, "resent": resent, "size": 0}
            frame, head = encode_frame(**content, key=self.key, nonce=self.nonce,
                                       seq=self.seq)
            if damage is not None:
                frame = damage(frame, head)
            size = len(frame)
            stop_at = size if limit >= 1.0 else max(1, int(size * limit))
            bounds = _chunk_bounds(size, chunks)
            sent = 0
            key = (self.connections, self.seq)
            self.seq += 1
            try:
                for i in range(chunks):
                    lo, hi = bounds[i], min(bounds[i + 1], stop_at)
                    if hi > lo:
                        self.sock.sendall(memoryview(frame)[lo:hi])
                        sent += hi - lo
                    if hi >= stop_at or i == chunks - 1:
                        break
                    if not pause():
                        return {"bytes_written": sent, "stopped": True, "size": size,
                                "connection": key[0], "seq": key[1], "resent": resent}
            except OSError as err:
                self.log(f"connection lost ({err}); reconnecting")
                self.close()
                if attempt == 0 and retry:
                    resent = True
                    continue
                return {"bytes_written": sent, "stopped": False, "error": str(err),
                        "size": size, "connection": key[0], "seq": key[1], "resent": resent}
            if sent == size:
                self.sent[key] = content["index"]
            self._read_acks()
            return {"bytes_written": sent, "stopped": False, "size": size,
                    "connection": key[0], "seq": key[1], "resent": resent}
        raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------------------
# the stream
# ----------------------------------------------------------------------------------------
@dataclass(order=True)
class _Event:
    time: float
    priority: int
    seq: int
    volume: int = field(compare=False)
    kind: str = field(compare=False)  # write, rewrite, copy, truncate, corrupt


class _Prefetcher:
    """Render output volumes ahead of time in a background thread (bounded)."""

    def __init__(self, render: Callable[[int], _Rendered], order: list[int],
                 ahead: int = 3) -> None:
        self._render = render
        self._order = order
        self._ahead = max(2, int(ahead))
        self._ready: dict[int, _Rendered] = {}
        self._error: BaseException | None = None
        self._done = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="simulator-render",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for v in self._order:
                with self._cond:
                    while len(self._ready) >= self._ahead and not self._done:
                        self._cond.wait()
                    if self._done:
                        return
                item = self._render(v)
                with self._cond:
                    self._ready[v] = item
                    self._cond.notify_all()
        except BaseException as err:  # handed to the consumer
            with self._cond:
                self._error = err
                self._cond.notify_all()

    def get(self, v: int) -> _Rendered:
        with self._cond:
            while v not in self._ready:
                if self._error is not None:
                    raise self._error
                if not self._thread.is_alive() and v not in self._ready:
                    raise RuntimeError(f"volume {v} was not rendered.")  # pragma: no cover
                self._cond.wait(0.1)
            return self._ready[v]

    def release(self, v: int) -> None:
        with self._cond:
            self._ready.pop(v, None)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


def _corrupt(content: bytes, mode: str, rng: np.random.Generator, kind: str,
             header_bytes: int = 0) -> bytes:
    if mode == "random":
        return rng.bytes(len(content))
    out = bytearray(content)
    if kind == "tcp":  # magic and length kept, JSON header garbled
        lo, hi = 8, header_bytes
    elif kind == "nifti":
        lo, hi = 0, min(_NIFTI_HEADER_BYTES, len(out))
    else:  # DICOM: 'DICM' magic and the file meta group
        lo, hi = _DICOM_META_START, min(_DICOM_META_START + 256, len(out))
    out[lo:hi] = rng.bytes(hi - lo)
    if kind == "dicom" and hi - lo >= 4 and out[lo:lo + 4] == b"DICM":
        out[lo:lo + 4] = b"XXXX"  # pragma: no cover - astronomically unlikely
    return bytes(out)


def _copy_name(name: str) -> str:
    for ext in (".nii.gz", ".nii", ".dcm"):
        if name.endswith(ext):
            return name[: -len(ext)] + "_copy" + ext
    return name + "_copy"


def _seconds_after_midnight(epoch: float) -> float:
    now = _dt.datetime.fromtimestamp(epoch)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return (now - midnight).total_seconds()


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def stream(
    source: str | Path | NiftiSource | DicomSource,
    to: str | Path,
    tr: float | None = None,
    *,
    speed: float = 1.0,
    volumes: int | None = None,
    faults: Mapping[str, float | Sequence[int] | str] | None = None,
    fault_seed: int = 0,
    delay_seconds: float | None = None,
    truncate_fraction: float = 0.5,
    corrupt_mode: str = "random",
    duplicate_mode: str = "same",
    chunks: int = 4,
    chunk_pause: float | None = None,
    start_delay: float = 0.0,
    manifest: str | Path | None = None,
    stop_event: threading.Event | None = None,
    connect_timeout: float = 10.0,
    series: str | None = None,
    key: bytes | str | os.PathLike | None = None,
    ack_timeout: float = 5.0,
    log: Callable[[str], None] | None = None,
    first_volume: int = 1,
) -> dict:
    """Stream a run to a folder or a TCP receiver in real time, with optional faults.

    Parameters
    ----------
    source : str | pathlib.Path | NiftiSource | DicomSource
        4D NIfTI file, ``write_subject`` folder (``bold.nii.gz``) or DICOM series folder.
    to : str | pathlib.Path
        Output folder (created if needed) or ``"tcp://HOST:PORT"``.
    tr : float | None
        Repetition time in seconds (default: the source's; required if it has none).
    speed : float
        Time compression: volumes come every ``tr / speed`` real seconds.
    volumes : int | None
        Number of volumes (default: the source's); the source is looped if larger.
    faults : mapping | None
        Fault type -> rate in [0, 1) or 1-based volume numbers (see :func:`plan_faults`).
    fault_seed : int
        Seed of the fault draws and of the random bytes of corrupted volumes.
    delay_seconds : float | None
        Lateness of delayed volumes in scanner seconds (default ``2 * tr``).
    truncate_fraction : float
        Fraction in (0, 1) of the bytes written for a truncated volume.
    corrupt_mode : {"random", "header"}
        How corrupted volumes are damaged.
    duplicate_mode : {"same", "copy"}
        Duplicates rewrite the same file (``same``) or write ``<stem>_copy<ext>``.
    chunks : int
        Number of pieces each file (or frame) is written in.
    chunk_pause : float | None
        Real seconds between pieces (default ``min(0.05, 0.2 * interval / (chunks *
        files_per_volume))``).
    start_delay : float
        Real seconds before the first volume (not scaled by ``speed``).
    manifest : str | pathlib.Path | None
        Manifest path (default ``<to>/../stream_manifest.json``, or
        ``./stream_manifest.json`` for TCP).
    stop_event : threading.Event | None
        Set it (from another thread) to stop; the manifest then says ``interrupted``.
    connect_timeout : float
        Seconds to wait for a TCP receiver at each (re)connection.
    series : str | None
        TCP ``series`` field (default: ``sim-<source name>``).
    key : bytes | str | os.PathLike | None
        TCP: the session's secret key, or its key file (``rtfb run --key FILE``); ``None``
        for a receiver without key.
    ack_timeout : float
        TCP: seconds to wait for the receiver's outstanding acknowledgements before closing
        a connection (after a damaged frame, and at the end).
    log : callable | None
        Called with one line per event (e.g. ``print``).
    first_volume : int
        1-based number of the first volume played (default 1): a run picked up in the
        middle (e.g. to resume a session); earlier volumes get the action ``skipped``
        and the schedule starts with this one.

    Returns
    -------
    dict
        The manifest: ``version``, ``status`` (``completed``, ``interrupted`` or
        ``failed`` with ``error``), source and output description, ``tr``, ``speed``,
        ``interval``, ``n_volumes``, the fault settings and the resolved plan
        (``faults.volumes``), ``t0_unix``, ``timing`` (lateness of writes, ms),
        ``written`` (every file name written, in order) and ``volumes``: one record per
        volume with ``volume`` (1-based), ``index`` (0-based), ``source_volume``,
        ``action`` (written/dropped/duplicated/truncated/delayed/shuffled/corrupted),
        ``swapped_with``, ``planned_time`` (nominal ``start_delay + (volume-1) *
        interval``), ``valid`` (a complete, intact copy exists under the volume's regular
        name / was sent), ``names`` (its regular file names, ``null`` for TCP), and
        ``writes``: every write with ``kind`` (write/rewrite/copy/truncate/corrupt),
        ``file``, ``scheduled_time``, ``started``, ``finished``, ``lateness``, ``size``
        (full size), ``bytes_written``, ``complete`` and for TCP ``connection`` and
        ``resent``.

    Raises
    ------
    KeyboardInterrupt
        Re-raised after the manifest is written with status ``interrupted``.
    """
    log = log or (lambda _msg: None)
    src = source if isinstance(source, NiftiSource | DicomSource) else load_source(source)
    tcp = _parse_tcp(str(to))
    if tcp is not None and src.kind != "nifti":
        raise ValueError("TCP output needs a NIfTI source (the frame carries a 3D array "
                         "and its affine); replay DICOM to a folder instead.")
    tr = src.tr if tr is None else float(tr)
    if tr is None or not np.isfinite(tr) or tr <= 0:
        raise ValueError(f"the source {src.path} has no repetition time; give tr (--tr).")
    speed = float(speed)
    if not np.isfinite(speed) or speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed!r}.")
    n_volumes = src.n_volumes if volumes is None else int(volumes)
    if n_volumes < 1:
        raise ValueError(f"volumes must be >= 1, got {n_volumes}.")
    chunks = int(chunks)
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}.")
    if not 0.0 < float(truncate_fraction) < 1.0:
        raise ValueError(f"truncate_fraction must lie in (0, 1), got {truncate_fraction!r}.")
    if corrupt_mode not in ("random", "header"):
        raise ValueError(f"corrupt_mode must be 'random' or 'header', got {corrupt_mode!r}.")
    if duplicate_mode not in ("same", "copy"):
        raise ValueError(f"duplicate_mode must be 'same' or 'copy', got {duplicate_mode!r}.")
    start_delay = float(start_delay)
    if not np.isfinite(start_delay) or start_delay < 0:
        raise ValueError(f"start_delay must be >= 0, got {start_delay!r}.")
    interval = tr / speed
    files_per_volume = 1 if tcp else getattr(src, "files_per_volume", 1)
    if chunk_pause is None:
        chunk_pause = min(0.05, 0.2 * interval / (chunks * files_per_volume))
    chunk_pause = float(chunk_pause)
    delay_seconds = 2.0 * tr if delay_seconds is None else float(delay_seconds)
    if delay_seconds < 0:
        raise ValueError(f"delay_seconds must be >= 0, got {delay_seconds!r}.")
    first_volume = int(first_volume)
    if not 1 <= first_volume <= n_volumes:
        raise ValueError(f"first_volume must lie in [1, {n_volumes}], got {first_volume}.")
    plan = plan_faults(n_volumes, faults, seed=fault_seed)
    fault_rng_seed = [int(fault_seed), 0x5EED]

    if manifest is None:
        manifest = (Path("stream_manifest.json") if tcp
                    else Path(to).resolve().parent / "stream_manifest.json")
    manifest = Path(manifest)
    series = series or f"sim-{Path(src.path).name.split('.')[0]}"

    # schedule: one or two events per volume
    events: list[_Event] = []
    seq = 0
    for v in range(first_volume, n_volumes + 1):
        nominal = start_delay + (v - first_volume) * interval
        fault, partner = plan.get(v, (None, None))
        todo: list[tuple[float, int, str]] = []
        if fault == "drop":
            pass
        elif fault == "duplicate":
            second = "rewrite" if duplicate_mode == "same" else "copy"
            todo = [(nominal, 0, "write"), (nominal + 0.5 * interval, 1, second)]
        elif fault == "truncate":
            todo = [(nominal, 0, "truncate")]
        elif fault == "corrupt":
            todo = [(nominal, 0, "corrupt")]
        elif fault == "delay":
            todo = [(nominal + delay_seconds / speed, 1, "write")]
        elif fault == "shuffle":
            todo = [(start_delay + (partner - first_volume) * interval, 0, "write")]
        else:
            todo = [(nominal, 0, "write")]
        for t, prio, kind in todo:
            events.append(_Event(t, prio, seq, v, kind))
            seq += 1
    heapq.heapify(events)
    remaining = {}
    for ev in events:
        remaining[ev.volume] = remaining.get(ev.volume, 0) + 1

    records = []
    for v in range(1, n_volumes + 1):
        fault, partner = plan.get(v, (None, None))
        skipped = v < first_volume
        records.append({
            "volume": v, "index": v - 1, "source_volume": (v - 1) % src.n_volumes + 1,
            "action": "skipped" if skipped else ACTIONS.get(fault, "written"),
            "swapped_with": partner,
            "planned_time": round(start_delay + (v - first_volume) * interval, 6),
            "valid": not skipped and fault in (None, "duplicate", "delay", "shuffle"),
            "names": None if tcp else src.names(v), "writes": [],
        })
    resolved = {kind: [v for v, (f, _) in plan.items() if f == kind] for kind in FAULT_TYPES}
    out_desc = (f"tcp://{tcp[0]}:{tcp[1]}" if tcp else str(Path(to).resolve()))
    doc = {
        "version": MANIFEST_VERSION,
        "status": "running",
        "source": str(Path(src.path).resolve()),
        "source_kind": src.kind if src.kind == "nifti" else
        ("dicom-mosaic" if src.mosaic else "dicom-slices"),
        "n_source_volumes": src.n_volumes,
        "files_per_volume": files_per_volume,
        "to": out_desc,
        "output": "tcp" if tcp else "folder",
        "tr": tr, "speed": speed, "interval": interval, "n_volumes": n_volumes,
        "start_delay": float(start_delay), "chunks": chunks, "chunk_pause": chunk_pause,
        "first_volume": first_volume,
        "faults": {
            "requested": {k: v for k, v in (faults or {}).items()},
            "seed": int(fault_seed), "delay_seconds": delay_seconds,
            "truncate_fraction": float(truncate_fraction), "corrupt_mode": corrupt_mode,
            "duplicate_mode": duplicate_mode, "volumes": resolved,
        },
        "times": "real seconds after t0 (time.perf_counter); t0_unix is t0 on the wall clock",
        "t0_unix": None,
        "timing": None,
        "written": [],
        "volumes": records,
    }

    def _json_faults(d):
        return {k: (list(v) if not np.isscalar(v) and not isinstance(v, str) else v)
                for k, v in d.items()}

    doc["faults"]["requested"] = _json_faults(doc["faults"]["requested"])

    if tcp:
        sink = _TcpSink(tcp[0], tcp[1], connect_timeout, stop_event, log,
                        key=read_key(key))
    else:
        sink = _FolderSink(Path(to))
        if any(Path(to).iterdir()):
            log(f"warning: output folder {Path(to)} is not empty; files of the same "
                "names are overwritten")
    clock = TRClock(interval, start_delay=0.0, stop_event=stop_event)
    cache: dict[int, _Rendered] = {}
    prefetch = None if tcp else _Prefetcher(
        lambda v: _Rendered(files=src.render_files(v, tr)),
        list(dict.fromkeys(ev.volume for ev in sorted(events))))

    def _render(v: int) -> _Rendered:
        if prefetch is not None:
            return prefetch.get(v)
        if v not in cache:
            acq = _seconds_after_midnight(doc["t0_unix"] + records[v - 1]["planned_time"])
            cache[v] = _Rendered(frame=src.render_frame(v, tr, acq, series))
        return cache[v]

    def _release(v: int) -> None:
        if prefetch is not None:
            prefetch.release(v)
        cache.pop(v, None)

    status = "interrupted"
    try:
        if tcp and not sink.connect():
            if stop_event is not None and stop_event.is_set():
                raise _Stopped
            raise ConnectionError(f"no TCP receiver at {out_desc} after {connect_timeout} s.")
        if events:  # warm up (load the source, first files) before the clock starts
            if tcp:
                src.volume(0)
            else:
                prefetch.start()
                _render(events[0].volume)
        t0 = clock.start()
        doc["t0_unix"] = time.time() - (time.perf_counter() - t0)
        _write_json_atomic(manifest, doc)
        while events:
            ev = heapq.heappop(events)
            rendered = _render(ev.volume)  # before sleeping: not counted as lateness
            rec = records[ev.volume - 1]
            late = clock.sleep_until(t0 + ev.time, record=False)
            if late is None:
                raise _Stopped
            if tcp:
                items = [(None, rendered.frame)]
            else:
                items = list(rendered.files)
            for j, (name, content) in enumerate(items):
                last = j == len(items) - 1
                kind = ev.kind
                damage = None
                if kind == "corrupt" and last:
                    rng = np.random.default_rng([*fault_rng_seed, ev.volume])
                    if tcp:  # the frame is built for its connection, then damaged
                        def damage(frame, head, rng=rng):
                            return _corrupt(frame, corrupt_mode, rng, "tcp", head)
                    else:
                        content = _corrupt(content, corrupt_mode, rng, src.kind)
                if tcp:  # a fraction: the frame's size depends on the connection
                    limit = float(truncate_fraction) if kind == "truncate" else 1.0
                else:
                    limit = len(content)
                    if kind == "truncate" and last:
                        limit = max(1, int(len(content) * float(truncate_fraction)))
                if kind == "copy" and name is not None:
                    name = _copy_name(name)
                started = clock.elapsed()
                extra = {"damage": damage} if tcp else {}
                res = sink.deliver(name, content, limit, chunks,
                                   lambda: clock.sleep_for(chunk_pause),
                                   retry=kind not in ("truncate", "corrupt"), **extra)
                finished = clock.elapsed()
                size = res["size"] if tcp else len(content)
                write = {
                    "kind": kind if (last or kind in ("write", "rewrite", "copy")) else "write",
                    "file": name, "scheduled_time": round(ev.time, 6),
                    "started": round(started, 6), "finished": round(finished, 6),
                    "lateness": round(started - ev.time, 6) if j == 0 else None,
                    "size": size,
                    "bytes_written": res["bytes_written"],
                    "complete": res["bytes_written"] == size,
                }
                if tcp:
                    write.update(connection=res.get("connection"), seq=res.get("seq"),
                                 resent=res.get("resent"), ack=None)
                    if res.get("error"):
                        write["error"] = res["error"]
                        if kind == "write":  # a failed second send leaves the first valid
                            rec["valid"] = False
                rec["writes"].append(write)
                if name is not None:
                    doc["written"].append(name)
                log(f"vol {ev.volume:5d} {write['kind']:8s} {name or 'frame'} "
                    f"{res['bytes_written']}/{size} B at {started:8.3f} s "
                    f"(+{1e3 * (started - ev.time):6.2f} ms)")
                if res.get("stopped"):
                    raise _Stopped
            if tcp and ev.kind in ("truncate", "corrupt"):
                # the receiver cannot re-synchronise: collect the acknowledgements of the
                # frames before, then start a new connection
                sink.close(wait_acks=ack_timeout)
            remaining[ev.volume] -= 1
            if remaining[ev.volume] == 0:
                _release(ev.volume)
        status = "completed"
    except _Stopped:
        pass
    except Exception as err:
        status = "failed"
        doc["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        if prefetch is not None:
            prefetch.stop()
        if tcp:
            sink.close(wait_acks=ack_timeout if status == "completed" else 0.0)
            counts: dict[str, int] = {}
            for r in records:
                for w in r["writes"]:
                    if w.get("seq") is None:
                        continue
                    ack = sink.acks.get((w["connection"], w["seq"]))
                    w["ack"] = None if ack is None else ack["status"]
                    if w["complete"]:
                        name = "unacknowledged" if ack is None else ack["status"]
                        counts[name] = counts.get(name, 0) + 1
                r["acknowledged"] = any(w.get("ack") in ("accepted", "late")
                                        for w in r["writes"])
            doc["acknowledged"] = counts
            doc["bad_acks"] = sink.bad_acks
        else:
            sink.close()
        doc["status"] = status
        doc["timing"] = TimingReport.from_lateness(
            [w["lateness"] for r in records for w in r["writes"]
             if w["lateness"] is not None]).as_dict("ms")
        _write_json_atomic(manifest, doc)
    doc["manifest"] = str(manifest)
    return doc


class _Stopped(Exception):
    """Internal: a stop request ended the stream."""
