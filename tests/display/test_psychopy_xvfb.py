"""The real PsychoPy drawing, in a subprocess under Xvfb (skips without PsychoPy/display).

The subprocess (``_xvfb_draw.py``) draws known states with :func:`rtfb.display.draw`, grabs
the back buffer before each flip and saves PNGs; it also runs :func:`run_display` for 1.5 s
against a publisher. The checks here read the pixels.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rtfb.display.psychopy_display import COLORS, LAYOUT

pytestmark = pytest.mark.timeout(240)  # a hang fails fast, not after 10 min

SCRIPT = Path(__file__).with_name("_xvfb_draw.py")
SIZE = (400, 300)


def _command(out_dir):
    if importlib.util.find_spec("psychopy") is None:
        pytest.skip('PsychoPy is not installed (pip install "rtfb[display]")')
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 800x600x24", sys.executable, str(SCRIPT),
                str(out_dir)]
    if os.environ.get("DISPLAY"):
        return [sys.executable, str(SCRIPT), str(out_dir)]
    pytest.skip("no display: DISPLAY is unset and xvfb-run is not installed "
                "(apt-get install xvfb libgl1-mesa-dri libglu1-mesa)")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("xvfb")
    cmd = _command(out)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    elapsed = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RTFB_NO_WINDOW:"):
            pytest.skip(f"cannot open a PsychoPy window: {line.split(':', 1)[1].strip()}")
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith("RTFB_RESULT ")]
    assert proc.returncode == 0 and results, (proc.stdout[-3000:], proc.stderr[-3000:])
    result = json.loads(results[-1].split(" ", 1)[1])
    result["elapsed"] = elapsed
    Image = pytest.importorskip("PIL.Image")
    images = {p.stem: np.asarray(Image.open(p).convert("RGB")).astype(int)
              for p in out.glob("*.png")}
    return result, images


def _mask(img, color, tol=40):
    return (np.abs(img - np.array(color)) <= tol).all(axis=-1)


def _fill_extent(img):
    """(bottom row, top row, height in px) of the bar fill, rows counted from the top."""
    rows = np.flatnonzero(_mask(img, COLORS["fill"]).any(axis=1))
    if rows.size == 0:
        return None, None, 0
    return rows.max(), rows.min(), rows.max() - rows.min() + 1


def test_images_have_window_size(drawn):
    result, images = drawn
    assert set(images) == {"level_0.1", "level_0.5", "level_0.9", "signal_lost", "motion",
                           "rest"}, result
    for img in images.values():
        assert img.shape == (SIZE[1], SIZE[0], 3)


def test_bar_height_tracks_level(drawn):
    _, images = drawn
    full = LAYOUT["bar_height"] * SIZE[1]  # px, units are window heights
    heights, bottoms = {}, {}
    for level in (0.1, 0.5, 0.9):
        bottom, _, height = _fill_extent(images[f"level_{level:.1f}"])
        heights[level], bottoms[level] = height, bottom
    assert heights[0.1] < heights[0.5] < heights[0.9], heights
    for level, h in heights.items():  # roughly proportional to the level
        assert h == pytest.approx(level * full, abs=4), heights
    assert max(bottoms.values()) - min(bottoms.values()) <= 1, bottoms  # grows from the base
    # the fill stays inside the outline and the target line is drawn at 0.75
    img = images["level_0.5"]
    target_rows = np.flatnonzero(_mask(img, COLORS["target"]).any(axis=1))
    expected = SIZE[1] / 2 - (LAYOUT["bar_bottom"] + 0.75 * LAYOUT["bar_height"]) * SIZE[1]
    assert target_rows.size and abs(target_rows.mean() - expected) <= 3


def test_status_screens_differ(drawn):
    _, images = drawn
    for name, color in (("signal_lost", COLORS["signal_lost"]), ("motion", COLORS["motion"])):
        img = images[name]
        assert _fill_extent(img)[2] == 0  # no bar
        assert _mask(img, color, tol=30).sum() > 200  # its coloured message is there
        assert np.abs(img - images["level_0.5"]).mean() > 2
    assert np.abs(images["signal_lost"] - images["motion"]).mean() > 1
    rest = images["rest"]
    assert _fill_extent(rest)[2] == 0
    centre = rest[SIZE[1] // 2 - 5:SIZE[1] // 2 + 5, SIZE[0] // 2 - 5:SIZE[0] // 2 + 5]
    assert _mask(centre, COLORS["fixation"]).any()  # fixation cross


def test_run_display_receives_and_shows_feedback(drawn):
    result, _ = drawn
    loop = result["run_display"]
    assert loop["mode"] == "feedback" and loop["level"] == 0.5, result
    assert loop["volume_index"] >= 5
    assert loop["seconds"] < 10
