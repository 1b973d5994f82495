"""TCPReceiver and the framing of docs/tcp_protocol.md (good and malformed frames)."""

import json
import logging
import queue
import socket
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest

from rtfb.ingest.ordering import Late, Missing
from rtfb.ingest.tcp import FrameError, TCPReceiver, encode_frame, parse_header, send_volume
from rtfb.ingest.volume import Volume

AFFINE = np.array([[2.0, 0.1, 0, -90.25], [0, 2, 0, -126], [0, 0, 2.5, -72], [0, 0, 0, 1]])
SHAPE = (5, 4, 3)


def data(i, dtype=np.float32):
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) + 7 * i).astype(dtype)


def header(**overrides):
    h = {"version": 1, "index": 0, "shape": list(SHAPE), "dtype": "<f4",
         "nbytes": int(np.prod(SHAPE)) * 4, "affine": AFFINE.tolist(), "tr": 2.0,
         "acquisition_time": None, "series": "s1"}
    h.update(overrides)
    return h


def frame(h, payload=None, magic=b"RTFB"):
    text = h if isinstance(h, bytes) else json.dumps(h).encode()
    if payload is None:
        payload = b"\0" * h["nbytes"] if isinstance(h, dict) else b""
    return magic + struct.pack(">I", len(text)) + text + payload


def wait_until(cond, timeout=5.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not met within {timeout} s")


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "rtfb.ingest" and r.levelno >= logging.WARNING]


def peer(sock):
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def assert_closed_by_server(sock):
    sock.settimeout(5)
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


@pytest.fixture
def caplog_ingest(caplog):
    caplog.set_level(logging.INFO, logger="rtfb.ingest")
    return caplog


@pytest.fixture
def receiver():
    receivers = []

    def make(**kwargs):
        kwargs.setdefault("gap_timeout", 5.0)
        r = TCPReceiver(**kwargs).start()
        receivers.append(r)
        return r

    yield make
    for r in receivers:
        r.stop()


def test_round_trip_several_volumes_and_dtypes(receiver):
    r = receiver()
    host, port = r.address
    assert host == "127.0.0.1" and port > 0
    dtypes = [np.float32, np.int16, np.uint8, np.float64, np.uint16, np.int32]
    with socket.create_connection(r.address) as sock:
        for i in (1, 0, 2, 3, 4):  # out of order on one connection
            send_volume(sock, data(i, dtypes[i]), AFFINE + i, i, tr=2.0,
                        acquisition_time=3600.5 + i, series="s1")
    send_volume(r.address, data(5, dtypes[5]), AFFINE + 5, 5, series="s1")  # new connection
    for i in range(6):
        vol = r.get(timeout=5)
        assert isinstance(vol, Volume) and vol.index == i
        np.testing.assert_array_equal(vol.data, data(i, dtypes[i]).astype(np.float32))
        np.testing.assert_array_equal(vol.affine, AFFINE + i)  # exact
        assert vol.series == "s1" and vol.source == "tcp"
        if i < 5:
            assert vol.tr == 2.0 and vol.acquisition_time == 3600.5 + i
        else:
            assert vol.tr is None and vol.acquisition_time is None
    s = r.stats
    assert s.delivered == 6 and s.connections == 2 and s.malformed == 0
    assert len(s.latencies) == 6
    assert all(t.seen <= t.complete <= t.queued for t in s.timings)


def test_large_volume_in_chunks(receiver):
    r = receiver()
    big = np.random.default_rng(0).normal(size=(104, 104, 72)).astype(np.float32)  # 3.1 MB
    send_volume(r.address, big, AFFINE, 0)
    np.testing.assert_array_equal(r.get(timeout=5).data, big)


def good_client_still_served(r, index):
    send_volume(r.address, data(index), AFFINE, index, series="s1")
    vol = r.get(timeout=5)
    assert isinstance(vol, Volume) and vol.index == index


