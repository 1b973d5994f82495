"""Feedback and status messages (schema version 1.0, ``docs/feedback_messages.md``).

Messages travel over ZeroMQ as two frames, ``[topic, JSON]``: topic ``b"feedback"`` (one
message per processed volume) or ``b"status"`` (session start/resume, block change, signal
lost/restored, end); the JSON is UTF-8 and never contains NaN or infinity (they become
``null``). ``docs/feedback_schema.json`` is the JSON Schema of exactly this version.

This module uses only the standard library: the display process imports it and nothing else
from rtfb.

Versioning: the major version changes when a field is removed or changes meaning; the minor
version when fields, flags, events or display states are added.
:func:`rtfb.feedback.wire.decode` accepts any ``1.x`` message and ignores fields it does not
know, so displays keep working when the session side is upgraded. The frames themselves are
built and parsed by :mod:`rtfb.feedback.wire`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "DEFAULT_ADDRESS",
    "DISPLAY_STATES",
    "EVENTS",
    "FLAGS",
    "MAX_MESSAGE_BYTES",
    "SCHEMA_VERSION",
    "TOPICS",
    "TOPIC_DISPLAY",
    "TOPIC_FEEDBACK",
    "TOPIC_STATUS",
    "Block",
    "DisplayHint",
    "FeedbackMessage",
    "MessageError",
    "StatusMessage",
    "default_display",
    "from_dict",
    "validate_message",
]

SCHEMA_VERSION = "1.1"
#: where the session publishes and displays connect by default
DEFAULT_ADDRESS = "tcp://127.0.0.1:5556"
TOPIC_FEEDBACK = b"feedback"
TOPIC_STATUS = b"status"
TOPICS = (TOPIC_FEEDBACK, TOPIC_STATUS)
#: A topic no message is sent on: participant displays subscribe to it as well, so that the
#: publisher knows whether a display is connected (the operator dashboard does not).
TOPIC_DISPLAY = b"display"

#: quality and state flags of a feedback message (documented in docs/feedback_messages.md)
FLAGS = (
    "warmup",       # sliding window not full yet: no metric value
    "baseline",     # baseline period: metric computed, no display value yet
    "motion",       # framewise displacement above the protocol threshold
    "censored",     # volume excluded from the metric (motion scrubbing)
    "missing",      # one or more volumes before this one never arrived
    "late",         # this volume arrived later than the protocol's deadline
    "signal_lost",  # the session has no usable signal (e.g. ROI out of the field of view)
    "no_feedback",  # the current block shows no feedback (rest or transfer block)
    "paused",       # the operator paused the participant's feedback (schema 1.1)
    "stale",        # published later than feedback.max_delay after the file was complete:
                    # no value; the display keeps its last state ("catching up")
)
#: what the display should show (``display.state``)
DISPLAY_STATES = ("feedback", "rest", "signal_lost", "motion", "end")
#: ``event`` of a status message
EVENTS = ("start", "resume", "block", "signal_lost", "signal_restored", "end")
#: largest JSON payload accepted by :func:`decode`
MAX_MESSAGE_BYTES = 1 << 20

_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_MAX_TEXT = 1000
_MAX_SESSION_ID = 128
_SECONDS_PER_DAY = 86400.0

Message = Union["FeedbackMessage", "StatusMessage"]


class MessageError(ValueError):
    """A message (or its frames) does not follow the schema; the text says which field."""


# ----------------------------------------------------------------------------- helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite_or_none(value: Any, name: str) -> float | None:
    """``None``/NaN/inf -> ``None``; a real number -> float; anything else -> MessageError."""
    if value is None:
        return None
    if not _is_number(value):
        raise MessageError(f"{name} must be a number or null, got {type(value).__name__}.")
    value = float(value)
    return value if math.isfinite(value) else None


def _check_int(value: Any, name: str, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an integer or null" if nullable else "an integer"
        raise MessageError(f"{name} must be {kind}, got {type(value).__name__}.")
    if value < 0:
        raise MessageError(f"{name} must be >= 0, got {value}.")
    return int(value)


def _check_str(value: Any, name: str, max_len: int = _MAX_TEXT, min_len: int = 0) -> str:
    if not isinstance(value, str):
        raise MessageError(f"{name} must be a string, got {type(value).__name__}.")
    if not min_len <= len(value) <= max_len:
        raise MessageError(f"{name} must have {min_len} to {max_len} characters, "
                           f"got {len(value)}.")
    return value


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise MessageError(f"{name} must be true or false, got {type(value).__name__}.")
    return value


def _check_time(value: Any, name: str, nullable: bool) -> float | None:
    """A finite number >= 0 (unix seconds), or None when ``nullable``."""
    if value is None and nullable:
        return None
    if not _is_number(value) or not math.isfinite(float(value)) or value < 0:
        kind = "a finite number >= 0" + (" or null" if nullable else "")
        raise MessageError(f"{name} must be {kind}, got {value!r}.")
    return float(value)


def _check_acquisition_time(value: Any) -> float | None:
    value = _finite_or_none(value, "acquisition_time")
    if value is not None and not 0 <= value < _SECONDS_PER_DAY:
        raise MessageError("acquisition_time must be in seconds after midnight "
                           f"(0 <= t < 86400), got {value!r}.")
    return value


def _check_unit(value: Any, name: str, nullable: bool) -> float | None:
    """A number in [0, 1] (NaN -> None when ``nullable``)."""
    out = _finite_or_none(value, name) if nullable else value
    if out is None:
        if nullable:
            return None
        raise MessageError(f"{name} must be a number in [0, 1], got None.")
    if not _is_number(out) or not 0.0 <= float(out) <= 1.0:
        raise MessageError(f"{name} must be a number in [0, 1], got {out!r}.")
    return float(out)


def _check_choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise MessageError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                           f"got {value!r}.")
    return value


def _check_flags(flags: Any) -> tuple[str, ...]:
    if isinstance(flags, str) or not isinstance(flags, Sequence | set | frozenset):
        raise MessageError(f"flags must be a list of strings, got {type(flags).__name__}.")
    out: list[str] = []
    for flag in flags:
        _check_choice(flag, "flag", FLAGS)
        if flag not in out:
            out.append(flag)
    return tuple(out)


def _check_raw(raw: Any) -> dict[str, float | None]:
    if not isinstance(raw, Mapping):
        raise MessageError(f"raw must be an object (metric name -> number or null), "
                           f"got {type(raw).__name__}.")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _METRIC_NAME.match(key):
            raise MessageError(f"raw metric name {key!r} is invalid (letters, digits, '_', "
                               "'.', '-', starting with a letter or '_', at most 64).")
        out[key] = _finite_or_none(value, f"raw[{key!r}]")
    return out


def _check_qa(qa: Any) -> dict[str, Any] | None:
    """The ``qa`` object (schema 1.1): running tSNR per region, DVARS and the spike flag."""
    if qa is None:
        return None
    if not isinstance(qa, Mapping):
        raise MessageError(f"qa must be an object or null, got {type(qa).__name__}.")
    missing = [k for k in ("tsnr", "dvars", "dvars_z", "spike") if k not in qa]
    if missing:
        raise MessageError(f"qa lacks {', '.join(missing)}.")
    tsnr = qa["tsnr"]
    if not isinstance(tsnr, Mapping):
        raise MessageError(f"qa.tsnr must be an object (region -> number or null), "
                           f"got {type(tsnr).__name__}.")
    out = dict(qa)
    out["tsnr"] = {}
    for key, value in tsnr.items():
        if not isinstance(key, str) or not _METRIC_NAME.match(key):
            raise MessageError(f"qa.tsnr region name {key!r} is invalid.")
        out["tsnr"][key] = _finite_or_none(value, f"qa.tsnr[{key!r}]")
    for key in ("dvars", "dvars_z"):
        out[key] = _finite_or_none(qa.get(key), f"qa.{key}")
    out["spike"] = _check_bool(qa["spike"], "qa.spike")
    return out


def _check_major_version(version: Any) -> str:
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+", version):
        raise MessageError(f"schema_version must be a string 'MAJOR.MINOR', got {version!r}.")
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise MessageError(f"schema_version {version} is not readable by this version "
                           f"(reads {SCHEMA_VERSION.split('.')[0]}.x).")
    return version


# ----------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Block:
    """The protocol block a volume belongs to.

    Parameters
    ----------
    index : int
        Block number in the protocol (0-based).
    condition : str
        Condition name (e.g. ``"rest"``, ``"regulate"``).
    cue : str
        Text shown to the participant during the block (may be empty).
    feedback : bool
        Whether the block shows the feedback bar.
    """

    index: int
    condition: str
    cue: str = ""
    feedback: bool = True

    def __post_init__(self):
        _check_int(self.index, "block.index")
        _check_str(self.condition, "block.condition", max_len=200)
        _check_str(self.cue, "block.cue")
        _check_bool(self.feedback, "block.feedback")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of this block."""
        return {"index": int(self.index), "condition": self.condition, "cue": self.cue,
                "feedback": self.feedback}

    @classmethod
    def from_dict(cls, obj: Any) -> Block:
        """Build from a JSON object (extra keys are ignored)."""
        if not isinstance(obj, Mapping):
            raise MessageError(f"block must be an object, got {type(obj).__name__}.")
        missing = [k for k in ("index", "condition", "cue", "feedback") if k not in obj]
        if missing:
            raise MessageError(f"block lacks {', '.join(missing)}.")
        return cls(obj["index"], obj["condition"], obj["cue"], obj["feedback"])


