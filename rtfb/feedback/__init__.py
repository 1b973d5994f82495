"""Feedback: message schema, scaling of metric values to display values, ZeroMQ publisher.

:mod:`rtfb.feedback.messages` (standard library only) defines the two message types sent on
topics ``b"feedback"`` and ``b"status"`` (``docs/feedback_messages.md``,
``docs/feedback_schema.json``); :class:`FeedbackMapper` turns a metric value into the
display value in [0, 1]; :class:`FeedbackPublisher` sends the messages on a ZeroMQ XPUB
socket and re-sends the current state to displays that join late.
"""

from .mapping import FeedbackMapper
from .messages import (
    DISPLAY_STATES,
    EVENTS,
    FLAGS,
    SCHEMA_VERSION,
    TOPIC_FEEDBACK,
    TOPIC_STATUS,
    Block,
    DisplayHint,
    FeedbackMessage,
    MessageError,
    StatusMessage,
)
from .publisher import DEFAULT_ADDRESS, FeedbackPublisher
from .wire import decode, encode

__all__ = [
    "DEFAULT_ADDRESS",
    "DISPLAY_STATES",
    "EVENTS",
    "FLAGS",
    "SCHEMA_VERSION",
    "TOPIC_FEEDBACK",
    "TOPIC_STATUS",
    "Block",
    "DisplayHint",
    "FeedbackMapper",
    "FeedbackMessage",
    "FeedbackPublisher",
    "MessageError",
    "StatusMessage",
    "decode",
    "encode",
]
