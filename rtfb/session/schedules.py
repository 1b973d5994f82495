"""Feedback schedules: what the participant sees at each volume, given the fed-back value.

- ``continuous`` (default): the value of every volume of a feedback block.
- ``intermittent``: only at the last volume of each feedback block (``every = 0``) or at
  every ``every``-th volume of a feedback block; between, no bar (the cue stays).
- ``sham``: the participant sees, volume by volume, the feedback series of another recorded
  session (``sham = "path/to/session"``); the display and the messages are identical to a
  real session's, and the allocation is written only to the session record
  (``session.json`` and each volume's ``feedback_value`` / ``sham`` fields).
- ``shaping``: the target line adapts to performance: after each feedback block, if the
  fraction of its shown values at or above the target reaches ``shaping_success`` the target
  moves up by ``shaping_step`` (harder), otherwise down by it, within the display range.
  ``shaping_from = "path/to/previous_session"`` starts from the target that session ended
  with (the same participant's previous run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .record_reader import read_jsonl


def final_target(session_dir) -> float:
    """Target a recorded session ended with (its last recorded volume's ``target``)."""
    volumes = read_jsonl(Path(session_dir) / "volumes.jsonl")
    for entry in reversed(volumes):
        if entry.get("target") is not None:
            return float(entry["target"])
    raise ValueError(f"{session_dir}: the record has no target (not a feedback session?).")


def recorded_feedback(session_dir) -> dict[int, float | None]:
    """Shown feedback of a recorded session, by volume index (the sham source)."""
    volumes = read_jsonl(Path(session_dir) / "volumes.jsonl")
    if not volumes:
        raise ValueError(f"{session_dir}: the record has no volume (volumes.jsonl is empty).")
    return {int(v["index"]): v.get("feedback") for v in volumes}


class FeedbackSchedule:
    """Turns the fed-back value of each volume into what the participant is shown.

    Parameters
    ----------
    feedback : rtfb.config.FeedbackConfig | None
        The protocol's ``[feedback]`` (``None``: monitoring, nothing is shown).
    blocks : rtfb.session.blocks.BlockSchedule
        The run's blocks.

    Attributes
    ----------
    target_ : float | None
        Current target line.
    allocation_ : str
        ``"real"`` or ``"sham"`` (recorded, never published).
    """

    def __init__(self, feedback, blocks):
        self.feedback = feedback
        self.blocks = blocks
        self.schedule = getattr(feedback, "schedule", "continuous")
        self.every = int(getattr(feedback, "every", 0) or 0)
        self.allocation_ = "real"
        self._sham = None
        self.target_ = None if feedback is None else float(feedback.target)
        if feedback is None:
            return
        if getattr(feedback, "sham", None):
            self._sham = recorded_feedback(feedback.sham)
            self.allocation_ = "sham"
        self.shaping = bool(getattr(feedback, "shaping", False))
        if self.shaping and getattr(feedback, "shaping_from", None):
            self.target_ = final_target(feedback.shaping_from)
        self._clip = tuple(feedback.clip)
        self._block_hits: list[bool] = []
        self.history_: list[dict] = []

    def record_info(self) -> dict:
        """What ``session.json`` records about the schedule (allocation included)."""
        if self.feedback is None:
            return {}
        info = {"schedule": self.schedule, "every": self.every, "allocation": self.allocation_,
                "start_target": self.target_}
        if self._sham is not None:
            info["sham_source"] = str(self.feedback.sham)
        return info

    def _due(self, index: int) -> bool:
        """Whether an intermittent schedule shows the bar at this volume."""
        block = self.blocks.block_at(index)
        if self.every == 0:
            return self.blocks.is_last_of_block(index)
        start = next(r.start for r in self.blocks.volumes_of(block.condition) if index in r)
        return (index - start + 1) % self.every == 0

    def apply(self, index: int, block, value: float | None, show: bool):
        """What is shown at volume ``index``.

        Parameters
        ----------
        index : int
            Volume index.
        block : BlockInfo
            Its block.
        value : float | None
            The real mapped feedback value (None: none yet).
        show : bool
            Whether the protocol shows the bar in this block.

        Returns
        -------
        tuple of (float | None, bool, float | None)
            The value shown (None: no bar), whether the bar is shown, the target line.
        """
        if self.feedback is None or not show:
            return None, False, self.target_
        shown = value
        if self._sham is not None:
            shown = self._sham.get(index)
        if self.schedule == "intermittent" and not self._due(index):
            shown = None
        target = self.target_
        if self.shaping and shown is not None and math.isfinite(shown):
            self._block_hits.append(shown >= target)
        if self.shaping and self.blocks.is_last_of_block(index):
            self._adapt(block)
        return shown, shown is not None, target

    def _adapt(self, block) -> None:
        hits = self._block_hits
        self._block_hits = []
        if not hits:
            return
        rate = sum(hits) / len(hits)
        step = float(self.feedback.shaping_step)
        before = self.target_
        if rate >= float(self.feedback.shaping_success):
            self.target_ = min(self._clip[1], before + step)
        else:
            self.target_ = max(self._clip[0], before - step)
        self.history_.append({"block": block.index, "time_above_target": rate,
                              "target_before": before, "target_after": self.target_})

    def dumps(self) -> str:
        """JSON of the schedule's record info (for logs)."""
        return json.dumps(self.record_info())
