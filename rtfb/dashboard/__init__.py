"""Operator dashboard: a live web view of a session and the operator's controls.

A subscriber of the session's feedback stream (like the displays) that also reads the
session record; it never touches session state. Operator commands (mark an event, pause or
resume the participant's feedback, stop) go through :class:`~rtfb.dashboard.commands.
CommandQueue` to the processing thread. See ``docs/dashboard.md``.

The web stack (Starlette, uvicorn) is imported only when a dashboard is started.
"""

from .commands import COMMAND_KINDS, CommandQueue, OperatorCommand

__all__ = ["COMMAND_KINDS", "CommandQueue", "OperatorCommand"]
