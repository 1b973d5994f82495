"""The operator dashboard in a real (headless) Chromium, on a simulated `rtfb run` session.

Started through the installed ``rtfb`` console script; skipped when Chromium, chromedriver
or selenium are absent (``.ci/run`` installs Debian's chromium and chromium-driver).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.dashboard._session import DashboardRun

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1100")

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="chromium and chromedriver are not installed")


def _driver(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _post(url, token=None, body=b"{}"):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _events(session_dir: Path) -> list[dict]:
    path = session_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_dashboard_in_chromium(tmp_path):
    run = DashboardRun(tmp_path)
    driver = None
    try:
        operator_url, token = run.wait_for_dashboard()
        base = operator_url.split("#")[0]
        driver = _driver(tmp_path / "profile")
        driver.get(operator_url)
        js = driver.execute_script

        # the plots advance with the volume count
        drawn = _wait(lambda: js("return window.rtfbDash && window.rtfbDash.drawn") or 0,
                      120, "the first plotted volumes")
        first = js("return window.rtfbDash.plots.feedback.data[0].length")
        assert first >= 1
        later = _wait(lambda: (n := js("return window.rtfbDash.plots.feedback.data[0].length"))
                      >= first + 5 and n, 60, "the plots to advance")
        assert later >= drawn + 5
        status = json.loads(urllib.request.urlopen(base + "api/status", timeout=10).read())
        assert {"processed", "index", "block", "latency_ms"} <= set(status)
        assert status["processed"] >= later - 1
        # every plot follows the same volumes; motion, FD, latency and QA values are drawn
        for name in ("motion", "fd", "latency", "qa"):
            n = js(f"return window.rtfbDash.plots.{name}.data[0].length")
            assert n >= later - 1
        tsnr = js("return window.rtfbDash.plots.qa.data[1].filter(v => v !== null).length")
        assert tsnr > 0
        lat = js("return window.rtfbDash.plots.latency.data[1].filter(v => v !== null).length")
        assert lat > 0

        # controls without the token are refused, with a wrong token too
        code, body = _post(base + "api/mark", None, b'{"label": "intruder"}')
        assert code == 401 and "token" in body["error"]
        code, _ = _post(base + "api/pause", "not-the-token")
        assert code == 403
        # a marked event from the page lands in the record with its volume index
        box = driver.find_element("id", "label")
        box.send_keys("needle in")
        driver.find_element("id", "mark").click()
        mark = _wait(lambda: [e for e in _events(run.session_dir)
                              if e["kind"] == "mark"], 30, "the mark in events.jsonl")
        assert mark[0]["message"] == "needle in"
        assert isinstance(mark[0]["index"], int) and mark[0]["index"] >= 0
        assert not [e for e in _events(run.session_dir) if e.get("message") == "intruder"]
        _wait(lambda: js("return document.querySelectorAll('#events li.mark').length"), 20,
              "the mark in the page's event list")

        # pause: the next feedback messages carry the 'paused' flag and no value
        driver.find_element("id", "pause").click()
        pause = _wait(lambda: [e for e in _events(run.session_dir)
                               if e["kind"] == "feedback_pause"], 30, "the pause event")
        after = pause[0]["index"]

        def paused_volumes():
            path = run.session_dir / "volumes.jsonl"
            vols = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            return [v for v in vols if v["index"] > after + 1]

        vols = _wait(paused_volumes, 30, "volumes after the pause")
        assert all("paused" in v["flags"] and v["feedback"] is None for v in vols)
        driver.find_element("id", "resume").click()
        _wait(lambda: [e for e in _events(run.session_dir)
                       if e["kind"] == "feedback_resume"], 30, "the resume event")

        # slices of the mean EPI with the ROI are drawn
        _wait(lambda: js("return document.querySelectorAll('#slices-mean canvas').length") == 3,
              60, "the mean EPI slices")
        # and the latest whole-brain change map (written every 20 volumes)
        _wait(lambda: js("return document.querySelectorAll('#slices-map canvas').length") == 3,
              60, "the change map slices")

        # the simulated session's display is connected, and the page says so
        _wait(lambda: js("return document.getElementById('b-display').textContent")
              == "display connected", 60, "the display badge")

        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        from matplotlib.image import imread

        pixels = imread(shot)[..., :3]
        assert pixels.shape[0] > 500 and pixels.shape[1] > 800
        assert pixels.std() > 0.05  # not a blank page
        colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
        assert len(colours) > 100

        # stop from the page: the session ends cleanly
        js("window.rtfbDash.noConfirm = true")
        driver.find_element("id", "stop").click()
        assert run.proc.wait(120) == 0
        kinds = [e["kind"] for e in _events(run.session_dir)]
        assert "stop" in kinds and kinds[-1] == "end"
        assert "stopped by the operator" in _events(run.session_dir)[-1]["message"]
    finally:
        if driver is not None:
            driver.quit()
        run.close()
