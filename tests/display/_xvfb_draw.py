"""Run under a (virtual) X display by test_psychopy_xvfb.py: draw known states, save PNGs.

Usage: python _xvfb_draw.py OUT_DIR. Prints ``RTFB_NO_WINDOW: reason`` when no window can be
opened (the test then skips), else ``RTFB_RESULT {json}``.
"""

import json
import sys
import threading
import time
from pathlib import Path

from rtfb.display.psychopy_display import COLORS, draw, make_stims, run_display
from rtfb.display.state import TEXTS, Snapshot
from rtfb.feedback.messages import Block, FeedbackMessage, StatusMessage
from rtfb.feedback.publisher import FeedbackPublisher

out = Path(sys.argv[1])
try:
    from psychopy import visual

    win = visual.Window(size=(400, 300), fullscr=False, allowGUI=False, units="height",
                        color=COLORS["background"], colorSpace="rgb255", checkTiming=False)
except Exception as err:  # no X display or no OpenGL
    print(f"RTFB_NO_WINDOW: {type(err).__name__}: {err}", flush=True)
    sys.exit(0)

cases = {f"level_{lv:.1f}": Snapshot(mode="feedback", level=lv, show_bar=True, target=0.75,
                                      cue="Raise the bar", text="")
         for lv in (0.1, 0.5, 0.9)}
cases["signal_lost"] = Snapshot(mode="signal_lost", text=TEXTS["signal_lost"])
cases["motion"] = Snapshot(mode="motion", text=TEXTS["motion"])
cases["rest"] = Snapshot(mode="rest", cue="Rest", fixation=True, text="")
stims = make_stims(win)
timings = {}
for name, snap in cases.items():
    t0 = time.perf_counter()
    draw(win, stims, snap)
    timings[name] = time.perf_counter() - t0
    win.getMovieFrame(buffer="back")
    win.saveMovieFrames(str(out / f"{name}.png"))
    win.flip()
win.close()

# the real loop: a publisher in this process, run_display subscribed to it for a moment
session = "xvfb"
block = Block(1, "regulate", "Raise the bar", True)
with FeedbackPublisher("tcp://127.0.0.1:0", session) as pub:
    pub.publish(b"status", StatusMessage(session, "start", block=block, tr=1.0))
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            pub.publish(b"feedback", FeedbackMessage(session, i, 0.5, {"alff": 1.0}, block,
                                                     time.time()))
            i += 1
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    t0 = time.perf_counter()
    last = run_display(pub.endpoint, size=(400, 300), duration=1.5)
    loop_s = time.perf_counter() - t0
    stop.set()
    feeder.join()

result = {"files": sorted(p.name for p in out.glob("*.png")), "draw_s": timings,
          "run_display": {"mode": last.mode, "level": last.level, "seconds": loop_s,
                          "volume_index": last.volume_index}}
print("RTFB_RESULT " + json.dumps(result), flush=True)
