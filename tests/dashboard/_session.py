"""A simulated `rtfb run --dashboard` session started through the installed console script."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PROTOCOL = """
[session]
name = "dashboard_test"
tr = 2.0
volumes = {volumes}
participant_feedback = true

[[blocks]]
condition = "baseline"
volumes = {baseline}
cue = "Rest"
feedback = false

[[blocks]]
condition = "regulate"
volumes = {regulate}
cue = "Lower the bar"
feedback = true

[preprocess]
realign = true
glm = "cumulative"
fd_threshold = 0.5

[rois.left_insula]
mni_sphere = {{ center = [-38.0, 4.0, 2.0], radius = 6.0 }}
simulator_roi = "left_insula"

[metric]
kind = "alff"
roi = "left_insula"
window = 10
band = [0.01, 0.25]
whole_brain = true
maps = ["alff"]

[feedback]
baseline = "block:baseline"
direction = "down"
change = "relative"
scale = 0.2

[output]
zmq_address = "tcp://127.0.0.1:5556"
write_maps_every = 20
"""


def rtfb_script() -> str:
    """The installed ``rtfb`` console script of this interpreter's environment."""
    found = shutil.which("rtfb", path=str(Path(sys.executable).parent)) or shutil.which("rtfb")
    if found is None:
        raise RuntimeError("the rtfb console script is not installed")
    return found


class DashboardRun:
    """``rtfb run PROTOCOL --simulate --dashboard 0`` in a subprocess; parses URL and token."""

    def __init__(self, tmp: Path, volumes: int = 400, baseline: int = 15, speed: float = 10.0):
        self.tmp = Path(tmp)
        self.protocol = self.tmp / "dashboard_test.toml"
        self.protocol.write_text(PROTOCOL.format(volumes=volumes, baseline=baseline,
                                                 regulate=volumes - baseline))
        self.out = self.tmp / "sessions"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [rtfb_script(), "run", str(self.protocol), "--simulate", "--speed", str(speed),
             "--quiet", "--dashboard", "0", "--zmq", "tcp://127.0.0.1:0", "--out", str(self.out)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_dashboard(self, timeout: float = 240.0) -> tuple[str, str]:
        """(operator URL with the token fragment, token)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = "\n".join(self.lines)
            url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/#token=(\S+))", text)
            if url:
                return url.group(1), url.group(2)
            if self.proc.poll() is not None:
                raise RuntimeError("rtfb run ended before serving the dashboard:\n" + text)
            time.sleep(0.2)
        raise TimeoutError("no dashboard URL printed:\n" + "\n".join(self.lines))

    @property
    def session_dir(self) -> Path:
        dirs = sorted(self.out.glob("sub-*"))
        if not dirs:
            raise FileNotFoundError(f"no session folder in {self.out}")
        return dirs[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
