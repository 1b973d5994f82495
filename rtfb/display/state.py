"""What a display shows, derived from the decoded messages (no drawing, no sockets).

:class:`DisplayState` is fed the messages a display receives (``update``) and answers what
to show now (``snapshot``): a :class:`Snapshot` with the mode, the bar level, the target
line, the cue text and the fixation cross. The PsychoPy display draws it; the headless
display records it.

Modes
-----
``"waiting"``
    Nothing received yet, or a session has started and no volume has been processed.
``"feedback"``
    Thermometer with the current level (empty while the value is null) and the target line.
``"rest"``
    Cue and fixation cross, no bar (block without feedback).
``"motion"``
    "Please keep still" (``motion`` flag or display state).
``"signal_lost"``
    "Signal lost": the session said so (flag, display state or status event), or no
    message arrived for ``timeout`` seconds while volumes were flowing.
``"end"``
    The session ended (kept until a new session starts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_TIMEOUT", "MODES", "TEXTS", "DisplayState", "Snapshot"]

MODES = ("waiting", "feedback", "rest", "motion", "signal_lost", "end")
#: timeout (s) used when neither ``timeout`` nor the TR is known
DEFAULT_TIMEOUT = 5.0
#: number of TRs without a message before the display reports a lost signal
TIMEOUT_TRS = 3
#: big text shown in each mode (the cue is shown separately in feedback and rest)
TEXTS = {
    "waiting": "Waiting for the scanner...",
    "feedback": "",
    "rest": "",
    "motion": "Please keep still",
    "signal_lost": "Signal lost\nPlease wait",
    "end": "The session has ended.\nThank you!",
}


@dataclass(frozen=True)
class Snapshot:
    """What to show at one moment.

    Attributes
    ----------
    mode : str
        One of :data:`MODES`.
    level : float | None
        Bar level in [0, 1], or None for an empty bar.
    show_bar : bool
        Whether to draw the thermometer (outline, fill and target line).
    target : float | None
        Target line level in [0, 1].
    cue : str
        Cue text of the current block.
    fixation : bool
        Whether to draw the fixation cross.
    text : str
        Big message of the mode (:data:`TEXTS`), empty in feedback and rest.
    session_id, volume_index, block_index, condition, flags
        Context of the last message (for logs and tests).
    time : float
        Clock value when the snapshot was taken (not compared by ``==``).
    """

    mode: str = "waiting"
    level: float | None = None
    show_bar: bool = False
    target: float | None = None
    cue: str = ""
    fixation: bool = False
    text: str = TEXTS["waiting"]
    session_id: str | None = None
    volume_index: int | None = None
    block_index: int | None = None
    condition: str | None = None
    flags: tuple[str, ...] = ()
    time: float = field(default=0.0, compare=False)
    catching_up: bool = False


class DisplayState:
    """Display logic shared by the PsychoPy and headless displays.

    Parameters
    ----------
    timeout : float | None
        Seconds without any message, while volumes are flowing, after which the mode
        becomes ``"signal_lost"``. None: 3 TR when a status message gave the TR, else
        :data:`DEFAULT_TIMEOUT` (5 s).
    clock : callable
        Time source in seconds (default :func:`time.monotonic`).

    Notes
    -----
    The publisher's ``time_published`` increases strictly, so a message of the current
    session that is not newer than the last one applied is ignored (only its ``tr`` is
    kept) and does not count as a sign of life: the copies the publisher re-sends when a
    display joins, and an older status re-sent after newer feedback, never move the display
    backwards. A message from a new session replaces the previous session's state.
    """

    def __init__(self, timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                    or not math.isfinite(timeout) or timeout <= 0:
                raise ValueError(f"timeout must be a number > 0 or None, got {timeout!r}.")
            timeout = float(timeout)
        self.timeout = timeout
        self.clock = clock
        self.tr: float | None = None
        self.n_applied = 0
        self.n_ignored = 0
        self._session: str | None = None
        self._feedback: Mapping[str, Any] | None = None
        self._status: Mapping[str, Any] | None = None
        self._last_published = -math.inf       # time_published of the last applied message
        self._last_time: float | None = None   # clock value of the last applied message
        self._flowing = False                  # volumes are arriving (timeout applies)
        self._status_lost = False              # status "signal_lost" not yet restored
        self._ended = False
        self._catching_up = False              # last feedback message was stale

    @property
    def effective_timeout(self) -> float:
        """The timeout in use (s)."""
        if self.timeout is not None:
            return self.timeout
        if self.tr is not None:
            return TIMEOUT_TRS * self.tr
        return DEFAULT_TIMEOUT

    def update(self, topic: str | bytes, message: Mapping[str, Any],
               now: float | None = None) -> Snapshot:
        """Apply one decoded message and return the snapshot after it.

        Parameters
        ----------
        topic : str | bytes
            ``"feedback"`` or ``"status"`` (other topics are ignored).
        message : dict
            The decoded message (see :func:`rtfb.feedback.wire.decode`).
        now : float | None
            Clock value of reception (default ``clock()``).
        """
        now = self.clock() if now is None else now
        if isinstance(topic, bytes):
            topic = topic.decode("ascii", "replace")
        if topic not in ("feedback", "status"):
            self.n_ignored += 1
            return self.snapshot(now)
        session = message.get("session_id")
        published = message.get("time_published")
        published = float(published) if isinstance(published, int | float) else math.inf
        if session != self._session:
            self._reset(session)
        elif published <= self._last_published:
            # a late-join copy of a message already applied, or an older message re-sent
            # after newer ones: it must not move the display backwards
            if topic == "status":
                self._take_tr(message)
            self.n_ignored += 1
            return self.snapshot(now)
        if published != math.inf:
            self._last_published = published
        self._last_time = now
        self.n_applied += 1
        if topic == "feedback":
            # a stale message (the session is catching up) keeps the last state shown
            self._catching_up = "stale" in (message.get("flags") or ())
            if not (self._catching_up and self._feedback is not None):
                self._feedback = message
            self._flowing = True
            self._status_lost = False
            self._ended = False
        else:
            self._apply_status(message)
        return self.snapshot(now)

    def _reset(self, session: str | None) -> None:
        self._catching_up = False
        self._session = session
        self._feedback = None
        self._status = None
        self._last_published = -math.inf
        self._flowing = False
        self._status_lost = False
        self._ended = False

    def _take_tr(self, message: Mapping[str, Any]) -> None:
        tr = message.get("tr")
        if isinstance(tr, int | float) and not isinstance(tr, bool) and tr > 0:
            self.tr = float(tr)

    def _apply_status(self, message: Mapping[str, Any]) -> None:
        self._status = message
        self._take_tr(message)
        event = message.get("event")
        if event in ("start", "resume"):
            self._feedback = None
            self._flowing = False
            self._status_lost = False
            self._ended = False
        elif event == "signal_lost":
            self._status_lost = True
        elif event == "signal_restored":
            self._status_lost = False
        elif event == "end":
            self._ended = True
            self._flowing = False

    def snapshot(self, now: float | None = None) -> Snapshot:
        """Return what to show at ``now`` (default ``clock()``), applying the timeout."""
        now = self.clock() if now is None else now
        fb = self._feedback
        status = self._status
        block = (fb or {}).get("block") or (status or {}).get("block") or {}
        # a block change announced by status after the last feedback wins for the cue
        if status is not None and status.get("event") == "block" and status.get("block") \
                and (fb is None or (status.get("time_published") or 0)
                     > (fb.get("time_published") or 0)):
            block = status["block"]
        context = {
            "session_id": self._session,
            "volume_index": None if fb is None else fb.get("volume_index"),
            "block_index": block.get("index"),
            "condition": block.get("condition"),
            "flags": tuple((fb or {}).get("flags") or ()),
            "time": now,
            "catching_up": self._catching_up,
        }
        cue = block.get("cue") or ""
        target = None if fb is None else fb.get("target")
        timed_out = (self._flowing and self._last_time is not None
                     and now - self._last_time > self.effective_timeout)

        if self._ended:
            return Snapshot(mode="end", text=TEXTS["end"], **context)
        if timed_out or self._status_lost:
            return Snapshot(mode="signal_lost", text=TEXTS["signal_lost"], **context)
        if fb is None:  # nothing yet, or a session started and no volume processed yet
            return Snapshot(mode="waiting", cue=cue, text=TEXTS["waiting"], **context)
        display = fb.get("display") or {}
        state = display.get("state", "feedback")
        flags = context["flags"]
        if state == "end":
            return Snapshot(mode="end", text=TEXTS["end"], **context)
        if state == "signal_lost" or "signal_lost" in flags:
            return Snapshot(mode="signal_lost", text=TEXTS["signal_lost"], **context)
        if state == "motion" or "motion" in flags:
            return Snapshot(mode="motion", text=TEXTS["motion"], **context)
        if state == "rest" or not display.get("show_bar", True):
            return Snapshot(mode="rest", cue=cue, fixation=True, text="", target=target,
                            **context)
        value = fb.get("value")
        level = None if value is None else min(max(float(value), 0.0), 1.0)
        return Snapshot(mode="feedback", level=level, show_bar=True, target=target, cue=cue,
                        fixation=False, text="", **context)
