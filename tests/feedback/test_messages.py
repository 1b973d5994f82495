"""Message dataclasses, encode/decode and the pure-Python validator."""

import json
import math

import numpy as np
import pytest

from rtfb.feedback.messages import (
    FLAGS,
    SCHEMA_VERSION,
    Block,
    DisplayHint,
    FeedbackMessage,
    MessageError,
    default_display,
    from_dict,
    validate_message,
)
from rtfb.feedback.wire import decode, encode

from ._factories import REGULATE, REST, SESSION, feedback, many_messages, status


def test_feedback_round_trip():
    msg = feedback(42, 0.61, fd=0.12, flags=["late"], acquisition_time=36912.5)
    frames = encode(b"feedback", msg, time_published=1795600000.25)
    assert frames[0] == b"feedback"
    topic, obj = decode(frames)
    assert topic == "feedback"
    assert obj["schema_version"] == SCHEMA_VERSION == "1.1"
    assert obj["type"] == "feedback"
    assert obj["volume_index"] == 42 and obj["value"] == 0.61 and obj["fd"] == 0.12
    assert obj["time_published"] == 1795600000.25
    assert obj["block"] == {"index": 1, "condition": "regulate", "cue": "Lower the bar",
                            "feedback": True}
    assert obj["display"] == {"show_bar": True, "state": "feedback"}
    assert from_dict(obj) == FeedbackMessage(**{**_init_fields(msg),
                                                "time_published": 1795600000.25})


def _init_fields(msg):
    return {k: getattr(msg, k) for k in msg.__dataclass_fields__ if k != "type"}


def test_status_round_trip():
    msg = status("block", message="next: regulate", block=REGULATE, volume_index=30)
    topic, obj = decode(encode("status", msg))
    assert topic == "status"
    assert obj["event"] == "block" and obj["tr"] == 2.0 and obj["volume_index"] == 30
    assert obj["block"]["cue"] == "Lower the bar"
    assert isinstance(obj["time_published"], float)
    assert from_dict(obj).event == "block"


def test_nan_and_numpy_become_json_null_and_float():
    msg = feedback(1, np.float32(np.nan), raw={"alff": np.nan, "psc": np.float64(0.25),
                                               "reho": np.inf}, fd=np.float32(np.nan),
                   acquisition_time=np.nan)
    payload = encode(b"feedback", msg)[1]
    assert b"NaN" not in payload and b"Infinity" not in payload
    obj = json.loads(payload)
    assert obj["value"] is None and obj["fd"] is None and obj["acquisition_time"] is None
    assert obj["raw"] == {"alff": None, "psc": 0.25, "reho": None}
    assert type(obj["raw"]["psc"]) is float


@pytest.mark.parametrize("flags, block, state, show_bar", [
    ((), REGULATE, "feedback", True),
    (("warmup",), REGULATE, "feedback", True),
    (("motion",), REGULATE, "motion", False),
    (("signal_lost", "motion"), REGULATE, "signal_lost", False),
    ((), REST, "rest", False),
    (("no_feedback",), REGULATE, "rest", False),
])
def test_default_display(flags, block, state, show_bar):
    assert default_display(flags, block) == DisplayHint(show_bar, state)
    assert feedback(0, None, block=block, flags=flags).display.state == state


def test_flags_deduplicated_and_no_feedback_added():
    msg = feedback(0, 0.3, block=REST, flags=["late", "late", "missing"])
    assert msg.flags == ("late", "missing", "no_feedback")


@pytest.mark.parametrize("kw, match", [
    ({"value": 1.2}, "value"),
    ({"value": "0.5"}, "value"),
    ({"target": "0.7"}, "target"),
    ({"target": 2}, "target"),
    ({"flags": ["bogus"]}, "flag"),
    ({"flags": "motion"}, "flags"),
    ({"fd": -0.1}, "fd"),
    ({"acquisition_time": 86400.0}, "acquisition_time"),
    ({"raw": {"bad name": 1.0}}, "raw"),
    ({"raw": {"alff": "1"}}, "raw"),
    ({"raw": [1.0]}, "raw"),
    ({"index": -1}, "volume_index"),
    ({"index": 1.5}, "volume_index"),
    ({"session": ""}, "session_id"),
    ({"time_received": None}, "time_received"),
])
def test_invalid_feedback_raises(kw, match):
    with pytest.raises(MessageError, match=match):
        feedback(**kw)


