"""Put volumes back in index order and report gaps, for the folder watcher and the TCP receiver.

Volumes may reach rtfb out of order (a network share lists files late, a sender reconnects),
twice (a file re-written or copied), or never (a dropped file). :class:`VolumeOrderer` turns
what arrived into what the processing thread should see, in order:

- volumes are released in strictly increasing index order, starting at ``first_index``;
- a volume that arrives ahead of a gap waits for the gap to fill; if the gap is still open
  ``gap_timeout`` seconds after the first later volume arrived, each missing index is
  released as a :class:`Missing` event and the session goes on;
- a volume that arrives after its index was reported missing is released at once, wrapped
  in :class:`Late` (flagged, never silently dropped);
- a volume whose index was already released or is already waiting is a duplicate: it is
  refused (the caller logs it);
- a volume whose index is implausibly far ahead (more than ``ahead_margin`` volumes plus
  the number of TRs elapsed since the highest accepted volume arrived, or since the
  orderer started) is refused as :data:`IMPLAUSIBLE`: a stray file or frame never turns
  into "missing" volumes nor ends a session. The caller logs it and may offer the same
  index again later (the same file re-written, another frame).

The orderer is single-threaded and takes the time as an argument (any monotonic clock, in
seconds; the callers use :func:`time.perf_counter`), so it is deterministic to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._utils.checks import check_int, check_positive_number
from .volume import Volume

#: Status strings returned by :meth:`VolumeOrderer.add`.
ACCEPTED = "accepted"  #: released at once or waiting behind a gap
LATE = "late"  #: index had been reported missing; released at once as :class:`Late`
DUPLICATE = "duplicate"  #: index already released or already waiting; refused
OUT_OF_RANGE = "out_of_range"  #: index more than ``max_ahead`` beyond the next expected; refused
IMPLAUSIBLE = "implausible"  #: index further ahead than the time elapsed allows; refused


@dataclass(frozen=True)
class Missing:
    """No volume with this index arrived in time; the session goes on without it.

    Parameters
    ----------
    index : int
        0-based volume index that is missing.
    reason : str
        Why it was given up on (for the session record).
    """

    index: int
    reason: str


@dataclass(frozen=True)
class Late:
    """A volume that arrived after its index had been reported :class:`Missing`.

    Parameters
    ----------
    volume : Volume
        The volume, complete and valid, delivered out of order.
    """

    volume: Volume

    @property
    def index(self) -> int:
        """Index of the late volume."""
        return self.volume.index


class VolumeOrderer:
    """Order volumes by index, detect gaps, late volumes and duplicates.

    Parameters
    ----------
    gap_timeout : float
        Seconds a gap may stay open after a later volume arrived before its indices are
        released as :class:`Missing`.
    first_index : int | None
        Index of the first volume expected (default 0). ``None`` starts at the index of the
        first volume added (for a session resumed mid-run).
    max_pending : int
        Most volumes that may wait behind a gap; when one more arrives the lowest gap is
        released as :class:`Missing` at once, so memory stays bounded.
    max_ahead : int
        A volume whose index is more than ``max_ahead`` beyond the next expected index is
        refused (:data:`OUT_OF_RANGE`): it would otherwise make the orderer report that many
        volumes missing (a corrupt index, or a run that started long before rtfb; then pass
        ``first_index``).
    tr : float | None
        Repetition time in seconds; enables the plausibility bound (None: only
        ``max_ahead`` applies).
    ahead_margin : int
        Volumes an index may be ahead of the highest accepted one beyond the TRs elapsed
        since it arrived (absorbs dropped files and out-of-order listings).
    start : float | None
        Clock time the acquisition started (default: the first :meth:`add`); before the
        first volume the bound counts from it and from ``first_index``.

    Notes
    -----
    Call :meth:`add` for each volume that arrives and :meth:`poll` after it and periodically
    (at least every few hundred milliseconds, or at :meth:`next_deadline`); :meth:`poll`
    returns what is ready: volumes, :class:`Missing` and :class:`Late` events, in the order
    they must be delivered.
    """

    def __init__(self, gap_timeout: float, *, first_index: int | None = 0,
                 max_pending: int = 64, max_ahead: int = 1000, tr: float | None = None,
                 ahead_margin: int = 8, start: float | None = None) -> None:
        self.gap_timeout = check_positive_number(gap_timeout, "gap_timeout")
        self.tr = None if tr is None else check_positive_number(tr, "tr")
        self.ahead_margin = check_int(ahead_margin, "ahead_margin", 1)
        self._high: tuple[int, float] | None = None  # highest accepted index, its arrival
        self._start = start
        self._next = None if first_index is None else check_int(first_index, "first_index", 0)
        self.max_pending = check_int(max_pending, "max_pending", 1)
        self.max_ahead = check_int(max_ahead, "max_ahead", 1)
        self._pending: dict[int, tuple[Any, float]] = {}  # index -> (volume, arrival time)
        self._missing: set[int] = set()  # reported missing, not (yet) arrived late
        self._notes: dict[int, str] = {}  # index -> why it may go missing (e.g. truncated file)
        self._ready: list[Any] = []

    @property
    def next_index(self) -> int | None:
        """Index of the next volume to release in order (None before the first one)."""
        return self._next

    @property
    def n_pending(self) -> int:
        """Number of volumes waiting behind a gap."""
        return len(self._pending)

    def is_known(self, index: int) -> bool:
        """Whether a new volume with ``index`` would be a duplicate."""
        if index in self._pending:
            return True
        return self._next is not None and index < self._next and index not in self._missing

    def start_clock(self, now: float) -> None:
        """(Re)set the time the acquisition started (before the first volume)."""
        if self._high is None:
            self._start = float(now)

    def max_plausible(self, now: float) -> int | None:
        """Highest index that would be accepted at ``now`` (None: no bound from time)."""
        if self.tr is None:
            return None
        if self._high is not None:
            ref, since = self._high
        elif self._next is not None:
            ref, since = self._next - 1, (now if self._start is None else self._start)
        else:
            return None
        elapsed = max(0.0, now - since)
        return ref + self.ahead_margin + int(elapsed / self.tr)

    def note(self, index: int, reason: str) -> None:
        """Attach ``reason`` to ``index``, used in its :class:`Missing` event if it comes to it."""
        if self._next is None or index >= self._next:
            self._notes[int(index)] = str(reason)

    def add(self, volume: Any, now: float) -> str:
        """Add an arrived volume (anything with an ``index``); return its status string.

        ``now`` is the arrival time (same clock as :meth:`poll`).
        """
        index = int(volume.index)
        if self._start is None:
            self._start = now
        if self._next is None:
            self._next = index
        if index in self._missing:
            self._missing.discard(index)
            self._ready.append(Late(volume))
            return LATE
        if self.is_known(index):
            return DUPLICATE
        if index - self._next > self.max_ahead:
            return OUT_OF_RANGE
        bound = self.max_plausible(now)
        if bound is not None and index > bound:
            return IMPLAUSIBLE
        if self._high is None or index > self._high[0]:
            self._high = (index, now)
        self._pending[index] = (volume, now)
        self._release_in_order()
        if len(self._pending) > self.max_pending:
            self._give_up_lowest_gap(
                f"{len(self._pending)} later volumes were waiting behind it "
                f"(max_pending={self.max_pending})")
        return ACCEPTED

    def next_deadline(self) -> float | None:
        """Time at which the open gap will be given up on, or None if there is no gap."""
        if not self._pending:
            return None
        return min(t for _, t in self._pending.values()) + self.gap_timeout

    def poll(self, now: float) -> list[Any]:
        """Give up on gaps open for ``gap_timeout``; return (and forget) everything ready.

        Returns
        -------
        list
            Volumes (in index order), :class:`Missing` and :class:`Late` events, in delivery
            order.
        """
        while self._pending:
            deadline = self.next_deadline()
            if deadline is None or now < deadline:
                break
            self._give_up_lowest_gap(
                f"not received within gap_timeout={self.gap_timeout:g} s after a later "
                f"volume arrived")
        ready, self._ready = self._ready, []
        return ready

    def release_all(self, reason: str) -> list[Any]:
        """Give up on every open gap now (e.g. at shutdown); return everything ready."""
        while self._pending:
            self._give_up_lowest_gap(reason)
        ready, self._ready = self._ready, []
        return ready

    def _release_in_order(self) -> None:
        while self._next in self._pending:
            volume, _ = self._pending.pop(self._next)
            self._notes.pop(self._next, None)
            self._ready.append(volume)
            self._next += 1

    def _give_up_lowest_gap(self, reason: str) -> None:
        """Report every index from the next expected to the lowest waiting one as missing."""
        stop = min(self._pending)
        for index in range(self._next, stop):
            note = self._notes.pop(index, None)
            self._missing.add(index)
            self._ready.append(Missing(index, f"{reason}; {note}" if note else reason))
        self._next = stop
        self._release_in_order()


def refusal_message(status: str, orderer: VolumeOrderer, index: int, now: float) -> str | None:
    """Why a volume was refused (for the acquisition threads' log lines), None if it was not.

    Shared by the folder watcher and the TCP receiver so both say the same thing.
    """
    if status == DUPLICATE:
        return f"volume {index} ignored: duplicate, already received"
    if status == OUT_OF_RANGE:
        return (f"volume {index} ignored: more than max_ahead={orderer.max_ahead} beyond the "
                f"next expected volume {orderer.next_index} (wrong index, or pass first_index)")
    if status == IMPLAUSIBLE:
        return (f"volume {index} ignored: implausible index, at most volume "
                f"{orderer.max_plausible(now)} can have been acquired by now (TR "
                f"{orderer.tr:g} s, next expected {orderer.next_index}); a stray file or "
                f"frame, or a series that began before the session")
    return None
