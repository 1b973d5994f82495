"""Scanner stream: folder output (NIfTI, DICOM replay), TCP framing, faults, manifest, stop."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from simulator import make_subject, write_subject
from simulator.faults import FAULT_TYPES, parse_fault_value, plan_faults
from simulator.stream import stream
from simulator.tcp_sender import encode_frame

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).parents[2].parent / "shared" / "data"
SIEMENS = SHARED / "pyneal" / "Siemens_env" / "funcData"
GE = SHARED / "pyneal" / "GE_env" / "funcData" / "s1925"
SHAPE = (6, 5, 4)
N_SRC = 10
TR = 1.5
SPEED = 50.0  # 30 ms between volumes


def _need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"shared scanner data not found at {folder}")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Small 4D float32 NIfTI run with an oblique-ish affine and TR in pixdim[4]."""
    rng = np.random.default_rng(0)
    data = (1000 + 50 * rng.standard_normal((*SHAPE, N_SRC))).astype(np.float32)
    affine = np.array([[2.0, 0.1, 0, -6], [0, 2.2, 0.2, -5], [0, 0, 3.0, -4], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((*img.header.get_zooms()[:3], TR))
    img.header.set_xyzt_units("mm", "sec")
    path = tmp_path_factory.mktemp("src") / "run.nii.gz"
    nib.save(img, path)
    return path, data, nib.load(path).affine


def _load(path):
    return json.loads(Path(path).read_text())


def _vol(doc, v):
    rec = doc["volumes"][v - 1]
    assert rec["volume"] == v
    return rec


# ----------------------------------------------------------------------------------------
# NIfTI folder output
# ----------------------------------------------------------------------------------------
def test_nifti_folder_matches_source(source, tmp_path):
    path, data, affine = source
    out = tmp_path / "export"
    doc = stream(path, out, speed=SPEED)
    assert doc["status"] == "completed"
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"vol_{v:05d}.nii" for v in range(1, N_SRC + 1)]
    for v in range(1, N_SRC + 1):
        img = nib.load(out / f"vol_{v:05d}.nii")
        assert img.shape == SHAPE
        assert img.get_data_dtype() == np.float32
        np.testing.assert_array_equal(np.asarray(img.dataobj), data[..., v - 1])
        np.testing.assert_allclose(img.affine, affine, atol=1e-6)
        assert float(img.header["pixdim"][4]) == pytest.approx(TR)
        assert img.header.get_xyzt_units() == ("mm", "sec")
    manifest = out.parent / "stream_manifest.json"
    assert _load(manifest) == {k: v for k, v in doc.items() if k != "manifest"}
    assert doc["tr"] == TR and doc["interval"] == pytest.approx(TR / SPEED)
    assert doc["written"] == names
    assert [r["action"] for r in doc["volumes"]] == ["written"] * N_SRC
    assert all(r["valid"] for r in doc["volumes"])
    starts = [r["writes"][0]["started"] for r in doc["volumes"]]
    assert np.all(np.diff(starts) > 0)
    # the whole run takes (N - 1) intervals, errors do not accumulate
    assert starts[-1] == pytest.approx((N_SRC - 1) * TR / SPEED, abs=0.15)
    assert doc["timing"]["n"] == N_SRC and doc["timing"]["unit"] == "ms"


def test_subject_folder_source_and_loop(tmp_path):
    subject = make_subject((20, 20, 12), 40, tr=2.0, seed=1)
    folder = tmp_path / "subject"
    write_subject(subject, folder)
    out = tmp_path / "export"
    doc = stream(folder, out, speed=200, volumes=45, manifest=tmp_path / "m.json")
    assert doc["tr"] == 2.0  # from the source's pixdim[4]
    assert len(list(out.iterdir())) == 45
    for v in (1, 40, 41, 45):
        got = np.asarray(nib.load(out / f"vol_{v:05d}.nii").dataobj)
        np.testing.assert_array_equal(got, subject.data[..., (v - 1) % 40])
        assert _vol(doc, v)["source_volume"] == (v - 1) % 40 + 1
    assert (tmp_path / "m.json").is_file()


def test_tr_override_and_start_delay(source, tmp_path):
    path, _, _ = source
    doc = stream(path, tmp_path / "out", 3.0, speed=300, volumes=3, start_delay=0.1)
    assert nib.load(tmp_path / "out/vol_00001.nii").header["pixdim"][4] == pytest.approx(3.0)
    first = doc["volumes"][0]["writes"][0]
    assert first["scheduled_time"] == pytest.approx(0.1)
    assert first["started"] >= 0.1 - 1e-4


def test_files_are_written_in_visible_chunks(source, tmp_path):
    path, _, _ = source
    out = tmp_path / "export"
    out.mkdir()
    sizes: dict[str, set] = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            for p in out.iterdir():
                sizes.setdefault(p.name, set()).add(p.stat().st_size)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        doc = stream(path, out, speed=10, volumes=2, chunks=4, chunk_pause=0.04)
    finally:
        done.set()
        watcher.join()
    full = doc["volumes"][0]["writes"][0]["size"]
    partial = {s for seen in sizes.values() for s in seen if 0 < s < full}
    assert partial, f"no partial file seen: {sizes}"
    w = doc["volumes"][0]["writes"][0]
    assert w["finished"] - w["started"] >= 3 * 0.04 - 0.01


# ----------------------------------------------------------------------------------------
# faults
# ----------------------------------------------------------------------------------------
def test_faults_in_files_and_manifest(source, tmp_path):
    path, data, _ = source
    out = tmp_path / "export"
    faults = {"drop": [2], "duplicate": "3", "truncate": [4], "delay": [5],
              "shuffle": [7], "corrupt": [9]}
    doc = stream(path, out, speed=SPEED, volumes=12, faults=faults)
    assert doc["status"] == "completed"
    expected = {1: "written", 2: "dropped", 3: "duplicated", 4: "truncated", 5: "delayed",
                6: "written", 7: "shuffled", 8: "shuffled", 9: "corrupted", 10: "written",
                11: "written", 12: "written"}
    assert {r["volume"]: r["action"] for r in doc["volumes"]} == expected
    assert doc["faults"]["volumes"]["shuffle"] == [7, 8]
    full = _vol(doc, 1)["writes"][0]["size"]

    def first_start(v):
        return _vol(doc, v)["writes"][0]["started"]

    # dropped: never written
    assert not (out / "vol_00002.nii").exists()
    assert _vol(doc, 2)["writes"] == [] and not _vol(doc, 2)["valid"]
    assert _vol(doc, 2)["names"] == ["vol_00002.nii"]
    # duplicated: same file written twice, the second time later; content intact
    w = _vol(doc, 3)["writes"]
    assert [x["kind"] for x in w] == ["write", "rewrite"]
    assert w[0]["file"] == w[1]["file"] == "vol_00003.nii"
    assert w[1]["started"] > w[0]["finished"]
    assert doc["written"].count("vol_00003.nii") == 2
    np.testing.assert_array_equal(nib.load(out / "vol_00003.nii").get_fdata(), data[..., 2])
    # truncated: only part of the bytes, ever
    w = _vol(doc, 4)["writes"]
    assert [x["kind"] for x in w] == ["truncate"]
    assert (out / "vol_00004.nii").stat().st_size == w[0]["bytes_written"] < full
    assert not w[0]["complete"] and not _vol(doc, 4)["valid"]
    # delayed: 2 TR late by default, after later volumes; content intact
    assert first_start(5) > first_start(6) and first_start(5) > first_start(8)  # 7<->8
    assert _vol(doc, 5)["writes"][0]["scheduled_time"] == pytest.approx(
        _vol(doc, 5)["planned_time"] + 2 * TR / SPEED)
    np.testing.assert_array_equal(nib.load(out / "vol_00005.nii").get_fdata(), data[..., 4])
    # shuffled: 8 before 7
    assert first_start(8) < first_start(7)
    assert _vol(doc, 7)["swapped_with"] == 8 and _vol(doc, 8)["swapped_with"] == 7
    np.testing.assert_array_equal(nib.load(out / "vol_00007.nii").get_fdata(), data[..., 6])
    # corrupted: random bytes of the right length
    assert (out / "vol_00009.nii").stat().st_size == full
    assert _vol(doc, 9)["writes"][0]["kind"] == "corrupt"
    with pytest.raises(Exception):  # noqa: B017 - any nibabel error
        np.asarray(nib.load(out / "vol_00009.nii").dataobj)
    # looped volumes (11, 12 come from source volumes 1, 2)
    np.testing.assert_array_equal(nib.load(out / "vol_00012.nii").get_fdata(), data[..., 1])
    valid = [r["volume"] for r in doc["volumes"] if r["valid"]]
    assert valid == [1, 3, 5, 6, 7, 8, 10, 11, 12]


def test_duplicate_copy_and_header_corruption(source, tmp_path):
    path, _, _ = source
    out = tmp_path / "export"
    doc = stream(path, out, speed=SPEED, volumes=4,
                 faults={"duplicate": [2], "corrupt": [3]},
                 duplicate_mode="copy", corrupt_mode="header", delay_seconds=0.0)
    assert (out / "vol_00002_copy.nii").read_bytes() == (out / "vol_00002.nii").read_bytes()
    assert [w["kind"] for w in _vol(doc, 2)["writes"]] == ["write", "copy"]
    good = (out / "vol_00004.nii").read_bytes()
    bad = (out / "vol_00003.nii").read_bytes()
    assert len(bad) == len(good)
    assert bad[:348] != good[:348]
    header = nib.Nifti1Header.from_fileobj(open(out / "vol_00001.nii", "rb"))
    assert header["sizeof_hdr"] == 348
    with pytest.raises(Exception):  # noqa: B017 - any nibabel error
        nib.Nifti1Header.from_fileobj(open(out / "vol_00003.nii", "rb"), check=True)


def test_truncate_fraction(source, tmp_path):
    path, _, _ = source
    doc = stream(path, tmp_path / "o", speed=SPEED, volumes=2, faults={"truncate": [1]},
                 truncate_fraction=0.25)
    w = _vol(doc, 1)["writes"][0]
    assert w["bytes_written"] == int(w["size"] * 0.25)
    assert (tmp_path / "o/vol_00001.nii").stat().st_size == w["bytes_written"]


def test_rate_faults_are_seeded(source, tmp_path):
    path, _, _ = source
    faults = {k: 0.1 for k in FAULT_TYPES}
    a = stream(path, tmp_path / "a", speed=1000, volumes=30, faults=faults, fault_seed=4,
               chunks=1, manifest=tmp_path / "a.json")
    b = stream(path, tmp_path / "b", speed=1000, volumes=30, faults=faults, fault_seed=4,
               chunks=1, manifest=tmp_path / "b.json")
    assert [r["action"] for r in a["volumes"]] == [r["action"] for r in b["volumes"]]
    assert a["faults"]["volumes"] == b["faults"]["volumes"]
    assert sum(r["action"] != "written" for r in a["volumes"]) > 0
    for r in a["volumes"]:
        exists = (tmp_path / "a" / r["names"][0]).exists()
        assert exists == (r["action"] != "dropped")


def test_plan_faults():
    assert plan_faults(10, None) == {}
    plan = plan_faults(10, {"drop": [1, 4], "shuffle": [6], "delay": "9"})
    assert plan == {1: ("drop", None), 4: ("drop", None), 6: ("shuffle", 7),
                    7: ("shuffle", 6), 9: ("delay", None)}
    rates = {"drop": 0.2, "duplicate": 0.3, "shuffle": 0.2}
    p1, p2 = plan_faults(200, rates, seed=1), plan_faults(200, rates, seed=1)
    assert p1 == p2 and p1 != plan_faults(200, rates, seed=2)
    n_drop = sum(f == "drop" for f, _ in p1.values())
    assert 20 < n_drop < 60
    for v, (f, partner) in p1.items():
        if f == "shuffle":
            assert p1[partner] == ("shuffle", v) and abs(partner - v) == 1


@pytest.mark.parametrize("faults,match", [
    ({"drop": [3], "delay": [3]}, "two faults"),
    ({"shuffle": [10]}, "last"),
    ({"shuffle": [4], "drop": [5]}, "partner"),
    ({"drop": [11]}, "outside"),
    ({"drop": 1.0}, "rate"),
    ({"explode": [1]}, "unknown"),
])
def test_plan_faults_errors(faults, match):
    with pytest.raises(ValueError, match=match):
        plan_faults(10, faults)


def test_parse_fault_value():
    assert parse_fault_value("0.1") == 0.1
    assert parse_fault_value("0") == 0.0
    assert parse_fault_value("5") == [5]
    assert parse_fault_value("5,17") == [5, 17]
    for bad in ("1.5", "abc", "0,3", "-2"):
        with pytest.raises(ValueError):
            parse_fault_value(bad)


def test_bad_arguments(source, tmp_path):
    path, _, _ = source
    with pytest.raises(ValueError, match="speed"):
        stream(path, tmp_path, speed=0)
    with pytest.raises(ValueError, match="truncate_fraction"):
        stream(path, tmp_path, truncate_fraction=1.0)
    with pytest.raises(FileNotFoundError):
        stream(tmp_path / "missing.nii", tmp_path)
    img = nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4))
    img.header["pixdim"][4] = 0.0
    nib.save(img, tmp_path / "no_tr.nii")
    with pytest.raises(ValueError, match="repetition time"):
        stream(tmp_path / "no_tr.nii", tmp_path / "o")


