"""TCPReceiver and framing v2 of docs/tcp_protocol.md: authentication, acknowledgements,
malformed frames, bounded resources.

Frames are built here from the documented construction with :mod:`hmac` directly (an
oracle independent of rtfb's encoder), except where rtfb's sender itself is tested.
"""

import hashlib
import hmac
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
from rtfb.ingest.tcp import (
    FrameError,
    TCPReceiver,
    TCPSender,
    encode_frame,
    parse_header,
    send_volume,
)
from rtfb.ingest.volume import Volume

pytestmark = pytest.mark.timeout(120)

AFFINE = np.array([[2.0, 0.1, 0, -90.25], [0, 2, 0, -126], [0, 0, 2.5, -72], [0, 0, 0, 1]])
SHAPE = (5, 4, 3)
KEY = bytes(range(100, 132))


def data(i, dtype=np.float32):
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) + 7 * i).astype(dtype)


def header(**overrides):
    h = {"version": 2, "seq": 0, "index": 0, "shape": list(SHAPE), "dtype": "<f4",
         "nbytes": int(np.prod(SHAPE)) * 4, "affine": AFFINE.tolist(), "tr": 2.0,
         "acquisition_time": None, "series": "s1"}
    h.update(overrides)
    return h


class Client:
    """A raw framing-v2 client written from the documentation."""

    def __init__(self, address, key=KEY):
        self.sock = socket.create_connection(address, timeout=5)
        hello = b""
        while len(hello) < 24:
            chunk = self.sock.recv(24 - len(hello))
            assert chunk, "no greeting"
            hello += chunk
        assert hello[:4] == b"RTFB" and struct.unpack(">I", hello[4:8]) == (2,)
        self.nonce = hello[8:]
        self.key = key
        self.buf = b""

    def frame(self, h, payload=None, *, key=None, nonce=None, head_tag=None, frame_tag=None):
        key = self.key if key is None else key
        nonce = self.nonce if nonce is None else nonce
        text = h if isinstance(h, bytes) else json.dumps(h).encode()
        if payload is None:
            payload = b"\0" * h["nbytes"] if isinstance(h, dict) else b""
        prefix = b"RTFB" + struct.pack(">I", len(text))
        ht = hmac.new(key, b"rtfb tcp v2 header\0" + nonce + prefix + text,
                      hashlib.sha256).digest()
        ft = hmac.new(key, b"rtfb tcp v2 frame\0" + nonce + prefix + text + payload,
                      hashlib.sha256).digest()
        return prefix + text + (ht if head_tag is None else head_tag) + payload + \
            (ft if frame_tag is None else frame_tag)

    def send(self, raw):
        self.sock.sendall(raw)

    def ack(self, timeout=5):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        text, tag = line.rsplit(b" ", 1)
        expected = hmac.new(self.key, b"rtfb tcp v2 ack\0" + self.nonce + text,
                            hashlib.sha256).hexdigest().encode()
        assert hmac.compare_digest(tag, expected), "ack tag"
        return json.loads(text)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
        while sock.recv(4096):
            pass
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
        kwargs.setdefault("key", KEY)
        r = TCPReceiver(**kwargs).start()
        receivers.append(r)
        return r

    yield make
    for r in receivers:
        r.stop()


def test_round_trip_several_volumes_and_dtypes_with_acks(receiver):
    r = receiver()
    host, port = r.address
    assert host == "127.0.0.1" and port > 0
    dtypes = [np.float32, np.int16, np.uint8, np.float64, np.uint16, np.int32]
    with TCPSender(r.address, KEY) as sender:
        for i in (1, 0, 2, 3, 4):  # out of order on one connection
            ack = send_volume(sender, data(i, dtypes[i]), AFFINE + i, i, tr=2.0,
                              acquisition_time=3600.5 + i, series="s1")
            assert ack["status"] == "accepted" and ack["index"] == i
    ack = send_volume(r.address, data(5, dtypes[5]), AFFINE + 5, 5, series="s1", key=KEY)
    assert ack == {"seq": 0, "index": 5, "status": "accepted"}  # new connection, seq 0
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
    assert all(t.seen <= t.complete <= t.queued for t in s.timings)


def test_raw_client_from_the_documentation(receiver):
    r = receiver()
    with Client(r.address) as c:
        c.send(c.frame(header(index=0), data(0).tobytes()))
        assert c.ack() == {"seq": 0, "index": 0, "status": "accepted"}
        c.send(c.frame(header(index=0, seq=1), data(0).tobytes()))
        assert c.ack() == {"seq": 1, "index": 0, "status": "duplicate"}
    np.testing.assert_array_equal(r.get(timeout=5).data, data(0))


