"""A stale feedback message (the session is catching up) never moves the display."""

from rtfb.display.state import DisplayState
from rtfb.feedback.messages import FLAGS


def _fb(i, value, flags=(), t=None):
    return {"schema_version": 1, "type": "feedback", "session_id": "s", "volume_index": i,
            "acquisition_time": None, "time_received": 0.0,
            "time_published": float(i + 1) if t is None else t, "value": value, "raw": {},
            "block": {"index": 1, "condition": "regulate", "cue": "Lower", "feedback": True},
            "fd": 0.1, "flags": list(flags), "target": 0.75,
            "display": {"show_bar": True, "state": "feedback"}}


def test_stale_keeps_the_last_state_with_a_catching_up_mark():
    assert "stale" in FLAGS
    state = DisplayState(timeout=100.0, clock=lambda: 0.0)
    snap = state.update("feedback", _fb(0, 0.6))
    assert snap.level == 0.6 and not snap.catching_up
    snap = state.update("feedback", _fb(1, None, ["stale"]))
    assert snap.mode == "feedback" and snap.level == 0.6 and snap.catching_up
    assert snap.volume_index == 0  # still showing the last fresh volume
    snap = state.update("feedback", _fb(2, 0.3))
    assert snap.level == 0.3 and not snap.catching_up and snap.volume_index == 2
