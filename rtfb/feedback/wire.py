"""The two ZeroMQ frames of a message, ``[topic, UTF-8 JSON]``: :func:`encode` and
:func:`decode` (validated, ``docs/feedback_messages.md``). Standard library only, like
:mod:`rtfb.feedback.messages`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .messages import (
    MAX_MESSAGE_BYTES,
    TOPICS,
    FeedbackMessage,
    Message,
    MessageError,
    StatusMessage,
    _check_time,
    from_dict,
    validate_message,
)

__all__ = ["as_message", "decode", "encode", "topic_bytes"]


def topic_bytes(topic: bytes | str) -> bytes:
    """The topic as bytes, checked to be one of ``TOPICS``."""
    if isinstance(topic, str):
        topic = topic.encode("ascii", "replace")
    if topic not in TOPICS:
        raise MessageError(f"topic must be one of {TOPICS!r}, got {topic!r}.")
    return topic


def as_message(message: Message | Mapping[str, Any]) -> FeedbackMessage | StatusMessage:
    """A message object (a dict is validated; ``time_published`` may still be None)."""
    if isinstance(message, FeedbackMessage | StatusMessage):
        return message
    if isinstance(message, Mapping):
        obj = dict(message)
        if obj.get("time_published") is None:  # allowed before sending
            obj["time_published"] = 0.0
            msg = from_dict(obj)
            return dataclasses.replace(msg, time_published=None)
        return from_dict(obj)
    raise TypeError(f"message must be a FeedbackMessage, StatusMessage or dict, "
                    f"got {type(message).__name__}.")


def encode(topic: bytes | str, message: Message | Mapping[str, Any], *,
           time_published: float | None = None) -> list[bytes]:
    """Serialise a message to its two ZeroMQ frames ``[topic, UTF-8 JSON]``.

    Parameters
    ----------
    topic : bytes | str
        ``b"feedback"`` or ``b"status"``; must match the message type.
    message : FeedbackMessage | StatusMessage | dict
        The message (a dict is validated first).
    time_published : float | None
        Publication time stamped into the message (unix s). By default the message's own
        ``time_published``, or the current time when that is None.

    Returns
    -------
    list of bytes
        ``[topic, payload]``.
    """
    topic = topic_bytes(topic)
    msg = as_message(message)
    if msg.topic != topic:
        raise MessageError(f"a {msg.type} message cannot be sent on topic {topic!r}.")
    if time_published is None:
        time_published = msg.time_published if msg.time_published is not None else time.time()
    obj = msg.to_dict()
    obj["time_published"] = _check_time(time_published, "time_published", False)
    payload = json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return [topic, payload.encode("utf-8")]


def _reject_constant(name: str):
    raise MessageError(f"JSON payload contains {name}; non-finite numbers must be null.")


def decode(frames: Sequence[bytes]) -> tuple[str, dict[str, Any]]:
    """Parse and validate the frames of one message.

    Parameters
    ----------
    frames : sequence of bytes
        ``[topic, payload]`` as received from a SUB socket.

    Returns
    -------
    topic : str
        ``"feedback"`` or ``"status"``.
    message : dict
        The JSON object (validated with :func:`validate_message`; unknown fields kept).

    Raises
    ------
    MessageError
        Wrong number of frames, unknown topic, invalid UTF-8/JSON, NaN, a message type that
        does not match the topic, or any schema violation.
    """
    if len(frames) != 2:
        raise MessageError(f"a message has 2 frames (topic, JSON), got {len(frames)}.")
    topic, payload = (bytes(f) for f in frames)
    topic = topic_bytes(topic)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError(f"payload of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}.")
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"payload is not UTF-8 JSON: {err}") from err
    if not isinstance(obj, dict):
        raise MessageError(f"payload must be a JSON object, got {type(obj).__name__}.")
    validate_message(obj)
    if obj["type"].encode() != topic:
        raise MessageError(f"a {obj['type']} message arrived on topic {topic!r}.")
    return topic.decode(), obj
