"""The participant's screen, drawn with PsychoPy.

:func:`run_display` opens a window, polls the SUB socket (non-blocking) once per frame,
feeds the messages to a :class:`~rtfb.display.state.DisplayState` and draws its snapshot with
:func:`draw`: a thermometer (outline, a fill whose height is the level, a target line), the
block's cue, a fixation cross in rest blocks, and full-screen messages for "Signal lost",
"Please keep still" (motion), waiting and the end of the session. Esc quits.

PsychoPy is imported only when a window is needed (``pip install "rtfb[display]"``); it also
needs a display (``DISPLAY``), e.g. ``xvfb-run`` on a headless machine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from rtfb.feedback.messages import DEFAULT_ADDRESS, MessageError
from rtfb.feedback.signing import MessageVerifier, SignatureError

from .headless import connect_subscriber
from .state import DisplayState, Snapshot

__all__ = ["LAYOUT", "COLORS", "Stims", "draw", "import_psychopy", "make_stims", "run_display"]

logger = logging.getLogger("rtfb.display")

#: geometry in "height" units (the window is 1 high, centred on 0)
LAYOUT = {
    "bar_width": 0.12,
    "bar_height": 0.6,
    "bar_bottom": -0.32,
    "bar_line": 4,           # outline width in pixels
    "target_overhang": 0.03,  # target line sticks out of the bar by this much each side
    "cue_y": 0.4,
    "cue_height": 0.06,
    "text_height": 0.08,
    "fixation_size": 0.06,
}
#: colours as RGB 0-255
COLORS = {
    "background": (20, 20, 20),
    "outline": (255, 255, 255),
    "fill": (40, 200, 90),
    "target": (255, 200, 0),
    "cue": (255, 255, 255),
    "fixation": (255, 255, 255),
    "text": (255, 255, 255),
    "signal_lost": (255, 140, 0),
    "motion": (255, 80, 80),
}


def import_psychopy():
    """Import and return ``(visual, event)`` with clear errors when impossible.

    Raises
    ------
    ImportError
        PsychoPy is not installed.
    RuntimeError
        There is no display to open a window on.
    """
    try:
        import psychopy  # noqa: F401
    except ImportError as err:
        raise ImportError('the on-screen display needs PsychoPy: pip install "rtfb[display]" '
                          "(or run the display with --headless)") from err
    try:
        from psychopy import event, visual
    except Exception as err:  # pyglet raises when it cannot connect to an X display
        if "display" in str(err).lower():
            raise RuntimeError(f"no display to open a window on ({err}); set DISPLAY, run "
                               'under xvfb-run -a -s "-screen 0 800x600x24", or use '
                               "--headless") from err
        raise
    return visual, event


@dataclass
class Stims:
    """The PsychoPy stimuli :func:`draw` uses (made once by :func:`make_stims`)."""

    outline: Any
    fill: Any
    target: Any
    cue: Any
    fixation: Any
    text: Any


def make_stims(win) -> Stims:
    """Create the stimuli of the display on ``win`` (units: window height)."""
    visual, _ = import_psychopy()
    L, C = LAYOUT, COLORS
    common = {"units": "height", "colorSpace": "rgb255", "autoLog": False}
    outline = visual.Rect(win, width=L["bar_width"], height=L["bar_height"],
                          pos=(0, L["bar_bottom"]), anchor="bottom", lineWidth=L["bar_line"],
                          lineColor=C["outline"], fillColor=None, **common)
    fill = visual.Rect(win, width=L["bar_width"], height=L["bar_height"],
                       pos=(0, L["bar_bottom"]), anchor="bottom", lineWidth=0,
                       lineColor=None, fillColor=C["fill"], **common)
    half = L["bar_width"] / 2 + L["target_overhang"]
    target = visual.Line(win, start=(-half, 0), end=(half, 0), lineWidth=4,
                         lineColor=C["target"], fillColor=None, pos=(0, L["bar_bottom"]),
                         **common)
    cue = visual.TextStim(win, text="", pos=(0, L["cue_y"]), height=L["cue_height"],
                          color=C["cue"], wrapWidth=1.2, **common)
    fixation = visual.ShapeStim(win, vertices="cross", size=L["fixation_size"],
                                fillColor=C["fixation"], lineColor=None, **common)
    text = visual.TextStim(win, text="", pos=(0, 0), height=L["text_height"],
                           color=C["text"], wrapWidth=1.2, **common)
    return Stims(outline, fill, target, cue, fixation, text)


def _set_text(stim, text: str) -> None:
    if stim.text != text:  # re-rendering text is slow: only when it changes
        stim.text = text


def draw(win, stims: Stims, snapshot: Snapshot) -> None:
    """Draw ``snapshot`` into the back buffer of ``win`` (the caller flips).

    Parameters
    ----------
    win : psychopy.visual.Window
        The window.
    stims : Stims
        From :func:`make_stims`.
    snapshot : Snapshot
        What to show (:meth:`DisplayState.snapshot`).
    """
    L = LAYOUT
    if snapshot.show_bar:
        if snapshot.level is not None and snapshot.level > 0:
            stims.fill.height = snapshot.level * L["bar_height"]
            stims.fill.draw()
        stims.outline.draw()
        if snapshot.target is not None:
            stims.target.pos = (0, L["bar_bottom"] + snapshot.target * L["bar_height"])
            stims.target.draw()
    if snapshot.cue:  # a discreet mark while the session catches up (stale values)
        _set_text(stims.cue, snapshot.cue + (" ·" if snapshot.catching_up else ""))
        stims.cue.draw()
    if snapshot.fixation:
        stims.fixation.draw()
    if snapshot.text:
        _set_text(stims.text, snapshot.text)
        stims.text.color = COLORS.get(snapshot.mode, COLORS["text"])
        stims.text.draw()


def run_display(address: str = DEFAULT_ADDRESS, fullscr: bool = False, screen: int = 0,
                size: Sequence[int] = (800, 600), *, timeout: float | None = None,
                duration: float | None = None, quit_keys: Sequence[str] = ("escape",),
                max_fps: float = 120.0, exit_on_end: bool = False,
                key: Any = None) -> Snapshot:
    """Show the feedback in a PsychoPy window until Esc (or ``duration``).

    Parameters
    ----------
    address : str
        Publisher endpoint to subscribe to.
    fullscr : bool
        Full screen (the participant's screen); otherwise a window of ``size``.
    screen : int
        Screen number for multi-monitor setups (the projector is often 1).
    size : sequence of int
        Window size in pixels.
    timeout : float | None
        Signal-lost timeout (None: 3 TR if known, else 5 s).
    duration : float | None
        Close after this many seconds (None: until a quit key).
    quit_keys : sequence of str
        Keys that close the window.
    max_fps : float
        Upper bound on the frame rate where flips do not wait for the screen refresh
        (e.g. a virtual display), so the loop does not spin.
    exit_on_end : bool
        Close when the session ends (after drawing the end screen for 2 s).
    key : bytes | str | os.PathLike | MessageVerifier | None
        The session's key, or its key file: only messages signed with it are shown
        (:class:`~rtfb.feedback.signing.MessageVerifier`). ``None`` shows unsigned ones.

    Returns
    -------
    Snapshot
        The last state shown.
    """
    visual, event = import_psychopy()
    state = DisplayState(timeout=timeout)
    verifier = key if isinstance(key, MessageVerifier) else MessageVerifier(key)
    ctx = zmq.Context()
    try:
        sock = connect_subscriber(ctx, address)
    except BaseException:
        ctx.term()
        raise
    win = None
    try:
        win = visual.Window(size=tuple(size), fullscr=fullscr, screen=screen, units="height",
                            color=COLORS["background"], colorSpace="rgb255",
                            allowGUI=not fullscr, checkTiming=False, title="rtfb feedback")
        win.mouseVisible = not fullscr
        stims = make_stims(win)
        start = last_flip = time.monotonic()
        ended_at = None
        snap = state.snapshot()
        while True:
            for _ in range(1000):  # everything that arrived since the last frame
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    topic, message = verifier.verify(frames)
                except SignatureError as err:
                    if verifier.n_rejected in (1, 10, 100) or verifier.n_rejected % 1000 == 0:
                        logger.warning("message refused (%d so far): %s", verifier.n_rejected,
                                       err)
                    continue
                except MessageError as err:
                    logger.warning("invalid message ignored: %s", err)
                    continue
                state.update(topic, message)
            snap = state.snapshot()
            draw(win, stims, snap)
            win.flip()
            now = time.monotonic()
            if event.getKeys(keyList=list(quit_keys)):
                break
            if duration is not None and now - start >= duration:
                break
            if exit_on_end and snap.mode == "end":
                ended_at = now if ended_at is None else ended_at
                if now - ended_at >= 2.0:
                    break
            spare = 1.0 / max_fps - (now - last_flip)
            if spare > 0:
                time.sleep(spare)
            last_flip = time.monotonic()
    finally:
        sock.close(linger=0)
        ctx.term()
        if win is not None:
            win.close()
    return snap
