"""Operator commands applied by the processing thread between volumes.

The dashboard (:mod:`rtfb.dashboard`) queues :class:`~rtfb.dashboard.commands.OperatorCommand`
objects on ``Session.commands``; :func:`apply_commands` runs in the processing thread before
each volume is taken from the acquisition queue (and at least every 0.1 s while waiting), so
commands never race with processing. Each applied command is recorded in ``events.jsonl``
with kind ``mark``, ``feedback_pause``, ``feedback_resume`` or ``stop``, the index of the
last processed volume, and the command's id and request time.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("rtfb.session")

__all__ = ["RECORD_KINDS", "apply_commands"]

#: event kind recorded in ``events.jsonl`` for each command
RECORD_KINDS = {"mark": "mark", "pause": "feedback_pause", "resume": "feedback_resume",
                "stop": "stop"}


def apply_commands(session, stop_event: threading.Event) -> int:
    """Apply and record every queued operator command; returns how many were applied.

    Parameters
    ----------
    session : rtfb.session.runner.Session
        The session (its ``commands`` queue, ``feedback_paused`` flag and recorder).
    stop_event : threading.Event
        Set by a ``stop`` command: the session ends cleanly before the next volume.
    """
    commands = session.commands.drain()
    for cmd in commands:
        index = session.status.index if session.status.index >= 0 else None
        if cmd.kind == "mark":
            message = cmd.label
        elif cmd.kind == "pause":
            session.feedback_paused = True
            message = "participant feedback paused by the operator"
        elif cmd.kind == "resume":
            session.feedback_paused = False
            message = "participant feedback resumed by the operator"
        else:  # stop
            stop_event.set()
            message = "stop requested by the operator"
        if cmd.label and cmd.kind != "mark":
            message += f": {cmd.label}"
        logger.info("operator %s at volume %s: %s", cmd.kind, index, message)
        kind = RECORD_KINDS[cmd.kind]
        session.recorder.write_event(kind, message, index, command_id=cmd.id,
                                     source=cmd.source, time_requested=cmd.time_requested)
    return len(commands)
