"""The simulator's TCP sender: framing version 2 of ``docs/tcp_protocol.md``.

Implemented here independently of rtfb's receiver: greeting, frames tagged with
HMAC-SHA256 under the session's key, signed acknowledgements read back (what the receiver
did with each frame), reconnection after a dropped connection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from .sources import chunk_bounds

__all__ = ["TCP_MAGIC", "TCP_VERSION", "TcpSink", "encode_frame", "parse_tcp_address",
           "read_key"]

TCP_MAGIC = b"RTFB"
TCP_VERSION = 2
_TCP_NONCE = 16
_TCP_HELLO = 24  # magic, version (u32 big-endian), nonce
_TCP_DTYPES = {"<u1", "<i2", "<u2", "<i4", "<f4", "<f8"}


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


def parse_tcp_address(to: str) -> tuple[str, int] | None:
    if not str(to).startswith("tcp://"):
        return None
    parts = urlsplit(str(to))
    if not parts.hostname or parts.port is None:
        raise ValueError(f"bad TCP address {to!r}; expected tcp://HOST:PORT.")
    return parts.hostname, parts.port


class TcpSink:
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
            bounds = chunk_bounds(size, chunks)
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

