"""DisplayState: what to show for each message, timeouts, duplicates, sessions."""

import itertools
import json

import pytest

from rtfb.display.state import DEFAULT_TIMEOUT, TEXTS, DisplayState, Snapshot
from rtfb.feedback.messages import DisplayHint
from rtfb.feedback.wire import encode

from ..feedback._factories import REGULATE, REST, feedback, status


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


_stamps = itertools.count(1_800_000_000)


def obj(msg, published=None):
    """The decoded dict of ``msg`` as a display receives it (increasing time_published)."""
    published = next(_stamps) if published is None else published
    return json.loads(encode(msg.topic, msg, time_published=published)[1])


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def state(clock):
    return DisplayState(clock=clock)


def test_waiting_before_anything(state):
    snap = state.snapshot()
    assert snap.mode == "waiting" and snap.text == TEXTS["waiting"]
    assert snap.level is None and not snap.show_bar and not snap.fixation
    assert snap == Snapshot()


def test_feedback_level_target_and_cue(state):
    snap = state.update("feedback", obj(feedback(4, 0.62, target=0.8)))
    assert snap.mode == "feedback" and snap.show_bar
    assert snap.level == 0.62 and snap.target == 0.8
    assert snap.cue == "Lower the bar" and not snap.fixation and snap.text == ""
    assert snap.volume_index == 4 and snap.block_index == 1 and snap.condition == "regulate"


def test_null_value_shows_empty_bar(state):
    snap = state.update("feedback", obj(feedback(0, None, flags=["warmup"])))
    assert snap.mode == "feedback" and snap.show_bar and snap.level is None
    assert snap.flags == ("warmup",)


def test_rest_block_shows_cue_and_fixation(state):
    snap = state.update("feedback", obj(feedback(1, 0.4, block=REST)))
    assert snap.mode == "rest" and snap.fixation and not snap.show_bar
    assert snap.cue == "Rest" and snap.level is None


@pytest.mark.parametrize("kw, mode", [
    ({"flags": ["motion"]}, "motion"),
    ({"flags": ["signal_lost"]}, "signal_lost"),
    ({"display": DisplayHint(False, "motion")}, "motion"),
    ({"display": DisplayHint(False, "signal_lost")}, "signal_lost"),
    ({"display": DisplayHint(False, "end")}, "end"),
])
def test_special_screens(state, kw, mode):
    snap = state.update("feedback", obj(feedback(2, 0.5, **kw)))
    assert snap.mode == mode and snap.text == TEXTS[mode] and not snap.show_bar


def test_end_is_sticky_until_new_start(state, clock):
    state.update("feedback", obj(feedback(1, 0.5), published=10.0))
    assert state.update("status", obj(status("end"), published=11.0)).mode == "end"
    clock.t += 3600
    assert state.snapshot().mode == "end"  # no timeout after the end
    snap = state.update("status", obj(status("start", session="next"), published=12.0))
    assert snap.mode == "waiting" and snap.session_id == "next" and snap.cue == "Rest"


def test_timeout_signal_lost_and_recovery(clock):
    state = DisplayState(timeout=1.5, clock=clock)
    state.update("feedback", obj(feedback(1, 0.5)))
    clock.t += 1.4
    assert state.snapshot().mode == "feedback"
    clock.t += 0.2
    snap = state.snapshot()
    assert snap.mode == "signal_lost" and snap.text == TEXTS["signal_lost"]
    assert state.update("feedback", obj(feedback(2, 0.7))).mode == "feedback"


def test_timeout_defaults_to_three_tr_or_five_seconds(state, clock):
    assert state.effective_timeout == DEFAULT_TIMEOUT == 5.0
    state.update("status", obj(status("start", tr=0.8)))
    assert state.effective_timeout == pytest.approx(2.4)
    assert state.snapshot().mode == "waiting"
    clock.t += 60  # waiting for the scanner is not a lost signal
    assert state.snapshot().mode == "waiting"
    state.update("feedback", obj(feedback(0, None)))
    clock.t += 2.5
    assert state.snapshot().mode == "signal_lost"
    assert DisplayState(timeout=7, clock=clock).effective_timeout == 7.0
    with pytest.raises(ValueError):
        DisplayState(timeout=0)


def test_duplicates_ignored_and_do_not_reset_timer(clock):
    state = DisplayState(timeout=2.0, clock=clock)
    fb = obj(feedback(3, 0.4))
    state.update("feedback", fb)
    clock.t += 1.5
    state.update("feedback", dict(fb))  # late-join copy
    assert state.n_ignored == 1 and state.n_applied == 1
    clock.t += 1.0
    assert state.snapshot().mode == "signal_lost"


def test_older_message_resent_after_newer_ones_is_ignored(state):
    """A late-join copy of the start status arriving after feedback must not reset it."""
    start = obj(status("start", tr=0.7), published=1.0)
    state.update("feedback", obj(feedback(0, 0.3), published=2.0))
    state.update("feedback", obj(feedback(1, 0.4), published=3.0))
    snap = state.update("status", start)
    assert snap.mode == "feedback" and snap.level == 0.4
    assert state.n_ignored == 1 and state.tr == 0.7  # its TR is still taken
    assert state.update("feedback", obj(feedback(0, 0.3), published=2.0)).volume_index == 1


def test_status_signal_lost_until_restored(state):
    state.update("feedback", obj(feedback(3, 0.4), published=1.0))
    assert state.update("status", obj(status("signal_lost"), published=2.0)).mode \
        == "signal_lost"
    assert state.update("status", obj(status("signal_restored"), published=3.0)).mode \
        == "feedback"
    state.update("status", obj(status("signal_lost"), published=4.0))
    assert state.update("feedback", obj(feedback(4, 0.4), published=5.0)).mode == "feedback"


def test_block_status_updates_cue_before_next_volume(state):
    state.update("feedback", obj(feedback(3, 0.4, block=REST), published=1.0))
    snap = state.update("status", obj(status("block", block=REGULATE), published=2.0))
    assert snap.cue == "Lower the bar" and snap.block_index == 1


def test_new_session_replaces_state(state):
    state.update("feedback", obj(feedback(9, 0.9)))
    snap = state.update("feedback", obj(feedback(0, 0.1, session="other")))
    assert snap.session_id == "other" and snap.level == 0.1 and snap.volume_index == 0


def test_unknown_topic_and_future_values(state):
    state.update("weather", {"session_id": "x"})
    assert state.n_ignored == 1
    fb = obj(feedback(1, 0.3))
    fb["display"] = {"show_bar": True, "state": "future"}
    assert state.update(b"feedback", fb).mode == "feedback"
    fb = {**fb, "volume_index": 2, "time_published": fb["time_published"] + 1,
          "display": {"show_bar": False, "state": "future"}}
    assert state.update("feedback", fb).mode == "rest"


def test_level_is_clipped(state):
    fb = obj(feedback(1, 0.3))
    fb["value"] = 1.3  # a lenient producer
    assert state.update("feedback", fb).level == 1.0
