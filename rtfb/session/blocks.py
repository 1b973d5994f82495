"""Which block (condition, cue, feedback on/off) a volume index falls in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockInfo:
    """Block of one volume; ``index`` is the block's position in the protocol."""

    index: int
    condition: str
    cue: str
    feedback: bool

    def as_dict(self) -> dict:
        """Message/record form."""
        return {"index": self.index, "condition": self.condition, "cue": self.cue,
                "feedback": self.feedback}


class BlockSchedule:
    """Maps volume indices to blocks; volumes after the last block stay in the last block.

    Parameters
    ----------
    blocks : sequence
        Objects with ``condition``, ``volumes``, ``cue`` and ``feedback`` attributes, in order.
    """

    def __init__(self, blocks: Sequence):
        if not blocks:
            raise ValueError("A protocol needs at least one block.")
        self.blocks = [BlockInfo(i, b.condition, b.cue, bool(b.feedback))
                       for i, b in enumerate(blocks)]
        self._starts = []
        start = 0
        for b in blocks:
            self._starts.append(start)
            start += int(b.volumes)
        self.n_volumes = start

    def block_at(self, index: int) -> BlockInfo:
        """Block of volume ``index`` (0-based)."""
        pos = 0
        for i, start in enumerate(self._starts):
            if index >= start:
                pos = i
        return self.blocks[pos]

    def volumes_of(self, condition: str) -> list[range]:
        """Ranges of volume indices of every block with this condition."""
        out = []
        for i, b in enumerate(self.blocks):
            stop = self._starts[i + 1] if i + 1 < len(self._starts) else self.n_volumes
            if b.condition == condition:
                out.append(range(self._starts[i], stop))
        return out

    def is_last_of_block(self, index: int) -> bool:
        """True for the last volume of a block."""
        return (index + 1) in self._starts[1:] or index + 1 == self.n_volumes
