"""TCP framing version 2 (``docs/tcp_protocol.md``): frames, tags, acknowledgements, sender.

Every frame carries two HMAC-SHA256 tags computed with the session's secret key and the
connection's nonce (sent by the receiver when it accepts the connection): one over the
header, checked before anything is allocated for the payload, and one over header and
payload. The receiver answers every authenticated frame with a signed acknowledgement line
saying what became of it. :class:`TCPSender` implements the sending side.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import numbers
import re
import select
import socket
import struct
import time
from typing import Any

import numpy as np

from .._utils.checks import _validate_type, check_int

__all__ = ["ACK_STATUSES", "FrameError", "HELLO", "MAGIC", "TAG_BYTES", "TCPSender", "VERSION",
           "ack_line", "encode_frame", "frame_mac", "header_tag", "parse_ack", "parse_header"]

MAGIC = b"RTFB"
VERSION = 2
MAX_HEADER = 65536
NONCE_BYTES = 16
TAG_BYTES = 32
#: receiver greeting: magic, version (u32 big-endian), connection nonce
HELLO = struct.Struct(">4sI16s")
PREFIX = struct.Struct(">4sI")
#: dtype strings allowed on the wire (little-endian), by (kind, itemsize)
DTYPES = {"<u1": ("u", 1), "<i2": ("i", 2), "<u2": ("u", 2), "<i4": ("i", 4),
          "<f4": ("f", 4), "<f8": ("f", 8)}
HEADER_KEYS = frozenset({"version", "seq", "index", "shape", "dtype", "nbytes", "affine", "tr",
                         "acquisition_time", "series"})
#: what an acknowledgement says became of a frame
ACK_STATUSES = ("accepted", "late", "duplicate", "out_of_range", "implausible", "other_series",
                "refused")
MAX_ACK_LINE = 4096
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_CTX_HEADER = b"rtfb tcp v2 header\0"
_CTX_FRAME = b"rtfb tcp v2 frame\0"
_CTX_ACK = b"rtfb tcp v2 ack\0"


class FrameError(ValueError):
    """A frame breaks the framing rules (message says which)."""


# -- tags ----------------------------------------------------------------------------------
def header_tag(key: bytes, nonce: bytes, prefix: bytes, header: bytes) -> bytes:
    """Tag following the header: HMAC-SHA256 of context, nonce, prefix and header."""
    return hmac.new(key, _CTX_HEADER + nonce + prefix + header, hashlib.sha256).digest()


def frame_mac(key: bytes, nonce: bytes, prefix: bytes, header: bytes):
    """HMAC object of the frame tag; ``update`` it with the payload, then ``digest``."""
    return hmac.new(key, _CTX_FRAME + nonce + prefix + header, hashlib.sha256)


def ack_line(key: bytes, nonce: bytes, seq: int, index: int | None, status: str,
             reason: str | None = None) -> bytes:
    """One acknowledgement: compact JSON, a space, its hex tag, a newline."""
    body = {"seq": seq, "index": index, "status": status}
    if reason:
        body["reason"] = reason[:300]
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    tag = hmac.new(key, _CTX_ACK + nonce + text, hashlib.sha256).hexdigest().encode("ascii")
    return text + b" " + tag + b"\n"


def parse_ack(line: bytes, key: bytes, nonce: bytes) -> dict:
    """Check and decode one acknowledgement line (without its newline)."""
    text, _, tag = line.rstrip(b"\r\n").rpartition(b" ")
    expected = hmac.new(key, _CTX_ACK + nonce + text, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(tag, expected):
        raise FrameError("acknowledgement with a bad tag (not from the receiver holding the key)")
    try:
        ack = json.loads(text)
    except ValueError:
        raise FrameError("acknowledgement is not JSON") from None
    if not isinstance(ack, dict) or ack.get("status") not in ACK_STATUSES:
        raise FrameError("acknowledgement without a known status")
    return ack


# -- encoding ----------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    if not isinstance(x, numbers.Real) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _wire_dtype(dtype: np.dtype) -> str:
    for name, (kind, size) in DTYPES.items():
        if dtype.kind == kind and dtype.itemsize == size:
            return name
    raise ValueError(f"array dtype {dtype} cannot be sent; allowed: {sorted(DTYPES)} "
                     f"(convert it, e.g. array.astype(np.float32)).")


def encode_frame(array: Any, affine: Any, index: int, tr: float | None = None, *,
                 acquisition_time: float | None = None, series: str | None = None,
                 key: bytes = b"", nonce: bytes = bytes(NONCE_BYTES), seq: int = 0) -> bytes:
    """Encode one volume as a version-2 frame.

    Parameters
    ----------
    array : array-like, shape (X, Y, Z)
        Voxel values; dtype one of uint8, int16, uint16, int32, float32, float64 (sent
        little-endian).
    affine : array-like, shape (4, 4)
        Voxel to RAS+ mm transform (finite).
    index : int
        0-based volume index.
    tr, acquisition_time : float | None
        Repetition time (s) and acquisition time (s after midnight).
    series : str | None
        Series identifier.
    key : bytes
        The session's secret key (``b""``: a receiver without key, loopback only).
    nonce : bytes
        The connection's nonce, from the receiver's greeting.
    seq : int
        Frames sent before this one on the connection.

    Returns
    -------
    bytes
        Prefix, header, header tag, payload, frame tag.
    """
    array = np.asarray(array)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"array must be 3D with every dimension >= 1, got shape "
                         f"{array.shape}.")
    dtype = _wire_dtype(array.dtype)
    payload = np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4x4 array, got shape {affine.shape}.")
    index = check_int(index, "index", 0)
    for name, value in (("tr", tr), ("acquisition_time", acquisition_time)):
        if value is not None and not _is_number(value):
            raise ValueError(f"{name} must be a finite number or None, got {value!r}.")
    if series is not None:
        _validate_type(series, str, "series")
    header = {"version": VERSION, "seq": check_int(seq, "seq", 0), "index": index,
              "shape": list(array.shape), "dtype": dtype, "nbytes": len(payload),
              "affine": affine.tolist(), "tr": None if tr is None else float(tr),
              "acquisition_time": None if acquisition_time is None
              else float(acquisition_time),
              "series": series}
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(text) > MAX_HEADER:
        raise ValueError(f"header of {len(text)} bytes exceeds {MAX_HEADER} (series too long?).")
    prefix = PREFIX.pack(MAGIC, len(text))
    mac = frame_mac(key, nonce, prefix, text)
    mac.update(payload)
    return b"".join((prefix, text, header_tag(key, nonce, prefix, text), payload,
                     mac.digest()))


# -- decoding ----------------------------------------------------------------------------------
def _reject_constant(name: str) -> None:
    raise FrameError(f"header is not strict JSON ({name})")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise FrameError(f"header repeats key {key!r}")
        out[key] = value
    return out


def parse_header(raw: bytes, max_bytes: int) -> dict:
    """Decode and validate a frame header; raise :class:`FrameError` naming the problem."""
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                            object_pairs_hook=_unique_pairs)
    except FrameError:
        raise
    except UnicodeDecodeError as err:
        raise FrameError(f"header is not UTF-8 (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise FrameError(f"header is not JSON ({err.msg} at char {err.pos})") from None
    except RecursionError:
        raise FrameError("header is not JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer with more digits than Python accepts
        raise FrameError(f"header is not acceptable JSON ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise FrameError(f"header is a JSON {type(header).__name__}, not an object")
    unknown = set(header) - HEADER_KEYS
    if unknown:
        # field names only (identifier-like, short), never values: an unknown key may carry
        # identifying information
        names = sorted(k if _FIELD_NAME.fullmatch(k) else "<non-identifier>" for k in unknown)
        shown = ", ".join(repr(k) for k in names[:5]) + (", ..." if len(names) > 5 else "")
        raise FrameError(f"header has unknown key(s) {shown}")
    missing = HEADER_KEYS - set(header)
    if missing:
        raise FrameError(f"header lacks key(s) {sorted(missing)}")
    version = header["version"]
    if not _is_int(version) or version != VERSION:
        raise FrameError(f"unsupported framing version (expected {VERSION})")
    for key in ("seq", "index"):
        if not _is_int(header[key]) or header[key] < 0:
            raise FrameError(f"{key} must be an integer >= 0")
    shape = header["shape"]
    if not (isinstance(shape, list) and len(shape) == 3
            and all(_is_int(s) and s >= 1 for s in shape)):
        raise FrameError("shape must be a list of 3 integers >= 1")
    dtype = header["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FrameError(f"dtype must be one of {sorted(DTYPES)}")
    nbytes = header["nbytes"]
    if not _is_int(nbytes):
        raise FrameError("nbytes must be an integer")
    expected = math.prod(shape) * DTYPES[dtype][1]
    if nbytes != expected:
        raise FrameError(f"nbytes={nbytes} does not match shape {shape} and dtype {dtype} "
                         f"({expected} bytes)")
    if nbytes > max_bytes:
        raise FrameError(f"payload of {nbytes} bytes exceeds the limit of {max_bytes} bytes")
    affine = header["affine"]
    if not (isinstance(affine, list) and len(affine) == 4
            and all(isinstance(r, list) and len(r) == 4 and all(_is_number(v) for v in r)
                    for r in affine)):
        raise FrameError("affine must be a 4x4 list of finite numbers")
    for key in ("tr", "acquisition_time"):
        if header[key] is not None and not _is_number(header[key]):
            raise FrameError(f"{key} must be a number or null")
    if header["series"] is not None and not isinstance(header["series"], str):
        raise FrameError("series must be a string or null")
    return header


# -- sending -----------------------------------------------------------------------------------
class TCPSender:
    """Send volumes to a :class:`~rtfb.ingest.TCPReceiver` and collect its acknowledgements.

    Parameters
    ----------
    address : tuple
        ``(host, port)`` of the receiver.
    key : bytes | None
        The session's secret key (``rtfb run --key FILE``); ``None`` for a receiver
        without key (loopback only).
    timeout : float
        Seconds to connect, to receive the greeting, and to send a frame.

    Attributes
    ----------
    acks : dict
        ``seq -> acknowledgement`` (``{"seq", "index", "status", "reason"?}``) received so far.
    sent : dict
        ``seq -> index`` of the frames sent.
    """

    def __init__(self, address: tuple[str, int], key: bytes | None = None, *,
                 timeout: float = 10.0) -> None:
        self.address = (str(address[0]), int(address[1]))
        self.key = b"" if key is None else bytes(key)
        self.timeout = float(timeout)
        self.sock: socket.socket | None = None
        self.nonce: bytes | None = None
        self.seq = 0
        self.sent: dict[int, int] = {}
        self.acks: dict[int, dict] = {}
        self._inbox = bytearray()

    def connect(self) -> TCPSender:
        """Connect and read the receiver's greeting (its nonce); returns self.

        A receiver whose connection slots are all busy closes new connections at once;
        this retries (with backoff) for up to ``timeout`` seconds.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while True:
            try:
                return self._connect_once()
            except ConnectionError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.5)

    def _connect_once(self) -> TCPSender:
        sock = socket.create_connection(self.address, timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello = b""
            while len(hello) < HELLO.size:
                try:
                    chunk = sock.recv(HELLO.size - len(hello))
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    raise ConnectionError("the receiver closed the connection before its "
                                          "greeting (all connection slots busy?)")
                hello += chunk
            magic, version, nonce = HELLO.unpack(hello)
            if magic != MAGIC or version != VERSION:
                raise ConnectionError(f"not an rtfb receiver speaking framing version "
                                      f"{VERSION} (greeting {hello[:8]!r})")
        except BaseException:
            sock.close()
            raise
        self.sock, self.nonce, self.seq = sock, nonce, 0
        self._inbox.clear()
        return self

    def send(self, array: Any, affine: Any, index: int, tr: float | None = None, *,
             acquisition_time: float | None = None, series: str | None = None) -> int:
        """Send one volume; returns its sequence number on this connection.

        Connects first if needed (after the receiver closed the connection, a new one
        with a new nonce: sequence numbers start again at 0).
        """
        if self.sock is None:
            self.connect()
        frame = encode_frame(array, affine, index, tr, acquisition_time=acquisition_time,
                             series=series, key=self.key, nonce=self.nonce, seq=self.seq)
        self.sock.sendall(frame)
        seq = self.seq
        self.sent[seq] = index
        self.seq += 1
        self.poll(0.0)
        return seq

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Read the acknowledgements that arrived (waiting up to ``timeout`` s for one)."""
        new = []
        deadline = time.monotonic() + timeout
        while self.sock is not None:
            wait = max(0.0, deadline - time.monotonic()) if not new else 0.0
            try:
                ready, _, _ = select.select([self.sock], [], [], wait)
                if not ready:
                    break
                chunk = self.sock.recv(65536)
            except OSError:  # reset: the receiver refused a frame and closed
                chunk = b""
            if not chunk:  # closed: nothing more will be acknowledged on this connection
                self.close()
                break
            self._inbox += chunk
            while b"\n" in self._inbox:
                line, _, rest = bytes(self._inbox).partition(b"\n")
                self._inbox = bytearray(rest)
                ack = parse_ack(line, self.key, self.nonce)
                self.acks[ack["seq"]] = ack
                new.append(ack)
            if len(self._inbox) > MAX_ACK_LINE:
                raise FrameError("acknowledgement line too long")
        return new

    def wait_for(self, seq: int, timeout: float = 10.0) -> dict | None:
        """The acknowledgement of frame ``seq`` (None if none came within ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while seq not in self.acks and self.sock is not None \
                and time.monotonic() < deadline:
            self.poll(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.acks.get(seq)

    def close(self) -> None:
        """Close the connection."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> TCPSender:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()
