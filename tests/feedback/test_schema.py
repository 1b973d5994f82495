"""docs/feedback_schema.json agrees with what rtfb produces and with the validator."""

import copy
import json
import re
from pathlib import Path

import pytest

from rtfb.feedback.messages import MessageError, validate_message
from rtfb.feedback.wire import encode

from ._factories import feedback, many_messages, status

jsonschema = pytest.importorskip("jsonschema")

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads((DOCS / "feedback_schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _obj(msg):
    return json.loads(encode(msg.topic, msg)[1])


def test_generated_messages_are_valid(validator):
    messages = many_messages()
    assert len(messages) > 300
    states = set()
    for msg in messages:
        obj = _obj(msg)
        errors = list(validator.iter_errors(obj))
        assert not errors, (obj, errors[0].message)
        if obj["type"] == "feedback":
            states.add(obj["display"]["state"])
    assert states == {"feedback", "rest", "signal_lost", "motion", "end"}


def test_documented_examples_are_valid(validator):
    text = (DOCS / "feedback_messages.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        obj = json.loads(block)
        validator.validate(obj)
        validate_message(obj)


def _mutations():
    fb = _obj(feedback(5, 0.5, fd=0.2, flags=["late"]))
    st = _obj(status("start"))

    def drop(obj, key):
        obj = copy.deepcopy(obj)
        del obj[key]
        return obj

    def put(obj, path, value):
        obj = copy.deepcopy(obj)
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return obj

    cases = [drop(fb, k) for k in fb] + [drop(st, k) for k in st]
    cases += [
        put(fb, ["value"], 1.01), put(fb, ["value"], -0.1), put(fb, ["value"], "0.5"),
        put(fb, ["raw", "alff"], "1.0"), put(fb, ["raw", "bad name"], 1.0),
        put(fb, ["raw"], [1.0]), put(fb, ["block", "feedback"], "yes"),
        put(fb, ["block", "index"], -1), put(fb, ["block"], None),
        put(fb, ["fd"], -1.0), put(fb, ["flags"], ["motion", "bogus"]),
        put(fb, ["flags"], "motion"), put(fb, ["target"], 1.5), put(fb, ["target"], "high"),
        put(fb, ["display", "state"], "party"), put(fb, ["display", "show_bar"], 1),
        put(fb, ["volume_index"], None), put(fb, ["volume_index"], 2.5),
        put(fb, ["volume_index"], True), put(fb, ["acquisition_time"], 86400),
        put(fb, ["time_received"], None), put(fb, ["time_published"], None),
        put(fb, ["schema_version"], "2.0"), put(fb, ["type"], "status"),
        put(fb, ["session_id"], ""), put(fb, ["session_id"], 12),
        put(fb, ["qa"], "good"), put(fb, ["qa"], {"tsnr": [1.0], "dvars": None,
                                                  "dvars_z": None, "spike": False}),
        put(fb, ["qa"], {"tsnr": {}, "dvars": None, "dvars_z": None, "spike": "no"}),
        put(fb, ["baseline"], "high"),
        put(st, ["event"], "pause"), put(st, ["message"], None), put(st, ["tr"], 0),
        put(st, ["tr"], -2.0), put(st, ["block", "cue"], None), put(st, ["type"], "feedback"),
        put(st, ["volume_index"], -1), put(st, ["time_received"], "now"),
    ]
    return cases


def test_invalid_messages_are_rejected_by_schema_and_validator(validator):
    cases = _mutations()
    assert len(cases) > 50
    for obj in cases:
        assert not validator.is_valid(obj), obj
        with pytest.raises(MessageError):
            validate_message(obj)


def test_schema_is_strict_about_unknown_fields(validator):
    obj = {**_obj(feedback(1, 0.2)), "extra": 1}
    assert not validator.is_valid(obj)
    validate_message(obj)  # readers stay lenient (see the versioning policy)
