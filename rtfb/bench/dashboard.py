"""Session latency with the operator dashboard off, serving, and open in a browser.

The whole-session benchmark (:func:`rtfb.bench.session.run_session`: simulator -> export
folder -> realignment, GLM, whole-brain ALFF and ReHo -> ZeroMQ -> fsync'ed record) runs
the same stream in three conditions, interleaved, several times:

- ``off``: no dashboard;
- ``server``: the dashboard (ZeroMQ subscriber, record reader, web server) running in the
  session's process, with a client reading the event stream and polling ``/api/status``
  and ``/api/slices`` (as the page does) from another thread;
- ``page``: the dashboard with the real page open in headless Chromium on the same machine
  (skipped when Chromium, chromedriver or selenium are missing).

Latency is from the simulator finishing a volume's file to its feedback message arriving at
a subscriber (the benchmark's display stand-in), for the volumes whose sliding window is full.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np

from ._timing import summary_ms

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--window-size=1400,1100")


class _StreamClient:
    """Reads the event stream and polls status and slices, like the page (no rendering)."""

    def __init__(self, url: str):
        self.url = url
        self.n_events = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._stream, daemon=True),
                         threading.Thread(target=self._poll, daemon=True)]

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def _stream(self):
        host, port = self.url.split("//")[1].rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/api/stream")
        resp = conn.getresponse()
        while not self._stop.is_set():
            try:
                line = resp.fp.readline()
            except OSError:
                return
            if not line:
                return
            if line.startswith(b"data: "):
                json.loads(line[6:])
                self.n_events += 1
        conn.close()

    def _poll(self):
        k = 0
        while not self._stop.wait(0.5):
            urllib.request.urlopen(self.url + "api/status", timeout=5).read()
            if k % 10 == 0:
                urllib.request.urlopen(self.url + "api/slices", timeout=5).read()
            k += 1

    def stop(self):
        self._stop.set()


def _chromium():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None

    def open_page(url: str, profile: Path):
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in _FLAGS + (f"--user-data-dir={profile}",):
            opts.add_argument(flag)
        browser = webdriver.Chrome(service=Service(driver), options=opts)
        browser.get(url)
        return browser

    return open_page


def _attach(mode: str, tmp: Path, info: dict):
    """The ``attach`` hook of run_session for one condition."""
    if mode == "off":
        return None

    def attach(session, publisher):
        from ..dashboard.cli import LiveDashboard

        dash = LiveDashboard(session.out_dir, publisher.endpoint, session.commands, port=0,
                             roi=session.protocol.metric.roi).start()
        client = browser = None
        if mode == "server":
            client = _StreamClient(dash.server.url).start()
        else:
            browser = _chromium()(dash.server.operator_url, tmp / "profile")

        def detach():
            if browser is not None:
                info["drawn"] = browser.execute_script(
                    "return window.rtfbDash ? window.rtfbDash.drawn : 0")
                browser.quit()
            if client is not None:
                client.stop()
                info["events"] = client.n_events
            dash.stop()

        return detach

    return attach


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench dashboard``."""
    parser.add_argument("--shape", default="64x64x36")
    parser.add_argument("--volumes", type=int, default=150)
    parser.add_argument("--interval", type=float, default=0.1,
                        help="seconds between volumes (TR / speed)")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="runs per condition")
    parser.add_argument("--modes", nargs="+", default=["off", "server", "page"],
                        choices=["off", "server", "page"])


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print a markdown table."""
    from .session import run_session

    shape = tuple(int(v) for v in args.shape.split("x"))
    modes = [m for m in args.modes if m != "page" or _chromium() is not None]
    lat: dict[str, list] = {m: [] for m in modes}
    lost = dict.fromkeys(modes, 0)
    shown: dict[str, list] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for mode in modes:
            info: dict = {}
            with tempfile.TemporaryDirectory() as tmp:
                res = run_session(shape, args.volumes, args.volumes, args.window,
                                  args.interval, Path(tmp),
                                  attach=_attach(mode, Path(tmp), info))
            lat[mode].append(res["full"])
            lost[mode] += res["lost"]
            if "drawn" in info or "events" in info:  # nothing to count without a dashboard
                shown[mode].append(info.get("drawn", info.get("events")))
    print("# rtfb.bench dashboard: file complete -> feedback delivered, dashboard off/on\n")
    print(f"{args.shape}, {args.volumes} volumes every {args.interval * 1e3:.0f} ms, window "
          f"{args.window}, {args.repeat} run(s) per condition, interleaved\n")
    print("| dashboard | latency median / p95, window full (ms) | median ratio to off | lost | "
          "page volumes drawn / stream events |")
    print("|---|---:|---:|---:|---:|")
    base = float(np.median(np.concatenate(lat["off"]))) if "off" in lat else None
    for mode in modes:
        values = np.concatenate(lat[mode])
        med, p95 = summary_ms(values)
        ratio = f"{np.median(values) / base:.2f}" if base else "-"
        print(f"| {mode} | {med:.1f} / {p95:.1f} | {ratio} | {lost[mode]} | "
              f"{', '.join(str(s) for s in shown[mode]) or '-'} |", flush=True)
    return 0
