"""TCP volume stream (framing version 1, ``docs/tcp_protocol.md``): receiver and client helper.

:class:`TCPReceiver` runs one acquisition thread that serves every connection with
:mod:`selectors` (non-blocking sockets, at most ``max_connections`` at once), parses frames
incrementally, validates each header before allocating its payload (never more than
``max_bytes``), reads payloads straight into their buffer in chunks of at most 1 MiB, and
hands the volumes, ordered by index like the folder watcher
(:class:`~rtfb.ingest.ordering.VolumeOrderer`), through a bounded queue to the processing
thread. A frame that breaks the protocol is refused with one log line naming the peer and the
problem, and its connection is closed; the receiver keeps serving.

:func:`send_volume` and :func:`encode_frame` implement the sending side.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._utils.checks import _validate_type, check_int, check_positive_number
from ._handoff import IngestStats, VolumeTiming, _Handoff
from .ordering import DUPLICATE, IMPLAUSIBLE, Late, Missing, refusal_message
from .volume import Volume

__all__ = ["MAGIC", "TCPReceiver", "encode_frame", "send_volume"]

logger = logging.getLogger("rtfb.ingest")

MAGIC = b"RTFB"
VERSION = 1
MAX_HEADER = 65536
#: dtype strings allowed on the wire (little-endian), by (kind, itemsize)
DTYPES = {"<u1": ("u", 1), "<i2": ("i", 2), "<u2": ("u", 2), "<i4": ("i", 4),
          "<f4": ("f", 4), "<f8": ("f", 8)}
HEADER_KEYS = frozenset({"version", "index", "shape", "dtype", "nbytes", "affine", "tr",
                         "acquisition_time", "series"})
_PREFIX = struct.Struct(">4sI")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_CHUNK = 1 << 20  # bytes per recv

# parser states
_S_PREFIX, _S_HEADER, _S_PAYLOAD = "prefix", "header", "payload"


class FrameError(ValueError):
    """A frame breaks the framing rules (message says which)."""


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
                 acquisition_time: float | None = None, series: str | None = None) -> bytes:
    """Encode one volume as a frame (magic, header length, JSON header, C-order payload).

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

    Returns
    -------
    bytes
    """
    array = np.asarray(array)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"array must be 3D with every dimension >= 1, got shape "
                         f"{array.shape}.")
    dtype = _wire_dtype(array.dtype)
    payload = np.ascontiguousarray(array, dtype=np.dtype(dtype))
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4x4 array, got shape {affine.shape}.")
    index = check_int(index, "index", 0)
    for name, value in (("tr", tr), ("acquisition_time", acquisition_time)):
        if value is not None and not _is_number(value):
            raise ValueError(f"{name} must be a finite number or None, got {value!r}.")
    if series is not None:
        _validate_type(series, str, "series")
    header = {"version": VERSION, "index": index, "shape": list(array.shape), "dtype": dtype,
              "nbytes": payload.nbytes, "affine": affine.tolist(),
              "tr": None if tr is None else float(tr),
              "acquisition_time": None if acquisition_time is None
              else float(acquisition_time),
              "series": series}
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(text) > MAX_HEADER:
        raise ValueError(f"header of {len(text)} bytes exceeds {MAX_HEADER} (series too long?).")
    return b"".join((_PREFIX.pack(MAGIC, len(text)), text, payload.tobytes()))


def send_volume(sock_or_address: socket.socket | tuple[str, int], array: Any, affine: Any,
                index: int, tr: float | None = None, *, acquisition_time: float | None = None,
                series: str | None = None, timeout: float = 10.0) -> None:
    """Send one volume to a :class:`TCPReceiver`.

    Parameters
    ----------
    sock_or_address : socket.socket | tuple
        A connected socket (kept open, to send many frames on it) or a ``(host, port)``
        address (a connection is opened for this frame and closed).
    array, affine, index, tr, acquisition_time, series
        See :func:`encode_frame`.
    timeout : float
        Connection and send timeout in seconds when an address is given.
    """
    frame = encode_frame(array, affine, index, tr, acquisition_time=acquisition_time,
                         series=series)
    if isinstance(sock_or_address, socket.socket):
        sock_or_address.sendall(frame)
        return
    if not (isinstance(sock_or_address, tuple) and len(sock_or_address) == 2):
        raise TypeError(f"sock_or_address must be a socket or a (host, port) tuple, got "
                        f"{sock_or_address!r}.")
    with socket.create_connection(sock_or_address, timeout=timeout) as sock:
        sock.sendall(frame)


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
    if not _is_int(header["index"]) or header["index"] < 0:
        raise FrameError("index must be an integer >= 0")
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
        raise FrameError(f"payload of {nbytes} bytes exceeds max_bytes={max_bytes}")
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


@dataclass
class _Conn:
    sock: socket.socket
    peer: str
    state: str = _S_PREFIX
    buf: Any = None  # bytearray being filled
    pos: int = 0
    header: dict | None = None
    frame_start: float = 0.0
    n_frames: int = 0

    def expect(self, state: str, n: int) -> None:
        self.state, self.buf, self.pos = state, bytearray(n), 0


def _peer_name(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return str(addr)


class TCPReceiver:
    """Receive volumes over TCP (``docs/tcp_protocol.md``) and queue them in index order.

    Parameters
    ----------
    host : str
        Interface to bind (default loopback only).
    port : int
        Port to bind; 0 picks a free one (see :attr:`address` after :meth:`start`).
    queue_size : int
        Capacity of the queue read by :meth:`get`. When it is full the acquisition thread
        waits and stops reading the sockets, so TCP flow control slows the senders down;
        nothing is dropped.
    max_bytes : int
        Largest payload accepted (default 512 MiB); a header announcing more is refused
        before anything is allocated.
    gap_timeout : float
        Seconds a missing index may stay missing after a later volume arrived before it is
        reported as :class:`~rtfb.ingest.ordering.Missing`.
    series : str | None
        Series to follow; ``None`` follows the series of the first frame.
    first_index : int | None
        Index of the first volume expected (default 0); ``None``: the first received.
    max_connections : int
        Connections served at once; more are accepted and closed at once with a log line.
    max_pending, max_ahead, max_timings : int
        See :class:`~rtfb.ingest.watcher.FolderWatcher`.
    tr : float | None
        Repetition time (s): bounds how far ahead a frame's index may plausibly be (see
        :class:`~rtfb.ingest.ordering.VolumeOrderer`).

    Notes
    -----
    ``stats.malformed`` counts refused frames, ``stats.connections`` accepted connections.
    Memory is bounded by ``max_connections * max_bytes`` (a slow sender holds its payload
    buffer until its frame is complete).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, queue_size: int = 32,
                 max_bytes: int = 512 * 2**20, gap_timeout: float = 3.0,
                 series: str | None = None, first_index: int | None = 0,
                 max_connections: int = 8, max_pending: int = 64, max_ahead: int = 1000,
                 max_timings: int = 100_000, tr: float | None = None) -> None:
        _validate_type(host, str, "host")
        self.host = host
        self.port = check_int(port, "port", 0)
        self.max_bytes = check_int(max_bytes, "max_bytes", 1)
        self.max_connections = check_int(max_connections, "max_connections", 1)
        check_positive_number(gap_timeout, "gap_timeout")
        if series is not None:
            _validate_type(series, str, "series")
        self._series = series
        self._series_chosen = series is not None
        self._stop_event = threading.Event()
        self._handoff = _Handoff(
            queue_size=check_int(queue_size, "queue_size", 1), gap_timeout=gap_timeout,
            first_index=first_index, max_pending=max_pending, max_ahead=max_ahead,
            max_timings=check_int(max_timings, "max_timings", 1),
            stop_event=self._stop_event, name="tcp", tr=tr)
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, _Conn] = {}
        self.address: tuple | None = None

    # -- public API --------------------------------------------------------------------------
    def start(self) -> TCPReceiver:
        """Bind, listen and start the acquisition thread; return self."""
        if self._thread is not None:
            raise RuntimeError("TCPReceiver.start() was already called; create a new one.")
        self._listener = socket.create_server((self.host, self.port),
                                              backlog=self.max_connections)
        self._listener.setblocking(False)
        self.address = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="rtfb-tcp", daemon=True)
        self._thread.start()
        logger.info("tcp: listening on %s", _peer_name(self.address))
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every connection (items already queued stay available)."""
        self._stop_event.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("tcp: thread still busy %.1f s after stop()", timeout)

    def get(self, timeout: float | None = None) -> Volume | Missing | Late:
        """Next item: a :class:`Volume` in index order, or a ``Missing`` or ``Late`` event.

        Raises
        ------
        queue.Empty
            Nothing arrived within ``timeout`` seconds, or the receiver is stopped and its
            queue is empty.
        """
        return self._handoff.get(timeout, lambda: self.running)

    @property
    def running(self) -> bool:
        """Whether the acquisition thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def series(self) -> str | None:
        """Series followed (given, or of the first frame)."""
        return self._series

    @property
    def stats(self) -> IngestStats:
        """Snapshot of the counters and timings (thread-safe)."""
        return self._handoff.stats()

    def drain_notices(self) -> list[dict]:
        """Events for the session record since the last call (see
        :meth:`rtfb.ingest.FolderWatcher.drain_notices`).
        """
        return self._handoff.drain_notices()

    def timing(self, index: int) -> VolumeTiming | None:
        """Time stamps of the delivered volume ``index`` (cheap: for the session record).

        None if it was not delivered (yet) or is older than the last ``max_timings``.
        """
        return self._handoff.timing(index)

    def __enter__(self) -> TCPReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = _peer_name(self.address) if self.address else "unbound"
        return f"<TCPReceiver {where} {'running' if self.running else 'stopped'}>"

    # -- acquisition thread ------------------------------------------------------------------
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop_event.is_set():
                try:
                    events = sel.select(self._handoff.time_to_deadline(0.5))
                    for key, _ in events:
                        if self._stop_event.is_set():
                            break
                        if key.data == "listen":
                            self._accept(sel)
                        elif key.data == "wake":
                            continue
                        else:
                            self._read(sel, key.data)
                    self._handoff.flush()
                except Exception as err:  # never let the thread die
                    logger.error("tcp: unexpected error, serving goes on: %s: %s",
                                 type(err).__name__, err, exc_info=True)
                    time.sleep(0.01)
        finally:
            for conn in list(self._conns.values()):
                if conn.state != _S_PREFIX or conn.pos:
                    logger.warning("tcp: %s: connection closed by stop() mid-frame",
                                   conn.peer)
                self._close(sel, conn)
            sel.close()
            for s in (self._listener, self._wake_r, self._wake_w):
                s.close()
            self._handoff.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        peer = _peer_name(addr)
        if len(self._conns) >= self.max_connections:
            logger.warning("tcp: %s: refused: already %d connections (max_connections)",
                           peer, len(self._conns))
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(sock, peer)
        conn.expect(_S_PREFIX, _PREFIX.size)
        self._conns[sock] = conn
        sel.register(sock, selectors.EVENT_READ, conn)
        logger.info("tcp: %s: connected", peer)
        self._handoff.count("connections")

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        self._conns.pop(conn.sock, None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.buf = None

    def _refuse(self, sel: selectors.BaseSelector, conn: _Conn, problem: str) -> None:
        logger.warning("tcp: %s: frame refused, connection closed: %s", conn.peer, problem)
        self._handoff.count("malformed")
        self._close(sel, conn)

    def _read(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        need = len(conn.buf) - conn.pos
        view = memoryview(conn.buf)[conn.pos:conn.pos + min(need, _CHUNK)]
        reason = ""
        try:
            n = conn.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            n = -1
            reason = f"{type(err).__name__}: {err.strerror or err}"
        finally:
            view.release()
        if n <= 0:
            if conn.state == _S_PREFIX and conn.pos == 0:
                logger.info("tcp: %s: disconnected after %d frame(s)", conn.peer,
                            conn.n_frames)
                self._close(sel, conn)
            else:
                what = "connection closed" if n == 0 else f"connection error ({reason})"
                self._refuse(sel, conn, f"{what} mid-frame ({conn.state}: got {conn.pos} of "
                                        f"{len(conn.buf)} bytes)")
            return
        if conn.state == _S_PREFIX and conn.pos == 0:
            conn.frame_start = time.perf_counter()
        conn.pos += n
        if conn.state == _S_PREFIX and conn.pos - n < 4 and \
                bytes(conn.buf[:min(conn.pos, 4)]) != MAGIC[:conn.pos]:
            self._refuse(sel, conn, "bad magic (expected b'RTFB')")
            return
        if conn.pos < len(conn.buf):
            return
        if conn.state == _S_PREFIX:
            _, length = _PREFIX.unpack(conn.buf)
            if not 1 <= length <= MAX_HEADER:
                self._refuse(sel, conn, f"header length {length} outside 1..{MAX_HEADER}")
                return
            conn.expect(_S_HEADER, length)
        elif conn.state == _S_HEADER:
            try:
                conn.header = parse_header(bytes(conn.buf), self.max_bytes)
            except FrameError as err:
                self._refuse(sel, conn, str(err))
                return
            conn.expect(_S_PAYLOAD, conn.header["nbytes"])
        else:
            self._frame_complete(sel, conn)

    def _frame_complete(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        header, payload, seen = conn.header, conn.buf, conn.frame_start
        conn.n_frames += 1
        conn.header = None
        conn.expect(_S_PREFIX, _PREFIX.size)
        try:
            data = np.frombuffer(payload, dtype=np.dtype(header["dtype"]))
            volume = Volume(data=data.reshape(header["shape"]), affine=header["affine"],
                            index=header["index"], acquisition_time=header["acquisition_time"],
                            tr=header["tr"], source="tcp", series=header["series"],
                            header={"format": "tcp"})
        except ValueError as err:
            self._refuse(sel, conn, f"invalid volume ({err})")
            return
        complete = time.perf_counter()
        if not self._series_chosen:
            self._series, self._series_chosen = volume.series, True
        elif volume.series != self._series:
            logger.warning("tcp: %s: volume %d ignored: belongs to another series than the "
                           "one followed", conn.peer, volume.index)
            self._handoff.count("other_series")
            return
        status = self._handoff.submit(volume, seen=seen, complete=complete)
        message = refusal_message(status, self._handoff.orderer, volume.index,
                                  time.perf_counter())
        if message is not None:
            logger.warning("tcp: %s: %s", conn.peer, message)
            self._handoff.count("duplicates" if status == DUPLICATE else "out_of_range")
            if status == IMPLAUSIBLE:
                self._handoff.notice("implausible", f"tcp frame from {conn.peer}: {message}",
                                     index=volume.index)
