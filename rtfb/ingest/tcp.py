"""TCP volume receiver (framing version 2, ``docs/tcp_protocol.md``).

:class:`TCPReceiver` runs one acquisition thread that serves every connection with
:mod:`selectors` (non-blocking sockets). It greets each connection with a random nonce,
checks the HMAC tag of every header before allocating anything for its payload, reads
payloads straight into their buffer in chunks of at most 1 MiB, checks the frame's tag, and
hands the volumes, ordered by index like the folder watcher
(:class:`~rtfb.ingest.ordering.VolumeOrderer`), through a bounded queue to the processing
thread. It answers every authenticated frame with a signed acknowledgement saying what
became of it. A frame that breaks the protocol or fails its tag is refused with one log line
naming the peer and the problem, never stored, and its connection is closed; the receiver
keeps serving.

Resources are bounded whatever clients do: a connection must authenticate (send a header
with a valid tag) within ``auth_timeout`` seconds; a connection that stops sending mid-frame
is closed after ``idle_timeout`` seconds; when every slot is taken, a new connection evicts
the oldest one that has not authenticated, so idle or hostile clients cannot lock out the
scanner; a payload larger than the locked geometry (the first volume's size, or
``max_bytes`` before it) is refused before any allocation.

The sending side is :class:`~rtfb.ingest.tcp_framing.TCPSender` (and :func:`send_volume`).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._utils.checks import _validate_type, check_int, check_positive_number
from .._utils.net import is_loopback
from .._utils.text import escape_control
from ._handoff import AcquisitionSource, _Handoff
from .ordering import DUPLICATE, IMPLAUSIBLE, refusal_message
from .tcp_framing import (
    HELLO,
    MAGIC,
    MAX_HEADER,
    NONCE_BYTES,
    PREFIX,
    TAG_BYTES,
    VERSION,
    FrameError,
    TCPSender,
    ack_line,
    encode_frame,
    frame_mac,
    header_tag,
    parse_header,
)
from .volume import Volume

__all__ = ["MAGIC", "FrameError", "TCPReceiver", "TCPSender", "encode_frame", "parse_header",
           "send_volume"]

logger = logging.getLogger("rtfb.ingest")

_CHUNK = 1 << 20  # bytes per recv
_MAX_OUT = 1 << 20  # acknowledgement bytes a peer may leave unread before it is dropped
_EVICT_GRACE = 0.5  # seconds a new connection has before it may be evicted

# parser states
_S_PREFIX, _S_HEADER, _S_HTAG, _S_PAYLOAD, _S_FTAG = ("prefix", "header", "header tag",
                                                      "payload", "frame tag")


def send_volume(sender_or_address: TCPSender | tuple[str, int], array: Any, affine: Any,
                index: int, tr: float | None = None, *, acquisition_time: float | None = None,
                series: str | None = None, key: bytes | None = None,
                timeout: float = 10.0) -> dict | None:
    """Send one volume to a :class:`TCPReceiver` and return its acknowledgement.

    Parameters
    ----------
    sender_or_address : TCPSender | tuple
        A connected :class:`~rtfb.ingest.tcp_framing.TCPSender` (kept open, to send many
        frames) or a ``(host, port)`` address (a connection is opened for this frame).
    array, affine, index, tr, acquisition_time, series
        See :func:`~rtfb.ingest.tcp_framing.encode_frame`.
    key : bytes | None
        The receiver's key (address only; a sender has its own).
    timeout : float
        Seconds to connect, send and wait for the acknowledgement.

    Returns
    -------
    dict | None
        The acknowledgement (``status`` ``"accepted"`` when the volume was handed to the
        session), or None if none arrived within ``timeout``.
    """
    if isinstance(sender_or_address, TCPSender):
        seq = sender_or_address.send(array, affine, index, tr,
                                     acquisition_time=acquisition_time, series=series)
        return sender_or_address.wait_for(seq, timeout)
    if not (isinstance(sender_or_address, tuple) and len(sender_or_address) == 2):
        raise TypeError(f"sender_or_address must be a TCPSender or a (host, port) tuple, got "
                        f"{sender_or_address!r}.")
    with TCPSender(sender_or_address, key, timeout=timeout) as sender:
        seq = sender.send(array, affine, index, tr, acquisition_time=acquisition_time,
                          series=series)
        return sender.wait_for(seq, timeout)


@dataclass
class _Conn:
    sock: socket.socket
    peer: str
    nonce: bytes
    accepted_at: float
    state: str = _S_PREFIX
    buf: Any = None  # bytearray being filled
    pos: int = 0
    prefix: bytes = b""
    header_raw: bytes = b""
    header: dict | None = None
    payload: Any = None
    mac: Any = None
    frame_start: float = 0.0
    last_activity: float = 0.0
    n_frames: int = 0
    authenticated: bool = False
    out: bytearray = field(default_factory=bytearray)
    writing: bool = False

    def expect(self, state: str, n: int) -> None:
        self.state, self.buf, self.pos = state, bytearray(n), 0

    @property
    def mid_frame(self) -> bool:
        return self.state != _S_PREFIX or self.pos > 0


def _peer_name(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return str(addr)


class TCPReceiver(AcquisitionSource):
    """Receive volumes over TCP (``docs/tcp_protocol.md``) and queue them in index order.

    Parameters
    ----------
    host : str
        Interface to bind (default loopback only). Another interface needs a ``key``.
    port : int
        Port to bind; 0 picks a free one (see :attr:`address` after :meth:`start`).
    key : bytes | None
        Secret key shared with the sender (``rtfb run --key FILE``); frames whose tags do
        not match are refused. ``None`` uses the empty key, which anyone can compute: a
        receiver without key, accepted on a loopback interface only.
    queue_size : int
        Capacity of the queue read by :meth:`get`. When it is full the acquisition thread
        waits and stops reading the sockets, so TCP flow control slows the senders down;
        nothing is dropped.
    max_bytes : int
        Largest payload accepted before the first volume (default 512 MiB); afterwards a
        frame may not hold more than the first volume's number of voxels (at 8 bytes each).
        Larger ones are refused before anything is allocated.
    gap_timeout : float
        Seconds a missing index may stay missing after a later volume arrived before it is
        reported as :class:`~rtfb.ingest.ordering.Missing`.
    series : str | None
        Series to follow; ``None`` follows the series of the first frame.
    first_index : int | None
        Index of the first volume expected (default 0); ``None``: the first received.
    max_connections : int
        Connections served at once. When all are taken, a new connection evicts the oldest
        one that has not authenticated yet and has been connected for at least 0.5 s (or is
        closed if there is none: the sender retries).
    auth_timeout : float
        Seconds a connection has, from its acceptance, to send an authenticated header.
    idle_timeout : float
        Seconds a connection may stay silent in the middle of a frame.
    max_pending, max_ahead, max_timings : int
        See :class:`~rtfb.ingest.watcher.FolderWatcher`.
    tr : float | None
        Repetition time (s): bounds how far ahead a frame's index may plausibly be (see
        :class:`~rtfb.ingest.ordering.VolumeOrderer`).

    Attributes
    ----------
    refused : dict
        Counters of closed connections by cause: ``unauthenticated`` (bad tag),
        ``auth_timeout``, ``idle``, ``evicted``, ``full``, ``too_large``.

    Notes
    -----
    ``stats.malformed`` counts refused frames, ``stats.connections`` accepted connections.
    Memory is bounded by ``max_connections * 64 KiB`` for connections that have not
    authenticated, plus one payload of the locked geometry per authenticated connection.
    """

    _log_name = "tcp"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, key: bytes | None = None,
                 queue_size: int = 32, max_bytes: int = 512 * 2**20, gap_timeout: float = 3.0,
                 series: str | None = None, first_index: int | None = 0,
                 max_connections: int = 8, auth_timeout: float = 5.0,
                 idle_timeout: float = 30.0, max_pending: int = 64, max_ahead: int = 1000,
                 max_timings: int = 100_000, tr: float | None = None) -> None:
        _validate_type(host, str, "host")
        if key is not None:
            _validate_type(key, bytes, "key")
            if len(key) < 16:
                raise ValueError(f"key must have at least 16 bytes, got {len(key)}.")
        elif not is_loopback(host):
            raise ValueError(f"a receiver listening on {host!r} (not loopback) needs a key: "
                             f"anyone on the network could otherwise send volumes.")
        self.host = host
        self.port = check_int(port, "port", 0)
        self.key = b"" if key is None else key
        self.max_bytes = check_int(max_bytes, "max_bytes", 1)
        self.max_connections = check_int(max_connections, "max_connections", 1)
        self.auth_timeout = check_positive_number(auth_timeout, "auth_timeout")
        self.idle_timeout = check_positive_number(idle_timeout, "idle_timeout")
        check_positive_number(gap_timeout, "gap_timeout")
        if series is not None:
            _validate_type(series, str, "series")
        self._series = series
        self._series_chosen = series is not None
        self._locked_voxels: int | None = None
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
        self.refused = {"unauthenticated": 0, "auth_timeout": 0, "idle": 0, "evicted": 0,
                        "full": 0, "too_large": 0}
        self.address: tuple | None = None

    # -- public API --------------------------------------------------------------------------
    def start(self) -> TCPReceiver:
        """Bind, listen and start the acquisition thread; return self."""
        if self._thread is not None:
            raise RuntimeError("TCPReceiver.start() was already called; create a new one.")
        self._listener = socket.create_server((self.host, self.port),
                                              backlog=4 * self.max_connections)
        self._listener.setblocking(False)
        self.address = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="rtfb-tcp", daemon=True)
        self._thread.start()
        logger.info("tcp: listening on %s%s", _peer_name(self.address),
                    "" if self.key else " (no key: loopback only)")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every connection (items already queued stay available)."""
        self._stop_event.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        self._join(timeout)

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
                    events = sel.select(self._handoff.time_to_deadline(0.25))
                    for key, mask in events:
                        if self._stop_event.is_set():
                            break
                        if key.data == "listen":
                            self._accept(sel)
                        elif key.data == "wake":
                            continue
                        elif key.data.sock in self._conns:
                            if mask & selectors.EVENT_WRITE:
                                self._flush(sel, key.data)
                            if mask & selectors.EVENT_READ and key.data.sock in self._conns:
                                self._read(sel, key.data)
                    self._sweep(sel)
                    self._handoff.flush()
                except Exception as err:  # never let the thread die
                    logger.error("tcp: unexpected error, serving goes on: %s: %s",
                                 type(err).__name__, err, exc_info=True)
                    time.sleep(0.01)
        finally:
            for conn in list(self._conns.values()):
                if conn.mid_frame:
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
            # evict the oldest connection that has not authenticated, provided it had
            # _EVICT_GRACE s to do so: a new connection (the scanner's) cannot be pushed out
            # by a stream of newer ones before it sends its first header
            now = time.monotonic()
            waiting = [c for c in self._conns.values()
                       if not c.authenticated and now - c.accepted_at >= _EVICT_GRACE]
            if not waiting:
                logger.warning("tcp: %s: refused: all %d connections busy (max_connections; "
                               "those not authenticated yet are younger than %g s)", peer,
                               len(self._conns), _EVICT_GRACE)
                self.refused["full"] += 1
                sock.close()
                return
            oldest = min(waiting, key=lambda c: c.accepted_at)
            self._drop(sel, oldest, "evicted", "closed to free a slot: not authenticated "
                                               "after %.1f s" % (time.monotonic()
                                                                  - oldest.accepted_at))
        sock.setblocking(False)
        now = time.monotonic()
        conn = _Conn(sock, peer, secrets.token_bytes(NONCE_BYTES), accepted_at=now,
                     last_activity=now)
        conn.expect(_S_PREFIX, PREFIX.size)
        self._conns[sock] = conn
        sel.register(sock, selectors.EVENT_READ, conn)
        logger.info("tcp: %s: connected", peer)
        self._handoff.count("connections")
        self._send(sel, conn, HELLO.pack(MAGIC, VERSION, conn.nonce))

    def _sweep(self, sel: selectors.BaseSelector) -> None:
        """Close connections past their authentication or idle deadline."""
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if not conn.authenticated and now - conn.accepted_at > self.auth_timeout:
                self._drop(sel, conn, "auth_timeout", f"no authenticated header within "
                                                      f"auth_timeout={self.auth_timeout:g} s")
            elif conn.mid_frame and now - conn.last_activity > self.idle_timeout:
                self._drop(sel, conn, "idle", f"silent for idle_timeout="
                                              f"{self.idle_timeout:g} s in the middle of a "
                                              f"frame ({conn.state})")

    def _drop(self, sel: selectors.BaseSelector, conn: _Conn, cause: str, text: str) -> None:
        logger.warning("tcp: %s: connection closed: %s", conn.peer, text)
        self.refused[cause] += 1
        self._close(sel, conn)

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        self._conns.pop(conn.sock, None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.buf = None

    def _refuse(self, sel: selectors.BaseSelector, conn: _Conn, problem: str,
                ack: bool = False) -> None:
        """Refuse the current frame, log it, acknowledge it if authenticated, close."""
        logger.warning("tcp: %s: frame refused, connection closed: %s", conn.peer,
                       escape_control(problem))
        self._handoff.count("malformed")
        if ack:
            index = conn.header.get("index") if conn.header else None
            self._send(sel, conn, ack_line(self.key, conn.nonce, conn.n_frames, index,
                                           "refused", problem))
            self._flush(sel, conn, final=True)
            try:  # read what the peer already sent, or closing would reset the connection
                conn.sock.shutdown(socket.SHUT_WR)  # and lose the acknowledgement
                for _ in range(16):
                    if not conn.sock.recv(65536):
                        break
            except OSError:
                pass
        self._close(sel, conn)

    # -- writing -----------------------------------------------------------------------------
    def _send(self, sel: selectors.BaseSelector, conn: _Conn, data: bytes) -> None:
        conn.out += data
        if len(conn.out) > _MAX_OUT:
            logger.warning("tcp: %s: connection closed: %d bytes of acknowledgements left "
                           "unread", conn.peer, len(conn.out))
            self._close(sel, conn)
            return
        self._flush(sel, conn)

    def _flush(self, sel: selectors.BaseSelector, conn: _Conn, final: bool = False) -> None:
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                del conn.out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            conn.out.clear()
        if final or conn.sock not in self._conns:
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if bool(conn.out) != conn.writing:
            conn.writing = bool(conn.out)
            sel.modify(conn.sock, want, conn)

    # -- reading -----------------------------------------------------------------------------
    def _read(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        need = len(conn.buf) - conn.pos
        view = memoryview(conn.buf)[conn.pos:conn.pos + min(need, _CHUNK)]
        reason = ""
        try:
            n = conn.sock.recv_into(view)
            if n > 0 and conn.state == _S_PAYLOAD:
                conn.mac.update(view[:n])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            n = -1
            reason = f"{type(err).__name__}: {err.strerror or err}"
        finally:
            view.release()
        if n <= 0:
            if not conn.mid_frame:
                logger.info("tcp: %s: disconnected after %d frame(s)", conn.peer,
                            conn.n_frames)
                self._close(sel, conn)
            else:
                what = "connection closed" if n == 0 else f"connection error ({reason})"
                self._refuse(sel, conn, f"{what} mid-frame ({conn.state}: got {conn.pos} of "
                                        f"{len(conn.buf)} bytes)")
            return
        conn.last_activity = time.monotonic()
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
            conn.prefix = bytes(conn.buf)
            _, length = PREFIX.unpack(conn.prefix)
            if not 1 <= length <= MAX_HEADER:
                self._refuse(sel, conn, f"header length {length} outside 1..{MAX_HEADER}")
                return
            conn.expect(_S_HEADER, length)
        elif conn.state == _S_HEADER:
            conn.header_raw = bytes(conn.buf)
            conn.expect(_S_HTAG, TAG_BYTES)
        elif conn.state == _S_HTAG:
            self._header_complete(sel, conn)
        elif conn.state == _S_PAYLOAD:
            conn.payload = conn.buf
            conn.expect(_S_FTAG, TAG_BYTES)
        else:
            self._frame_complete(sel, conn)

    def _header_complete(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        expected = header_tag(self.key, conn.nonce, conn.prefix, conn.header_raw)
        if not hmac.compare_digest(bytes(conn.buf), expected):
            self.refused["unauthenticated"] += 1
            self._refuse(sel, conn, "header tag does not match (sender without the key, or "
                                    "another connection's frame)")
            return
        conn.authenticated = True
        # after the first volume: its number of voxels at the largest item size (8 bytes)
        limit = self.max_bytes if self._locked_voxels is None else 8 * self._locked_voxels
        try:
            conn.header = parse_header(conn.header_raw, self.max_bytes)
            if conn.header["seq"] != conn.n_frames:
                raise FrameError(f"seq={conn.header['seq']} but {conn.n_frames} frame(s) came "
                                 f"before on this connection (replayed or reordered frame)")
        except FrameError as err:
            conn.header = None
            self._refuse(sel, conn, str(err), ack=True)
            return
        if conn.header["nbytes"] > limit:
            self.refused["too_large"] += 1
            self._refuse(sel, conn, f"payload of {conn.header['nbytes']} bytes is larger than "
                                    f"the locked geometry ({self._locked_voxels} voxels: at "
                                    f"most {limit} bytes per volume)", ack=True)
            return
        conn.mac = frame_mac(self.key, conn.nonce, conn.prefix, conn.header_raw)
        conn.expect(_S_PAYLOAD, conn.header["nbytes"])

    def _frame_complete(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        header, payload, seen = conn.header, conn.payload, conn.frame_start
        if not hmac.compare_digest(bytes(conn.buf), conn.mac.digest()):
            self.refused["unauthenticated"] += 1
            self._refuse(sel, conn, "frame tag does not match (payload altered)", ack=True)
            return
        seq = conn.n_frames
        conn.n_frames += 1
        conn.header, conn.payload, conn.mac = None, None, None
        conn.expect(_S_PREFIX, PREFIX.size)

        def ack(status: str, reason: str | None = None) -> None:
            self._send(sel, conn, ack_line(self.key, conn.nonce, seq, header["index"], status,
                                           reason))

        try:
            data = np.frombuffer(payload, dtype=np.dtype(header["dtype"]))
            volume = Volume(data=data.reshape(header["shape"]), affine=header["affine"],
                            index=header["index"], acquisition_time=header["acquisition_time"],
                            tr=header["tr"], source="tcp", series=header["series"],
                            header={"format": "tcp"})
        except ValueError as err:
            conn.header = header
            self._refuse(sel, conn, f"invalid volume ({err})", ack=True)
            return
        complete = time.perf_counter()
        if not self._series_chosen:
            self._series, self._series_chosen = volume.series, True
        elif volume.series != self._series:
            logger.warning("tcp: %s: volume %d ignored: belongs to another series than the "
                           "one followed", conn.peer, volume.index)
            self._handoff.count("other_series")
            ack("other_series")
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
        elif self._locked_voxels is None:
            self._locked_voxels = int(np.prod(header["shape"]))
        if conn.sock in self._conns:
            ack(status)