# ----------------------------------------------------------------------------------------
# DICOM replay
# ----------------------------------------------------------------------------------------
def test_siemens_replay_and_loop(tmp_path):
    _need(SIEMENS)
    import pydicom

    originals = [pydicom.dcmread(p) for p in sorted(SIEMENS.glob("*.dcm"))]
    out = tmp_path / "export"
    doc = stream(SIEMENS, out, speed=20, volumes=7)  # TR 1 s from the header
    assert doc["tr"] == 1.0 and doc["source_kind"] == "dicom-mosaic"
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"001_000013_{v:06d}.dcm" for v in range(1, 8)]
    # the first pass is a byte-for-byte replay
    for v in range(1, 4):
        assert (out / names[v - 1]).read_bytes() == sorted(SIEMENS.glob("*.dcm"))[
            v - 1].read_bytes()
    sops = set()
    for v, name in enumerate(names, start=1):
        ds = pydicom.dcmread(out / name)
        src = originals[(v - 1) % 3]
        np.testing.assert_array_equal(ds.pixel_array, src.pixel_array)
        assert int(ds.AcquisitionNumber) == v and int(ds.InstanceNumber) == v
        assert ds.SeriesInstanceUID == src.SeriesInstanceUID
        assert ds.SeriesNumber == src.SeriesNumber
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        sops.add(ds.SOPInstanceUID)
        assert _vol(doc, v)["names"] == [name]
    assert len(sops) == 7