@dataclass(frozen=True)
class DisplayHint:
    """What the session asks the display to show for a feedback message.

    Parameters
    ----------
    show_bar : bool
        Whether to draw the feedback bar (thermometer).
    state : str
        One of :data:`DISPLAY_STATES`.
    """

    show_bar: bool
    state: str

    def __post_init__(self):
        _check_bool(self.show_bar, "display.show_bar")
        _check_choice(self.state, "display.state", DISPLAY_STATES)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of this hint."""
        return {"show_bar": self.show_bar, "state": self.state}

    @classmethod
    def from_dict(cls, obj: Any) -> DisplayHint:
        """Build from a JSON object (extra keys are ignored)."""
        if not isinstance(obj, Mapping) or "show_bar" not in obj or "state" not in obj:
            raise MessageError("display must be an object with show_bar and state.")
        return cls(obj["show_bar"], obj["state"])


def default_display(flags: Sequence[str], block: Block) -> DisplayHint:
    """Derive the display hint from the flags and the block.

    ``signal_lost`` flag -> state ``signal_lost``; ``motion`` flag -> ``motion``; a block
    without feedback (or the ``no_feedback`` flag) -> ``rest``; otherwise ``feedback`` with
    the bar shown (empty while the value is null, e.g. during warm-up or baseline).
    """
    if "signal_lost" in flags:
        return DisplayHint(False, "signal_lost")
    if "motion" in flags:
        return DisplayHint(False, "motion")
    if not block.feedback or "no_feedback" in flags:
        return DisplayHint(False, "rest")
    return DisplayHint(True, "feedback")


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class FeedbackMessage:
    """One processed volume (topic ``b"feedback"``).

    Non-finite numbers (NaN, inf) in ``value``, ``raw`` and ``fd`` are stored as ``None``
    (JSON ``null``). Flags are deduplicated, keeping their order; a block without feedback
    adds ``"no_feedback"``.

    Parameters
    ----------
    session_id : str
        Session identifier (the session record's ``session_id``).
    volume_index : int
        Index of the volume (0-based).
    value : float | None
        Display value in [0, 1], or None while not available (warm-up, baseline, censored).
    raw : mapping of str to float | None
        Metric name -> value (e.g. ``{"alff": 1.8, "psc": 0.4}``).
    block : Block
        Current block.
    time_received : float
        When the volume was received (unix s).
    target : float | None
        Level of the target line in [0, 1]; None when the protocol has no target (e.g.
        monitoring protocols without a feedback bar).
    fd : float | None
        Framewise displacement in mm (None for the first volume or when unknown).
    flags : sequence of str
        Subset of :data:`FLAGS`.
    acquisition_time : float | None
        Scanner acquisition time in seconds after midnight, when known.
    display : DisplayHint | None
        What to show; None derives it with :func:`default_display`.
    time_published : float | None
        Set when the message is sent (unix s); None until then.
    qa : mapping | None
        Real-time quality (schema 1.1): ``{"tsnr": {"brain": float, ROI: float, ...},
        "dvars": float | None, "dvars_z": float | None, "spike": bool}``; None for a
        missing or rejected volume.
    baseline : float | None
        Baseline of the fed-back metric in its own units (schema 1.1); None until known.
    """

    session_id: str
    volume_index: int
    value: float | None
    raw: Mapping[str, float | None]
    block: Block
    time_received: float
    target: float | None = 0.75
    fd: float | None = None
    flags: tuple[str, ...] = ()
    acquisition_time: float | None = None
    display: DisplayHint | None = None
    time_published: float | None = None
    qa: Mapping[str, Any] | None = None
    baseline: float | None = None
    type: str = field(default="feedback", init=False)

    def __post_init__(self):
        _check_str(self.session_id, "session_id", _MAX_SESSION_ID, min_len=1)
        _check_int(self.volume_index, "volume_index")
        if not isinstance(self.block, Block):
            raise MessageError(f"block must be a Block, got {type(self.block).__name__}.")
        flags = list(_check_flags(self.flags))
        if not self.block.feedback and "no_feedback" not in flags:
            flags.append("no_feedback")
        set_ = object.__setattr__
        set_(self, "volume_index", int(self.volume_index))
        set_(self, "value", _check_unit(self.value, "value", nullable=True))
        set_(self, "raw", _check_raw(self.raw))
        set_(self, "time_received", _check_time(self.time_received, "time_received", False))
        set_(self, "target", _check_unit(self.target, "target", nullable=True))
        fd = _finite_or_none(self.fd, "fd")
        if fd is not None and fd < 0:
            raise MessageError(f"fd must be >= 0 mm, got {fd!r}.")
        set_(self, "fd", fd)
        set_(self, "flags", tuple(flags))
        set_(self, "acquisition_time", _check_acquisition_time(self.acquisition_time))
        if self.display is None:
            set_(self, "display", default_display(self.flags, self.block))
        elif not isinstance(self.display, DisplayHint):
            raise MessageError(f"display must be a DisplayHint, got "
                               f"{type(self.display).__name__}.")
        set_(self, "time_published", _check_time(self.time_published, "time_published", True))
        set_(self, "qa", _check_qa(self.qa))
        set_(self, "baseline", _finite_or_none(self.baseline, "baseline"))

    @property
    def topic(self) -> bytes:
        """The ZeroMQ topic, ``b"feedback"``."""
        return TOPIC_FEEDBACK

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object (a new dict; field order as in the documentation)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "type": "feedback",
            "session_id": self.session_id,
            "volume_index": self.volume_index,
            "acquisition_time": self.acquisition_time,
            "time_received": self.time_received,
            "time_published": self.time_published,
            "value": self.value,
            "raw": dict(self.raw),
            "block": self.block.to_dict(),
            "fd": self.fd,
            "flags": list(self.flags),
            "target": self.target,
            "display": self.display.to_dict(),
            "qa": None if self.qa is None else {**self.qa, "tsnr": dict(self.qa["tsnr"])},
            "baseline": self.baseline,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> FeedbackMessage:
        """Build from a decoded JSON object (unknown keys are ignored)."""
        _require(obj, _FEEDBACK_KEYS)
        version = _check_major_version(obj["schema_version"])
        if int(version.split(".")[1]) >= 1:  # 1.1 added qa and baseline
            _require(obj, ("qa", "baseline"))
        if obj["type"] != "feedback":
            raise MessageError(f"type must be 'feedback', got {obj['type']!r}.")
        return cls(
            session_id=obj["session_id"], volume_index=obj["volume_index"], value=obj["value"],
            raw=obj["raw"], block=Block.from_dict(obj["block"]),
            time_received=obj["time_received"], target=obj["target"], fd=obj["fd"],
            flags=obj["flags"],
            acquisition_time=obj["acquisition_time"],
            display=DisplayHint.from_dict(obj["display"]),
            time_published=_check_time(obj["time_published"], "time_published", False),
            qa=obj.get("qa"), baseline=obj.get("baseline"),
        )


@dataclass(frozen=True)
class StatusMessage:
    """A session event (topic ``b"status"``).

    Parameters
    ----------
    session_id : str
        Session identifier.
    event : str
        One of :data:`EVENTS`.
    message : str
        Human-readable text (may be empty).
    volume_index : int | None
        Volume the event refers to, if any.
    acquisition_time : float | None
        Acquisition time (s after midnight) of that volume, if known.
    time_received : float | None
        When the event's cause was received (unix s), if any.
    block : Block | None
        Current block (set for ``start``, ``resume`` and ``block`` events).
    tr : float | None
        Repetition time in s; displays use it for their signal-lost timeout (3 TR).
    time_published : float | None
        Set when the message is sent (unix s); None until then.
    """

    session_id: str
    event: str
    message: str = ""
    volume_index: int | None = None
    acquisition_time: float | None = None
    time_received: float | None = None
    block: Block | None = None
    tr: float | None = None
    time_published: float | None = None
    type: str = field(default="status", init=False)

    def __post_init__(self):
        _check_str(self.session_id, "session_id", _MAX_SESSION_ID, min_len=1)
        _check_choice(self.event, "event", EVENTS)
        _check_str(self.message, "message")
        set_ = object.__setattr__
        set_(self, "volume_index", _check_int(self.volume_index, "volume_index", True))
        set_(self, "acquisition_time", _check_acquisition_time(self.acquisition_time))
        set_(self, "time_received", _check_time(self.time_received, "time_received", True))
        if self.block is not None and not isinstance(self.block, Block):
            raise MessageError(f"block must be a Block or None, got "
                               f"{type(self.block).__name__}.")
        tr = _finite_or_none(self.tr, "tr")
        if tr is not None and tr <= 0:
            raise MessageError(f"tr must be > 0 s, got {tr!r}.")
        set_(self, "tr", tr)
        set_(self, "time_published", _check_time(self.time_published, "time_published", True))

    @property
    def topic(self) -> bytes:
        """The ZeroMQ topic, ``b"status"``."""
        return TOPIC_STATUS

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object (a new dict; field order as in the documentation)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "type": "status",
            "session_id": self.session_id,
            "volume_index": self.volume_index,
            "acquisition_time": self.acquisition_time,
            "time_received": self.time_received,
            "time_published": self.time_published,
            "event": self.event,
            "message": self.message,
            "block": None if self.block is None else self.block.to_dict(),
            "tr": self.tr,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> StatusMessage:
        """Build from a decoded JSON object (unknown keys are ignored)."""
        _require(obj, _STATUS_KEYS)
        _check_major_version(obj["schema_version"])
        if obj["type"] != "status":
            raise MessageError(f"type must be 'status', got {obj['type']!r}.")
        block = obj["block"]
        return cls(
            session_id=obj["session_id"], event=obj["event"], message=obj["message"],
            volume_index=obj["volume_index"], acquisition_time=obj["acquisition_time"],
            time_received=obj["time_received"],
            block=None if block is None else Block.from_dict(block), tr=obj["tr"],
            time_published=_check_time(obj["time_published"], "time_published", False),
        )


_COMMON_KEYS = ("schema_version", "type", "session_id", "volume_index", "acquisition_time",
                "time_received", "time_published")
_FEEDBACK_KEYS = _COMMON_KEYS + ("value", "raw", "block", "fd", "flags", "target", "display")
_STATUS_KEYS = _COMMON_KEYS + ("event", "message", "block", "tr")


def _require(obj: Any, keys: Sequence[str]) -> None:
    if not isinstance(obj, Mapping):
        raise MessageError(f"a message must be a JSON object, got {type(obj).__name__}.")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise MessageError(f"message lacks required field(s): {', '.join(missing)}.")


def from_dict(obj: Mapping[str, Any]) -> FeedbackMessage | StatusMessage:
    """Build the message dataclass of a decoded JSON object, validating it.

    Raises
    ------
    MessageError
        When the object does not follow the schema (the text names the field).
    """
    _require(obj, ("type",))
    kind = obj["type"]
    if kind == "feedback":
        return FeedbackMessage.from_dict(obj)
    if kind == "status":
        return StatusMessage.from_dict(obj)
    raise MessageError(f"type must be 'feedback' or 'status', got {kind!r}.")


def validate_message(obj: Mapping[str, Any]) -> None:
    """Check a decoded JSON object against the schema rules (no jsonschema needed).

    Unknown fields are allowed. A message of a newer minor version (``1.x`` with x greater
    than ours) may also carry flags, events and display states this version does not know;
    they are accepted (and left in the message for the reader to ignore). Raises
    :class:`MessageError` naming the first problem.
    """
    _require(obj, ("schema_version", "type"))
    version = _check_major_version(obj["schema_version"])
    if int(version.split(".")[1]) > int(SCHEMA_VERSION.split(".")[1]):
        obj = _known_enums_only(obj)
    from_dict(obj)


def _known_enums_only(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``obj`` with enum values of a newer minor version replaced by known ones."""
    obj = dict(obj)
    if isinstance(obj.get("flags"), list):
        obj["flags"] = [f for f in obj["flags"] if not isinstance(f, str) or f in FLAGS]
    display = obj.get("display")
    if isinstance(display, Mapping) and isinstance(display.get("state"), str) \
            and display["state"] not in DISPLAY_STATES:
        obj["display"] = {**display, "state": "feedback" if display.get("show_bar") else "rest"}
    if isinstance(obj.get("event"), str) and obj["event"] not in EVENTS:
        obj["event"] = "block"
    return obj
