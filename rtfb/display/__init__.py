"""Displays: subscribers that show the feedback to the participant.

:class:`DisplayState` turns the decoded messages into what to show (:class:`Snapshot`);
:func:`run_display` draws it with PsychoPy (imported only then); :class:`HeadlessDisplay`
records it without a screen. This package imports nothing from rtfb but
:mod:`rtfb.feedback.messages`, so the display process stays light and independent of the
session's internals.
"""

from .cli import display_main
from .headless import HeadlessDisplay, Received
from .psychopy_display import draw, make_stims, run_display
from .state import DisplayState, Snapshot

__all__ = [
    "DisplayState",
    "HeadlessDisplay",
    "Received",
    "Snapshot",
    "display_main",
    "draw",
    "make_stims",
    "run_display",
]
