"""`rtfb dashboard SESSION_DIR` on a recorded session, and the slices read from the record."""

import base64
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np

from rtfb.dashboard.model import DashboardModel
from rtfb.dashboard.slices import SliceSource
from rtfb.dashboard.sources import JsonlTail, replay_record
from tests.dashboard._session import rtfb_script
from tests.session._fake_record import LATE, MISSING, write_fake_session


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_rtfb_dashboard_serves_a_recorded_session(tmp_path):
    rec = write_fake_session(tmp_path, maps=True)
    proc = subprocess.Popen([rtfb_script(), "dashboard", str(rec["dir"]), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line).group(1)
        status = None
        for _ in range(100):
            status = _get(url + "api/status")
            if status["done"]:
                break
            time.sleep(0.1)
        assert status["mode"] == "review" and status["done"]
        assert status["processed"] == len(rec["volumes"])
        assert status["index"] == rec["volumes"][-1]["index"]
        assert status["missing"] == 1 and status["late"] == 1
        snap = _get(url + "api/snapshot")
        assert [r["i"] for r in snap["rows"]] == [v["index"] for v in rec["volumes"]]
        assert snap["info"]["fd_threshold"] == 0.5 and snap["info"]["n_expected"] == 60
        kinds = {e["kind"] for e in snap["events"]}
        assert {"missing", "late", "warning", "end"} <= kinds
        req = urllib.request.Request(url + "api/stop", data=b"", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("a recorded session accepted a control")
        except urllib.error.HTTPError as err:
            assert err.code == 401
        slices = _get(url + "api/slices")
        assert slices["n"] == len(rec["indices"]) - 1  # the late volume is not in the mean
        assert slices["map"]["file"] == "alff_needle_vol-00059.nii.gz"
        assert slices["map"]["name"] == "alff" and slices["map"]["volume"] == 59
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_rtfb_dashboard_bad_folder(tmp_path):
    out = subprocess.run([rtfb_script(), "dashboard", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not a session record" in out.stdout and "Traceback" not in out.stderr


def test_mean_epi_slices_equal_the_mean_of_the_received_volumes(tmp_path):
    rec = write_fake_session(tmp_path)
    arrays = [a for i, a in zip(rec["indices"], rec["arrays"], strict=True) if i != LATE]
    mean = np.mean(np.stack(arrays).astype(float), axis=0)
    payload = SliceSource(rec["dir"]).payload()
    assert payload["n"] == len(arrays) and MISSING not in rec["indices"]
    x, y, z = payload["cut"]
    assert (x, y, z) == tuple(s // 2 for s in mean.shape)  # no ROI: the centre
    lo, hi = np.percentile(mean, [1, 99.5])
    gray = np.clip((mean - lo) * 255.0 / (hi - lo), 0, 255).astype(np.uint8)
    axial = payload["views"]["axial"]
    got = np.frombuffer(base64.b64decode(axial["gray"]), np.uint8).reshape(axial["h"],
                                                                           axial["w"])
    # axial: x to the right, anterior (y) up
    np.testing.assert_array_equal(got, gray[:, :, z].T[::-1, :])
    assert axial["aspect"] == 1.0  # 3 x 3 mm in-plane
    assert payload["views"]["coronal"]["aspect"] == 3.5 / 3.0


def test_tail_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []
    path.write_text('{"a": 1}\n{"b"')
    assert tail.read() == [{"a": 1}]
    with open(path, "a") as fh:
        fh.write(': 2}\nnot json\n{"c": 3}\n')
    assert tail.read() == [{"b": 2}, {"c": 3}]
    assert tail.read() == []


def test_paced_replay_feeds_volumes_in_order(tmp_path):
    rec = write_fake_session(tmp_path, n_volumes=20)
    model = DashboardModel("review")
    seen = []
    model.subscribe(lambda p: p and p["type"] == "row" and seen.append(p["row"]["i"]))
    t0 = time.monotonic()
    replay_record(rec["dir"], model, speed=200.0)  # TR 2 s -> 10 ms per volume
    assert time.monotonic() - t0 >= 0.1
    assert sorted(set(seen)) == [v["index"] for v in rec["volumes"]]
    assert seen == sorted(seen)
    assert model.status()["done"]