@pytest.mark.parametrize("kw, match", [
    ({"event": "bogus"}, "event"),
    ({"tr": 0}, "tr"),
    ({"volume_index": -3}, "volume_index"),
    ({"message": 3}, "message"),
])
def test_invalid_status_raises(kw, match):
    with pytest.raises(MessageError, match=match):
        status(**kw)


def test_block_and_hint_validation():
    with pytest.raises(MessageError, match="block.feedback"):
        Block(0, "rest", "", "no")
    with pytest.raises(MessageError, match="display.state"):
        DisplayHint(True, "party")
    assert FLAGS == ("warmup", "baseline", "motion", "censored", "missing", "late",
                     "signal_lost", "no_feedback", "paused", "stale")


def test_encode_checks_topic_and_accepts_dicts():
    msg = feedback(3, 0.4)
    with pytest.raises(MessageError, match="topic"):
        encode(b"status", msg)
    with pytest.raises(MessageError, match="topic"):
        encode(b"other", msg)
    obj = msg.to_dict()  # time_published None: allowed before sending
    frames = encode("feedback", obj, time_published=5.0)
    assert json.loads(frames[1])["time_published"] == 5.0
    with pytest.raises(TypeError):
        encode(b"feedback", [1, 2])


def _frames(obj, topic=b"feedback"):
    return [topic, json.dumps(obj).encode()]


def _valid_obj():
    return json.loads(encode(b"feedback", feedback(5, 0.5))[1])


@pytest.mark.parametrize("frames, match", [
    ([b"feedback"], "2 frames"),
    ([b"feedback", b"{}", b"x"], "2 frames"),
    ([b"weather", b"{}"], "topic"),
    ([b"feedback", b"\xff\xfe"], "UTF-8 JSON"),
    ([b"feedback", b"{not json"], "UTF-8 JSON"),
    ([b"feedback", b"[1, 2]"], "JSON object"),
    ([b"feedback", b'{"value": NaN}'], "NaN"),
    ([b"feedback", b"{}"], "lacks"),
])
def test_decode_rejects_bad_frames(frames, match):
    with pytest.raises(MessageError, match=match):
        decode(frames)


def test_decode_rejects_type_topic_mismatch_and_schema_errors():
    obj = _valid_obj()
    with pytest.raises(MessageError, match="topic"):
        decode(_frames(obj, b"status"))
    for key, bad in [("value", 7), ("flags", ["nope"]), ("block", {"index": 0}),
                     ("display", {"show_bar": 1, "state": "rest"}), ("time_published", None),
                     ("schema_version", "2.0"), ("schema_version", 1.0), ("raw", {"a": []})]:
        broken = {**obj, key: bad}
        with pytest.raises(MessageError):
            decode(_frames(broken))
    nan_payload = json.dumps({**obj, "fd": math.nan}).encode()  # Python writes NaN
    with pytest.raises(MessageError, match="NaN"):
        decode([b"feedback", nan_payload])


def test_decode_accepts_newer_minor_version():
    obj = {**_valid_obj(), "schema_version": "1.3", "future_field": {"x": 1},
           "flags": ["motion", "new_flag"], "display": {"show_bar": True, "state": "party"}}
    topic, out = decode(_frames(obj))
    assert topic == "feedback" and out["future_field"] == {"x": 1}
    st = json.loads(encode(b"status", status("end"))[1])
    decode(_frames({**st, "schema_version": "1.2", "event": "pause"}, b"status"))
    with pytest.raises(MessageError, match="event"):  # same version: must be known
        validate_message({**st, "event": "pause"})


def test_every_generated_message_round_trips():
    for msg in many_messages():
        topic, obj = decode(encode(msg.topic, msg))
        assert topic == msg.type
        assert obj["session_id"] == SESSION