def test_large_volume_in_chunks(receiver):
    r = receiver()
    big = np.random.default_rng(0).normal(size=(104, 104, 72)).astype(np.float32)  # 3.1 MB
    assert send_volume(r.address, big, AFFINE, 0, key=KEY)["status"] == "accepted"
    np.testing.assert_array_equal(r.get(timeout=5).data, big)


def good_client_still_served(r, index):
    assert send_volume(r.address, data(index), AFFINE, index, series="s1",
                       key=KEY)["status"] == "accepted"
    vol = r.get(timeout=5)
    assert isinstance(vol, Volume) and vol.index == index


@pytest.mark.parametrize("attack", ["no key", "wrong key", "other connection's nonce",
                                    "altered payload", "replayed seq", "unsigned v1 frame"])
def test_unauthenticated_frames_refused_logged_never_stored(receiver, caplog_ingest, attack):
    r = receiver()
    with Client(r.address) as real:  # a frame captured on another connection
        captured = real.frame(header(index=3), data(3).tobytes())
    with Client(r.address) as c:
        who = peer(c.sock)
        h, payload = header(index=3), data(3).tobytes()
        if attack == "no key":
            raw = c.frame(h, payload, key=b"")
        elif attack == "wrong key":
            raw = c.frame(h, payload, key=bytes(32))
        elif attack == "other connection's nonce":
            raw = captured
        elif attack == "altered payload":
            good = c.frame(h, payload)
            raw = good[:-40] + bytes([good[-40] ^ 1]) + good[-39:]
        elif attack == "replayed seq":
            c.send(c.frame(header(index=2), data(2).tobytes()))
            assert c.ack()["status"] == "accepted"
            raw = c.frame(h, payload)  # seq 0 again
        else:
            text = json.dumps({k: v for k, v in header(version=1, index=3).items()
                               if k != "seq"}).encode()
            raw = b"RTFB" + struct.pack(">I", len(text)) + text + payload
        c.send(raw)
        assert_closed_by_server(c.sock)
    wait_until(lambda: any(who in m and "refused" in m for m in warnings_of(caplog_ingest)))
    assert r.stats.malformed == 1
    with pytest.raises(queue.Empty):  # never stored
        while True:
            vol = r.get(timeout=0.3)
            assert vol.index != 3
    good_client_still_served(r, 0) if attack != "replayed seq" else None