BAD = {
    "bad magic": (b"GET / HTTP/1.1\r\n\r\n", "bad magic"),
    "header length 0": (b"RTFB" + struct.pack(">I", 0), "header length 0"),
    "header too long": (b"RTFB" + struct.pack(">I", 65537), "header length 65537"),
    "not json": (frame(b"{index: 0,"), "not JSON"),
    "not utf8": (frame(b"\xff\xfe{}"), "not UTF-8"),
    "not an object": (frame(b"[1, 2]"), "not an object"),
    "unknown key": (frame(header(PatientName="Doe^John")), "unknown key(s) 'PatientName'"),
    "odd unknown key": (frame(header(**{"Doe^John 1970": 1})), "'<non-identifier>'"),
    "missing key": (frame({k: v for k, v in header().items() if k != "tr"}, b""), "lacks"),
    "bad version": (frame(header(version=2)), "version"),
    "bool index": (frame(header(index=True)), "index"),
    "negative index": (frame(header(index=-1)), "index"),
    "bad shape": (frame(header(shape=[5, 4]), b""), "shape"),
    "bad dtype": (frame(header(dtype=">f4")), "dtype"),
    "nbytes mismatch": (frame(header(nbytes=10), b"\0" * 10), "does not match"),
    "bad affine": (frame(header(affine=[[1, 0, 0]])), "affine"),
    "nan in header": (frame(header().__repr__().replace("'", '"').replace("None", "NaN")
                            .encode()), "not strict JSON"),
    "bad tr": (frame(header(tr="2s")), "tr must be"),
    "bad series": (frame(header(series=3)), "series must be"),
    "duplicate key": (frame(b'{"version": 1, "version": 1}'), "repeats key"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_frame_refused_logged_and_server_goes_on(receiver, caplog_ingest, case):
    payload, problem = BAD[case]
    r = receiver()
    with socket.create_connection(r.address) as sock:
        who = peer(sock)
        sock.sendall(payload)
        wait_until(lambda: any(problem in m and who in m for m in warnings_of(caplog_ingest)),
                   what=f"log line with {problem!r}")
        assert_closed_by_server(sock)
    lines = [m for m in warnings_of(caplog_ingest) if who in m]
    assert len(lines) == 1 and "refused" in lines[0]
    assert "Doe" not in lines[0]  # header values are never logged
    assert r.stats.malformed == 1
    good_client_still_served(r, 0)


def test_oversized_payload_refused_before_allocation(receiver, caplog_ingest):
    r = receiver(max_bytes=1000)
    huge = header(shape=[2**14, 2**14, 2**12], nbytes=2**42)  # 4 TiB announced
    with socket.create_connection(r.address) as sock:
        who = peer(sock)
        sock.sendall(frame(huge, b"\0" * 100))
        wait_until(lambda: any("exceeds max_bytes=1000" in m and who in m
                               for m in warnings_of(caplog_ingest)))
        assert_closed_by_server(sock)
    # 4 MB announced: could be allocated, must not be (tracemalloc sees every thread)
    tracemalloc.start()
    try:
        with socket.create_connection(r.address) as sock:
            sock.sendall(frame(header(shape=[100, 100, 100], nbytes=4 * 10**6), b"\0" * 1000))
            assert_closed_by_server(sock)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10**6
    assert r.stats.malformed == 2
    good_client_still_served(r, 0)  # 240-byte payload: under the limit


def test_connection_closed_mid_frame(receiver, caplog_ingest):
    r = receiver()
    raw = encode_frame(data(0), AFFINE, 0, series="s1")
    with socket.create_connection(r.address) as sock:
        who = peer(sock)
        sock.sendall(raw[:-100])
    wait_until(lambda: any("closed mid-frame" in m and who in m
                           for m in warnings_of(caplog_ingest)))
    with socket.create_connection(r.address) as sock:  # closed right after the magic
        sock.sendall(b"RTF")
    wait_until(lambda: r.stats.malformed == 2)
    with socket.create_connection(r.address):  # connect and leave: not an error
        pass
    good_client_still_served(r, 0)
    assert r.stats.malformed == 2


def test_gap_missing_late_duplicate_other_series(receiver, caplog_ingest):
    r = receiver(gap_timeout=0.2)
    with socket.create_connection(r.address) as sock:
        for i in (0, 2):
            send_volume(sock, data(i), AFFINE, i, series="s1")
        assert r.get(timeout=5).index == 0
        missing = r.get(timeout=5)
        assert isinstance(missing, Missing) and missing.index == 1
        assert r.get(timeout=5).index == 2
        send_volume(sock, data(1), AFFINE, 1, series="s1")
        late = r.get(timeout=5)
        assert isinstance(late, Late) and late.index == 1
        np.testing.assert_array_equal(late.volume.data, data(1))
        send_volume(sock, data(2), AFFINE, 2, series="s1")  # duplicate
        send_volume(sock, data(3), AFFINE, 3, series="other")  # another series
        send_volume(sock, data(3), AFFINE, 3, series="s1")
        assert r.get(timeout=5).index == 3
    s = r.stats
    assert (s.delivered, s.missing, s.late, s.duplicates, s.other_series) == (3, 1, 1, 1, 1)
    assert s.malformed == 0


def test_back_pressure_slows_sender_never_drops(receiver):
    r = receiver(queue_size=1)

    def send():
        with socket.create_connection(r.address) as sock:
            for i in range(6):
                send_volume(sock, data(i), AFFINE, i)

    t = threading.Thread(target=send)
    t.start()
    wait_until(lambda: r.stats.blocked_episodes >= 1)
    indices = [r.get(timeout=5).index for _ in range(6)]
    t.join()
    assert indices == list(range(6))
    assert r.stats.queue_high_water == 1 and r.stats.blocked_seconds > 0


def test_max_connections(receiver, caplog_ingest):
    r = receiver(max_connections=1)
    with socket.create_connection(r.address) as first:
        wait_until(lambda: r.stats.connections == 1)
        with socket.create_connection(r.address) as second:
            assert_closed_by_server(second)
        assert any("max_connections" in m for m in warnings_of(caplog_ingest))
        send_volume(first, data(0), AFFINE, 0)
        assert r.get(timeout=5).index == 0


def test_lifecycle(receiver):
    r = TCPReceiver()
    assert r.address is None and "unbound" in repr(r)
    with r:
        assert r.running
        with pytest.raises(RuntimeError):
            r.start()
        address = r.address
    assert not r.running
    with pytest.raises(queue.Empty):
        r.get()
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=1).close()


@pytest.mark.parametrize("kwargs, err", [
    ({"array": np.zeros((2, 2))}, ValueError),
    ({"array": np.zeros((2, 2, 2), np.int64)}, ValueError),
    ({"array": np.zeros((2, 2, 2), bool)}, ValueError),
    ({"affine": np.eye(3)}, ValueError),
    ({"affine": np.full((4, 4), np.nan)}, ValueError),
    ({"index": -1}, ValueError),
    ({"tr": float("nan")}, ValueError),
    ({"series": 5}, TypeError),
])
def test_encode_frame_checks(kwargs, err):
    args = {"array": np.zeros((2, 2, 2), np.float32), "affine": np.eye(4), "index": 0}
    args.update(kwargs)
    with pytest.raises(err):
        encode_frame(**args)


def test_encode_frame_layout():
    arr = np.arange(24, dtype=">i2").reshape(2, 3, 4)  # big-endian input sent little-endian
    raw = encode_frame(arr, np.eye(4), 7, 1.5, series="x")
    assert raw[:4] == b"RTFB"
    (length,) = struct.unpack(">I", raw[4:8])
    h = parse_header(raw[8:8 + length], max_bytes=100)
    assert h["dtype"] == "<i2" and h["shape"] == [2, 3, 4] and h["index"] == 7
    assert set(h) == {"version", "index", "shape", "dtype", "nbytes", "affine", "tr",
                      "acquisition_time", "series"}
    payload = raw[8 + length:]
    assert len(payload) == h["nbytes"] == 48
    np.testing.assert_array_equal(np.frombuffer(payload, "<i2").reshape(2, 3, 4), arr)


def test_parse_header_errors_name_the_problem():
    with pytest.raises(FrameError, match="exceeds max_bytes"):
        parse_header(json.dumps(header()).encode(), max_bytes=10)
    with pytest.raises(FrameError, match="not acceptable JSON"):
        parse_header(b'{"index": ' + b"9" * 5000 + b"}", max_bytes=10)
    with pytest.raises(FrameError, match="affine"):
        parse_header(json.dumps(header(affine=[[10**400] * 4] * 4)).encode(), max_bytes=1000)