def test_ge_slices_loop(tmp_path):
    _need(GE)
    import pydicom

    src_files = sorted(GE.iterdir(), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    out = tmp_path / "export"
    doc = stream(GE, out, speed=4, volumes=4, chunks=2)
    assert doc["source_kind"] == "dicom-slices" and doc["files_per_volume"] == 18
    names = sorted(out.iterdir(), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    assert len(names) == 72
    assert [p.name for p in names[:54]] == [p.name for p in src_files]
    assert names[71].name == "i2862351.MRDC.72"
    instances = []
    for k in (0, 17, 54, 60, 71):
        ds = pydicom.dcmread(names[k])
        src = pydicom.dcmread(src_files[k % 54])
        np.testing.assert_array_equal(ds.pixel_array, src.pixel_array)
        assert float(ds.SliceLocation) == float(src.SliceLocation)
        assert ds.SeriesInstanceUID == src.SeriesInstanceUID
        instances.append(int(ds.InstanceNumber))
    assert instances == [1, 18, 55, 61, 72]
    # volume 4's files are written together, after volume 3's
    assert _vol(doc, 4)["writes"][0]["started"] > _vol(doc, 3)["writes"][-1]["finished"]
    assert _vol(doc, 4)["names"][0] == "i2862334.MRDC.55"


def test_dicom_faults(tmp_path):
    _need(SIEMENS)
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = tmp_path / "export"
    doc = stream(SIEMENS, out, speed=20, volumes=5,
                 faults={"truncate": [2], "corrupt": [3], "duplicate": [4]},
                 corrupt_mode="header", duplicate_mode="copy")
    size = (SIEMENS / "001_000013_000001.dcm").stat().st_size
    assert (out / "001_000013_000002.dcm").stat().st_size == size // 2
    corrupt = out / "001_000013_000003.dcm"
    assert corrupt.stat().st_size == size
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(corrupt)
    copy = pydicom.dcmread(out / "001_000013_000004_copy.dcm")
    assert int(copy.InstanceNumber) == 4
    assert [r["action"] for r in doc["volumes"]] == [
        "written", "truncated", "corrupted", "duplicated", "written"]


def test_tcp_needs_nifti(tmp_path):
    _need(SIEMENS)
    with pytest.raises(ValueError, match="NIfTI"):
        stream(SIEMENS, "tcp://127.0.0.1:9")


# ----------------------------------------------------------------------------------------
# TCP
# ----------------------------------------------------------------------------------------
KEY = bytes(range(7, 39))


def _mac(*parts):
    return hmac.new(KEY, b"".join(parts), hashlib.sha256)


class FrameServer:
    """Tiny framing-v2 receiver written from docs/tcp_protocol.md: greets with a nonce,
    checks both tags, acknowledges, closes a connection on a bad frame (like rtfb)."""

    def __init__(self, close_after: int | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.close_after = close_after
        self.frames: list[tuple[int, dict, np.ndarray]] = []
        self.errors: list[tuple[int, str]] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    @staticmethod
    def _recv(conn, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None if not buf else bytes(buf)
            buf += chunk
        return bytes(buf)

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(5)
                nonce = os.urandom(16)
                conn.sendall(b"RTFB" + struct.pack(">I", 2) + nonce)
                try:
                    self._serve(conn, self.connections, nonce)
                except OSError:
                    self.errors.append((self.connections, "reset"))

    def _ack(self, conn, nonce, seq, index, status):
        text = json.dumps({"seq": seq, "index": index, "status": status}).encode()
        tag = _mac(b"rtfb tcp v2 ack\0", nonce, text).hexdigest().encode()
        conn.sendall(text + b" " + tag + b"\n")

    def _serve(self, conn, n_conn, nonce):
        seq = 0
        while True:
            magic = self._recv(conn, 4)
            if magic is None:
                return
            if magic != b"RTFB":
                self.errors.append((n_conn, "magic"))
                return
            raw = self._recv(conn, 4)
            (hlen,) = struct.unpack(">I", raw)
            if not 1 <= hlen <= 65536:
                self.errors.append((n_conn, "header length"))
                return
            head = self._recv(conn, hlen)
            tag = self._recv(conn, 32)
            if head is None or tag is None or len(head) < hlen or len(tag) < 32:
                self.errors.append((n_conn, "short header"))
                return
            if not hmac.compare_digest(tag, _mac(b"rtfb tcp v2 header\0", nonce, magic, raw,
                                                 head).digest()):
                self.errors.append((n_conn, "header tag"))
                return
            header = json.loads(head.decode("utf-8"))
            assert header["seq"] == seq and header["version"] == 2
            payload = self._recv(conn, header["nbytes"])
            if payload is None or len(payload) < header["nbytes"]:
                self.errors.append((n_conn, "short payload"))
                return
            tag = self._recv(conn, 32)
            if tag is None or not hmac.compare_digest(
                    tag, _mac(b"rtfb tcp v2 frame\0", nonce, magic, raw, head,
                              payload).digest()):
                self.errors.append((n_conn, "frame tag"))
                return
            arr = np.frombuffer(payload, dtype=header["dtype"]).reshape(header["shape"])
            known = {h["index"] for _, h, _ in self.frames}
            self.frames.append((n_conn, header, arr))
            self._ack(conn, nonce, seq, header["index"],
                      "duplicate" if header["index"] in known else "accepted")
            seq += 1
            if self.close_after is not None and len(self.frames) == self.close_after:
                return  # drop the connection: the sender must reconnect


def test_encode_frame_layout():
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nonce = bytes(range(16))
    frame, head_len = encode_frame(data, np.eye(4), 7, tr=2.0, acquisition_time=1.5,
                                   series="s", key=KEY, nonce=nonce, seq=4)
    assert frame[:4] == b"RTFB"
    (hlen,) = struct.unpack(">I", frame[4:8])
    assert head_len == 8 + hlen + 32
    header = json.loads(frame[8:8 + hlen])
    assert set(header) == {"version", "seq", "index", "shape", "dtype", "nbytes", "affine",
                           "tr", "acquisition_time", "series"}
    assert header["version"] == 2 and header["seq"] == 4 and header["index"] == 7
    assert header["shape"] == [2, 3, 4]
    assert header["dtype"] == "<f4" and header["nbytes"] == 96 == len(frame) - head_len - 32
    assert frame[8 + hlen:head_len] == _mac(b"rtfb tcp v2 header\0", nonce,
                                            frame[:8 + hlen]).digest()
    payload = frame[head_len:-32]
    np.testing.assert_array_equal(np.frombuffer(payload, "<f4").reshape(2, 3, 4), data)
    assert frame[-32:] == _mac(b"rtfb tcp v2 frame\0", nonce, frame[:8 + hlen],
                               payload).digest()


def test_tcp_frames_and_reconnect(source, tmp_path):
    path, data, affine = source
    with FrameServer(close_after=2) as server:
        doc = stream(path, f"tcp://127.0.0.1:{server.port}", speed=10, volumes=6,
                     manifest=tmp_path / "m.json", key=KEY)
        deadline = time.monotonic() + 5
        while len(server.frames) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert doc["status"] == "completed" and doc["output"] == "tcp"
    assert [h["index"] for _, h, _ in server.frames] == list(range(6))
    assert server.errors == []
    assert server.connections == 2  # the receiver dropped the first connection
    for _, header, arr in server.frames:
        k = header["index"]
        np.testing.assert_array_equal(arr, data[..., k % N_SRC])
        np.testing.assert_allclose(header["affine"], affine, atol=1e-6)
        assert header["tr"] == TR and header["dtype"] == "<f4"
        assert 0 <= header["acquisition_time"] < 86400
    conns = [r["writes"][0]["connection"] for r in doc["volumes"]]
    assert conns == [1, 1, 2, 2, 2, 2]
    assert [r["writes"][0]["seq"] for r in doc["volumes"]] == [0, 1, 0, 1, 2, 3]
    assert doc["acknowledged"] == {"accepted": 6} and doc["bad_acks"] == 0
    assert all(r["acknowledged"] for r in doc["volumes"])
    assert _load(tmp_path / "m.json")["status"] == "completed"


def test_tcp_faults(source, tmp_path):
    path, data, _ = source
    faults = {"drop": [2], "duplicate": [3], "corrupt": [4], "truncate": [6],
              "shuffle": [7], "delay": [1]}
    with FrameServer() as server:
        doc = stream(path, f"tcp://127.0.0.1:{server.port}", speed=30, volumes=9,
                     faults=faults, manifest=tmp_path / "m.json", key=KEY)
        deadline = time.monotonic() + 5
        while len(server.errors) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    received = [h["index"] + 1 for _, h, _ in server.frames]
    # 1 delayed by 2 TR (after 3), 2 dropped, 3 twice, 4 corrupt, 6 cut, 7 and 8 swapped
    assert received == [3, 1, 3, 5, 8, 7, 9]
    assert sorted(e for _, e in server.errors) == ["magic", "short payload"]
    valid = sorted({r["volume"] for r in doc["volumes"] if r["valid"]})
    assert valid == sorted(set(received))
    assert _vol(doc, 6)["writes"][0]["bytes_written"] < _vol(doc, 6)["writes"][0]["size"]
    for _, header, arr in server.frames:
        np.testing.assert_array_equal(arr, data[..., header["index"]])
    # the sender knows what was stored: every frame the receiver took, and only those
    assert doc["acknowledged"] == {"accepted": 6, "duplicate": 1}
    acked = sorted(r["volume"] for r in doc["volumes"] if r["acknowledged"])
    assert acked == sorted(set(received))


def test_tcp_header_corruption(source, tmp_path):
    path, _, _ = source
    with FrameServer() as server:
        stream(path, f"tcp://127.0.0.1:{server.port}", speed=30, volumes=3,
               faults={"corrupt": [2]}, corrupt_mode="header", manifest=tmp_path / "m.json",
               key=KEY)
        deadline = time.monotonic() + 5
        while len(server.frames) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [h["index"] for _, h, _ in server.frames] == [0, 2]
    assert [e for _, e in server.errors] == ["header tag"]  # garbled JSON: tag fails first


def test_tcp_no_receiver(source, tmp_path):
    path, _, _ = source
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match="no TCP receiver"):
        stream(path, f"tcp://127.0.0.1:{port}", speed=30, connect_timeout=0.2,
               manifest=tmp_path / "m.json")
    assert _load(tmp_path / "m.json")["status"] == "failed"


# ----------------------------------------------------------------------------------------
# stopping
# ----------------------------------------------------------------------------------------
def test_stop_event_from_another_thread(source, tmp_path):
    path, _, _ = source
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.update(doc=stream(
        path, tmp_path / "out", 1.0, speed=10, volumes=100, stop_event=stop)))
    thread.start()
    time.sleep(0.35)
    stop.set()
    thread.join(timeout=30)  # a bounded wait: the stream must end on the event
    assert not thread.is_alive()
    doc = result["doc"]
    assert doc["status"] == "interrupted"
    n_written = len(list((tmp_path / "out").iterdir()))
    assert 1 <= n_written < 100
    assert sum(bool(r["writes"]) for r in doc["volumes"]) == n_written
    assert _load(tmp_path / "stream_manifest.json")["status"] == "interrupted"


def _run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "simulator", "stream", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, **kwargs)


def test_cli_stream_with_faults(source, tmp_path):
    path, _, _ = source
    out = tmp_path / "export"
    proc = _run_cli(path, "--to", out, "--speed", 100, "--volumes", 6, "--drop", "2,5",
                    "--delay", 3, "--manifest", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    assert "completed" in proc.stdout and "2 dropped" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        f"vol_{v:05d}.nii" for v in (1, 3, 4, 6)]
    doc = _load(tmp_path / "m.json")
    assert doc["faults"]["volumes"]["drop"] == [2, 5]
    bad = _run_cli(path, "--to", out, "--drop", "1.5")
    assert bad.returncode == 2 and "rate" in bad.stderr


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_cli_ctrl_c(source, tmp_path):
    path, _, _ = source
    manifest = tmp_path / "m.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "stream", str(path), "--to",
         str(tmp_path / "out"), "--tr", "0.2", "--volumes", "1000", "--quiet",
         "--manifest", str(manifest)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not manifest.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    doc = _load(manifest)
    assert doc["status"] == "interrupted"
    assert 1 <= sum(bool(r["writes"]) for r in doc["volumes"]) < 1000


def test_simulator_imports_only_allowed_modules():
    """The simulator plays the scanner: numpy, scipy, nibabel, pydicom and stdlib only."""
    import ast

    allowed = set(sys.stdlib_module_names) | {"numpy", "scipy", "nibabel", "pydicom"}
    for path in sorted((REPO / "simulator").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
    code = ("import sys, simulator, simulator.stream, simulator.cohort, simulator.clock, "
            "simulator.__main__; assert not any(m == 'rtfb' or m.startswith('rtfb.') "
            "for m in sys.modules), sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