BAD = {
    "bad magic": (b"GET / HTTP/1.1\r\n\r\n", "bad magic", False),
    "header length 0": (b"RTFB" + struct.pack(">I", 0), "header length 0", False),
    "header too long": (b"RTFB" + struct.pack(">I", 65537), "header length 65537", False),
    "not json": (b"{index: 0,", "not JSON", True),
    "not utf8": (b"\xff\xfe{}", "not UTF-8", True),
    "not an object": (b"[1, 2]", "not an object", True),
    "unknown key": (header(PatientName="Doe^John"), "unknown key(s) 'PatientName'", True),
    "odd unknown key": (header(**{"Doe^John 1970": 1}), "'<non-identifier>'", True),
    "missing key": ({k: v for k, v in header().items() if k != "tr"}, "lacks", True),
    "bad version": (header(version=3), "version", True),
    "bool index": (header(index=True), "index", True),
    "negative index": (header(index=-1), "index", True),
    "bad shape": (header(shape=[5, 4]), "shape", True),
    "bad dtype": (header(dtype=">f4"), "dtype", True),
    "nbytes mismatch": (header(nbytes=10), "does not match", True),
    "bad affine": (header(affine=[[1, 0, 0]]), "affine", True),
    "nan in header": (json.dumps(header(tr=float("nan"))).encode(), "not strict JSON", True),
    "bad tr": (header(tr="2s"), "tr must be", True),
    "bad series": (header(series=3), "series must be", True),
    "duplicate key": (b'{"version": 2, "version": 2}', "repeats key", True),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_frame_refused_logged_and_server_goes_on(receiver, caplog_ingest, case):
    h, problem, framed = BAD[case]
    r = receiver()
    with Client(r.address) as c:
        who = peer(c.sock)
        c.send(c.frame(h, b"") if framed else h)
        wait_until(lambda: any(problem in m and who in m for m in warnings_of(caplog_ingest)),
                   what=f"log line with {problem!r}")
        ack = c.ack() if framed else None
        assert_closed_by_server(c.sock)
    if framed:  # an authenticated sender learns why its frame was refused
        assert ack["status"] == "refused" and problem in ack["reason"]
        assert "Doe" not in ack["reason"]
    lines = [m for m in warnings_of(caplog_ingest) if who in m]
    assert len(lines) == 1 and "refused" in lines[0]
    assert "Doe" not in lines[0]  # header values are never logged
    assert r.stats.malformed == 1
    good_client_still_served(r, 0)


def test_oversized_payload_refused_before_allocation(receiver, caplog_ingest):
    r = receiver(max_bytes=1000)
    with Client(r.address) as c:
        c.send(c.frame(header(shape=[2**14, 2**14, 2**12], nbytes=2**42), b"\0" * 100))
        assert "exceeds the limit of 1000 bytes" in c.ack()["reason"]
    good_client_still_served(r, 0)  # 240 bytes: locks the geometry
    # 4 MB announced, under max_bytes of a new receiver but above the locked geometry
    r2 = receiver(max_bytes=10**8)
    good_client_still_served(r2, 0)
    tracemalloc.start()
    try:
        with Client(r2.address) as c:
            c.send(c.frame(header(shape=[100, 100, 100], nbytes=4 * 10**6), b"\0" * 1000))
            ack = c.ack()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ack["status"] == "refused" and "locked geometry (60 voxels" in ack["reason"]
    assert peak < 10**6
    assert r2.refused["too_large"] == 1


def test_connection_closed_mid_frame(receiver, caplog_ingest):
    r = receiver()
    with Client(r.address) as c:
        who = peer(c.sock)
        c.send(c.frame(header(), data(0).tobytes())[:-100])
    wait_until(lambda: any("closed mid-frame" in m and who in m
                           for m in warnings_of(caplog_ingest)))
    with Client(r.address) as c:  # closed right after the magic
        c.send(b"RTF")
    wait_until(lambda: r.stats.malformed == 2)
    with Client(r.address):  # connect and leave: not an error
        pass
    good_client_still_served(r, 0)
    assert r.stats.malformed == 2


def test_gap_missing_late_duplicate_other_series(receiver):
    r = receiver(gap_timeout=0.2)
    with TCPSender(r.address, KEY) as sock:
        for i in (0, 2):
            send_volume(sock, data(i), AFFINE, i, series="s1")
        assert r.get(timeout=5).index == 0
        missing = r.get(timeout=5)
        assert isinstance(missing, Missing) and missing.index == 1
        assert r.get(timeout=5).index == 2
        assert send_volume(sock, data(1), AFFINE, 1, series="s1")["status"] == "late"
        late = r.get(timeout=5)
        assert isinstance(late, Late) and late.index == 1
        np.testing.assert_array_equal(late.volume.data, data(1))
        assert send_volume(sock, data(2), AFFINE, 2, series="s1")["status"] == "duplicate"
        assert send_volume(sock, data(3), AFFINE, 3, series="other")["status"] == \
            "other_series"
        assert send_volume(sock, data(3), AFFINE, 3, series="s1")["status"] == "accepted"
        assert r.get(timeout=5).index == 3
    s = r.stats
    assert (s.delivered, s.missing, s.late, s.duplicates, s.other_series) == (3, 1, 1, 1, 1)
    assert s.malformed == 0


def test_back_pressure_slows_sender_never_drops(receiver):
    r = receiver(queue_size=1)
    acks = []

    def send():
        with TCPSender(r.address, KEY) as sock:
            for i in range(6):
                acks.append(send_volume(sock, data(i), AFFINE, i, timeout=30))

    t = threading.Thread(target=send)
    t.start()
    wait_until(lambda: r.stats.blocked_episodes >= 1)
    indices = [r.get(timeout=5).index for _ in range(6)]
    t.join()
    assert indices == list(range(6))
    assert [a["status"] for a in acks] == ["accepted"] * 6
    assert r.stats.queue_high_water == 1 and r.stats.blocked_seconds > 0


def test_auth_and_idle_timeouts(receiver, caplog_ingest):
    r = receiver(auth_timeout=0.5, idle_timeout=0.5)
    with Client(r.address) as idle:  # never sends anything
        assert_closed_by_server(idle.sock)
    with Client(r.address) as drip:  # a byte now and then: not authenticated in time
        for byte in b"RTFB\0\0":
            try:
                drip.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        assert_closed_by_server(drip.sock)
    with Client(r.address) as stalled:  # authenticated, then stops mid-frame
        raw = stalled.frame(header(), data(0).tobytes())
        stalled.send(raw[:-50])
        assert_closed_by_server(stalled.sock)
    assert r.refused["auth_timeout"] == 2 and r.refused["idle"] == 1
    good_client_still_served(r, 0)


def test_idle_clients_cannot_lock_out_the_sender(receiver, caplog_ingest):
    r = receiver(max_connections=2, auth_timeout=60)
    hostile = [socket.create_connection(r.address) for _ in range(2)]
    try:
        wait_until(lambda: r.stats.connections == 2)
        time.sleep(0.6)  # past the eviction grace
        good_client_still_served(r, 0)  # evicts the oldest idle connection
        assert r.refused["evicted"] == 1
    finally:
        for s in hostile:
            s.close()


def _rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_hostile_connections_while_the_scanner_streams(receiver, tmp_path):
    """8 hostile clients (4 drip bytes, 4 announce 512 MiB payloads), reconnecting as soon as
    they are closed, while the simulator streams 30 volumes: nothing lost, memory flat."""
    from simulator import make_subject, write_subject
    from simulator.stream import stream

    write_subject(make_subject(shape=(20, 20, 12), n_volumes=40, tr=2.0, seed=1),
                  tmp_path / "subject")
    r = receiver(auth_timeout=2.0, idle_timeout=2.0, gap_timeout=30.0)
    stop = threading.Event()
    hello_seen = []

    def drip():
        while not stop.is_set():
            try:
                with socket.create_connection(r.address, timeout=2) as s:
                    hello_seen.append(len(s.recv(24)))
                    while not stop.is_set():
                        s.sendall(b"R")
                        time.sleep(0.1)
            except OSError:
                time.sleep(0.01)

    def huge():
        text = json.dumps(header(shape=[512, 1024, 256], dtype="<u1",
                                 nbytes=512 * 2**20)).encode()
        while not stop.is_set():
            try:
                with socket.create_connection(r.address, timeout=2) as s:
                    s.sendall(b"RTFB" + struct.pack(">I", len(text)) + text + bytes(32)
                              + b"\0" * 65536)
                    while not stop.is_set() and s.recv(4096):
                        pass
            except OSError:
                time.sleep(0.01)

    threads = [threading.Thread(target=f, daemon=True) for f in [drip] * 4 + [huge] * 4]
    rss = [_rss_mb()]
    for t in threads:
        t.start()
    wait_until(lambda: r.stats.connections >= 8)
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            rss.append(_rss_mb())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        doc = stream(tmp_path / "subject", f"tcp://{r.address[0]}:{r.address[1]}", speed=20,
                     volumes=30, key=KEY, manifest=tmp_path / "m.json", connect_timeout=20)
        got = [r.get(timeout=10) for _ in range(30)]
    finally:
        stop.set()
        sampling.set()
        sampler.join()
        for t in threads:
            t.join(timeout=5)
    assert doc["status"] == "completed"
    assert doc["acknowledged"] == {"accepted": 30}
    assert [type(v).__name__ for v in got] == ["Volume"] * 30
    assert [v.index for v in got] == list(range(30))
    assert r.refused["unauthenticated"] >= 4  # the 512 MiB headers were refused
    assert max(rss) - rss[0] < 100, (rss[0], max(rss))


def test_non_loopback_needs_a_key():
    with pytest.raises(ValueError, match="needs a key"):
        TCPReceiver(host="0.0.0.0")
    TCPReceiver(host="0.0.0.0", key=KEY)  # constructed, not started


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


def test_encode_frame_layout_matches_the_documentation():
    arr = np.arange(24, dtype=">i2").reshape(2, 3, 4)  # big-endian input sent little-endian
    nonce = bytes(range(16))
    raw = encode_frame(arr, np.eye(4), 7, 1.5, series="x", key=KEY, nonce=nonce, seq=3)
    assert raw[:4] == b"RTFB"
    (length,) = struct.unpack(">I", raw[4:8])
    text = raw[8:8 + length]
    h = parse_header(text, max_bytes=100)
    assert h["dtype"] == "<i2" and h["shape"] == [2, 3, 4] and h["index"] == 7
    assert h["seq"] == 3 and h["version"] == 2
    assert set(h) == {"version", "seq", "index", "shape", "dtype", "nbytes", "affine", "tr",
                      "acquisition_time", "series"}
    tag = raw[8 + length:8 + length + 32]
    assert tag == hmac.new(KEY, b"rtfb tcp v2 header\0" + nonce + raw[:8 + length],
                           hashlib.sha256).digest()
    payload = raw[8 + length + 32:-32]
    assert len(payload) == h["nbytes"] == 48
    np.testing.assert_array_equal(np.frombuffer(payload, "<i2").reshape(2, 3, 4), arr)
    assert raw[-32:] == hmac.new(KEY, b"rtfb tcp v2 frame\0" + nonce + raw[:8 + length]
                                 + payload, hashlib.sha256).digest()


def test_parse_header_errors_name_the_problem():
    with pytest.raises(FrameError, match="exceeds the limit"):
        parse_header(json.dumps(header()).encode(), max_bytes=10)
    with pytest.raises(FrameError, match="not acceptable JSON"):
        parse_header(b'{"index": ' + b"9" * 5000 + b"}", max_bytes=10)
    with pytest.raises(FrameError, match="affine"):
        parse_header(json.dumps(header(affine=[[10**400] * 4] * 4)).encode(), max_bytes=1000)
