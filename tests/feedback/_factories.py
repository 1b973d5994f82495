"""Message factories shared by the feedback and display tests."""

import itertools
import time

from rtfb.feedback.messages import (
    DISPLAY_STATES,
    EVENTS,
    FLAGS,
    Block,
    DisplayHint,
    FeedbackMessage,
    StatusMessage,
)

SESSION = "sub-01_ses-20261125T101500"
REGULATE = Block(1, "regulate", "Lower the bar", True)
REST = Block(0, "rest", "Rest", False)


def feedback(index=0, value=0.5, session=SESSION, block=REGULATE, **kw):
    kw.setdefault("raw", {"alff": 1.5, "psc": 0.2})
    kw.setdefault("time_received", time.time())
    return FeedbackMessage(session, index, value, block=block, **kw)


def status(event="start", session=SESSION, **kw):
    kw.setdefault("block", REST if event in ("start", "resume", "block") else None)
    kw.setdefault("tr", 2.0)
    return StatusMessage(session, event, **kw)


def many_messages():
    """A varied set of valid messages: all display states, flags, events, nulls, NaN."""
    out = []
    nan = float("nan")
    flag_sets = [()] + [(f,) for f in FLAGS] + [("warmup", "late"), ("motion", "censored"),
                                                 ("missing", "signal_lost", "no_feedback")]
    values = [None, 0.0, 0.37, 1.0, nan]
    raws = [{}, {"alff": nan}, {"alff": 1.2, "zALFF": -0.3, "seed_fc.insula": nan},
            {"psc": float("inf"), "falff": 0.5}]
    for i, (flags, value, raw, block) in enumerate(
            itertools.product(flag_sets, values, raws, (REGULATE, REST))):
        out.append(feedback(i, value, block=block, raw=raw, flags=flags,
                            fd=[None, 0.0, 0.31, nan][i % 4],
                            acquisition_time=[None, 36912.4275, 0.0][i % 3]))
    for state in DISPLAY_STATES:
        out.append(feedback(7, 0.8, display=DisplayHint(state == "feedback", state)))
    out.append(feedback(8, None, target=None, block=REST))  # monitoring: no target
    for event in EVENTS:
        out.append(status(event, message=f"{event} event", volume_index=None))
        out.append(status(event, volume_index=12, acquisition_time=100.5,
                          time_received=time.time(), tr=None, block=REGULATE))
    return out
