"""Operator commands sent from the dashboard to a running session.

The dashboard never touches session state: it puts :class:`OperatorCommand` objects on a
:class:`CommandQueue` (thread-safe, never blocks the web server), and the session's
processing thread takes them between volumes, applies them and records them in the
session record (``events.jsonl``).
"""

from __future__ import annotations

import itertools
import queue
import time
from dataclasses import dataclass, field

__all__ = ["COMMAND_KINDS", "MAX_LABEL", "CommandQueue", "OperatorCommand"]

#: what an operator can ask: mark an event, pause/resume the participant's feedback, stop
COMMAND_KINDS = ("mark", "pause", "resume", "stop")
#: longest event label accepted
MAX_LABEL = 200

_ids = itertools.count(1)


@dataclass(frozen=True)
class OperatorCommand:
    """One operator request.

    Parameters
    ----------
    kind : str
        One of :data:`COMMAND_KINDS`.
    label : str
        Event label (``mark``; e.g. ``"needle in"``); may be empty for the other kinds.
    source : str
        Who sent it (``"dashboard"``).
    """

    kind: str
    label: str = ""
    source: str = "dashboard"
    time_requested: float = field(default_factory=time.time)
    id: int = field(default_factory=lambda: next(_ids))

    def __post_init__(self):
        if self.kind not in COMMAND_KINDS:
            raise ValueError(f"command must be one of {', '.join(COMMAND_KINDS)}, "
                             f"got {self.kind!r}.")
        if not isinstance(self.label, str):
            raise TypeError(f"label must be a string, got {type(self.label).__name__}.")
        label = " ".join(self.label.split())  # no control characters or newlines
        if len(label) > MAX_LABEL:
            raise ValueError(f"label must have at most {MAX_LABEL} characters, "
                             f"got {len(label)}.")
        if self.kind == "mark" and not label:
            raise ValueError("a marked event needs a label (e.g. 'needle in').")
        object.__setattr__(self, "label", label)


class CommandQueue:
    """Thread-safe queue of operator commands (web server -> processing thread)."""

    def __init__(self):
        self._queue: queue.SimpleQueue[OperatorCommand] = queue.SimpleQueue()

    def put(self, command: OperatorCommand) -> OperatorCommand:
        """Queue a command; never blocks. Returns it."""
        if not isinstance(command, OperatorCommand):
            raise TypeError(f"expected an OperatorCommand, got {type(command).__name__}.")
        self._queue.put(command)
        return command

    def drain(self) -> list[OperatorCommand]:
        """Every queued command, oldest first (the processing thread calls this)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out
