"""Hand-off from an acquisition thread to the processing thread: ordering, bounded queue, stats.

Shared by :class:`~rtfb.ingest.watcher.FolderWatcher` and
:class:`~rtfb.ingest.tcp.TCPReceiver`. The acquisition thread calls :meth:`_Handoff.submit`
and :meth:`_Handoff.flush`; the processing thread calls :meth:`_Handoff.get`.

Clocks: every ``seen``/``complete``/``queued`` time is :func:`time.perf_counter` (monotonic,
for durations); ``queued_wall`` and ``mtime`` are :func:`time.time` seconds since the epoch
(for the session record and to compare with a file's modification time).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, fields

from .ordering import ACCEPTED, LATE, Late, Missing, VolumeOrderer
from .volume import Volume

logger = logging.getLogger("rtfb.ingest")

_PUT_POLL = 0.1  # seconds between checks of the stop flag while the queue is full


@dataclass(frozen=True)
class VolumeTiming:
    """When one delivered volume was seen, found complete and made available.

    Attributes
    ----------
    index : int
        Volume index.
    source : str
        File name (without directory) or ``"tcp"``.
    seen : float
        :func:`time.perf_counter` when the file was first listed / the frame's first byte
        arrived.
    complete : float
        :func:`time.perf_counter` when the volume was found complete (read succeeded /
        payload received and decoded).
    queued : float
        :func:`time.perf_counter` when it was put in the queue (available to ``get``).
    queued_wall : float
        :func:`time.time` at the same moment as ``queued``.
    mtime : float | None
        The file's modification time (:func:`time.time` clock of the file server) when it was
        read; ``queued_wall - mtime`` estimates the latency from the last write to
        availability (only meaningful on a local disk). None for TCP.
    wait : float
        Seconds the acquisition thread was blocked on a full queue before this volume went in
        (included in ``queued - complete``).
    late : bool
        Delivered as :class:`~rtfb.ingest.ordering.Late`.
    read : float | None
        :func:`time.perf_counter` when the reader returned the volume (for TCP: equal to
        ``complete``). ``complete`` is when the file became complete: its modification time
        clamped between the listing before its last change was seen and the read, so a
        stalled acquisition thread still counts its stall.
    """

    index: int
    source: str
    seen: float
    complete: float
    queued: float
    queued_wall: float
    mtime: float | None
    wait: float
    late: bool
    read: float | None = None

    def wall(self, name: str) -> float | None:
        """Time stamp ``name`` (seen, complete, read, queued) as epoch seconds."""
        value = getattr(self, name)
        return None if value is None else value + (self.queued_wall - self.queued)


@dataclass(frozen=True)
class IngestStats:
    """Snapshot of an acquisition thread's counters (``watcher.stats``, ``receiver.stats``).

    Attributes
    ----------
    delivered : int
        Volumes put in the queue in order (late ones not included).
    late : int
        Volumes delivered as :class:`~rtfb.ingest.ordering.Late`.
    missing : int
        :class:`~rtfb.ingest.ordering.Missing` events delivered.
    duplicates : int
        Files/frames ignored because their index was already received.
    other_series : int
        Files/frames ignored because they belong to another series.
    out_of_range : int
        Volumes refused because their index was implausibly far ahead (``max_ahead``).
    unreadable : int
        Files that could not be read (corrupt, unsupported, reader error). Watcher only.
    truncated : int
        Files (or slice groups) still incomplete ``incomplete_timeout`` after their last
        change. Watcher only.
    malformed : int
        Frames refused (bad magic, header, size, connection closed mid-frame). TCP only.
    connections : int
        Connections accepted. TCP only.
    queue_high_water : int
        Largest number of items that were in the queue at once.
    blocked_episodes : int
        Episodes of back-pressure: times the queue was found full after having had room
        (one warning is logged per episode).
    blocked_seconds : float
        Total time spent waiting on a full queue.
    latencies : tuple of float
        Per delivered volume (in delivery order): ``queued - complete`` in seconds, i.e. from
        found complete to available to the processing thread.
    timings : tuple of VolumeTiming
        Per delivered volume, all time stamps (the last ``max_timings`` only).
    """

    delivered: int = 0
    late: int = 0
    missing: int = 0
    duplicates: int = 0
    other_series: int = 0
    out_of_range: int = 0
    unreadable: int = 0
    truncated: int = 0
    malformed: int = 0
    connections: int = 0
    queue_high_water: int = 0
    blocked_episodes: int = 0
    blocked_seconds: float = 0.0
    latencies: tuple[float, ...] = ()
    timings: tuple[VolumeTiming, ...] = ()


_COUNTERS = tuple(f.name for f in fields(IngestStats) if f.name not in ("latencies", "timings"))


class _Handoff:
    """Orderer + bounded queue + stats, owned by one acquisition thread."""

    def __init__(self, *, queue_size: int, gap_timeout: float, first_index: int | None,
                 max_pending: int, max_ahead: int, max_timings: int,
                 stop_event: threading.Event, name: str, tr: float | None = None,
                 ahead_margin: int = 8) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.orderer = VolumeOrderer(gap_timeout, first_index=first_index,
                                     max_pending=max_pending, max_ahead=max_ahead, tr=tr,
                                     ahead_margin=ahead_margin, start=time.perf_counter())
        self._notices: deque[dict] = deque(maxlen=10_000)
        self._stop = stop_event
        self._name = name
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._counts["blocked_seconds"] = 0.0
        self._latencies: deque[float] = deque(maxlen=max_timings)
        self._timings: deque[VolumeTiming] = deque(maxlen=max_timings)
        self._arrival: dict[int, tuple[str, float, float, float | None]] = {}
        self.undelivered = 0  # items left out because stop() came while the queue was full
        self._full_episode = False

    # -- acquisition-thread side -------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def notice(self, kind: str, message: str, **fields) -> None:
        """Queue an event for the session record (drained by the processing thread)."""
        self._notices.append({"kind": kind, "message": message, "time": time.time(),
                              **fields})

    def drain_notices(self) -> list[dict]:
        """Events since the last call (processing-thread side; thread-safe)."""
        out = []
        while True:
            try:
                out.append(self._notices.popleft())
            except IndexError:
                return out

    def is_known(self, index: int) -> bool:
        return self.orderer.is_known(index)

    def submit(self, volume: Volume, *, seen: float, complete: float,
               mtime: float | None = None, read: float | None = None) -> str:
        """Hand a complete volume to the orderer; return the orderer's status string.

        ``seen``, ``complete`` and ``read`` are :func:`time.perf_counter` stamps (``read``
        defaults to ``complete``); the arrival time used for ordering and plausibility is
        ``read``.
        """
        read = complete if read is None else read
        status = self.orderer.add(volume, read)
        if status in (ACCEPTED, LATE):
            self._arrival[volume.index] = (volume.source, seen, complete, mtime, read)
        self.flush()
        return status

    def time_to_deadline(self, default: float) -> float:
        deadline = self.orderer.next_deadline()
        if deadline is None:
            return default
        return min(default, max(0.0, deadline - time.perf_counter()))

    def flush(self) -> None:
        """Deliver everything the orderer has ready (blocks while the queue is full)."""
        ready = self.orderer.poll(time.perf_counter())
        for i, item in enumerate(ready):
            if isinstance(item, Missing):
                logger.warning("%s: volume %d missing: %s", self._name, item.index, item.reason)
            elif isinstance(item, Late):
                logger.warning("%s: volume %d arrived late (%s), after it was reported "
                               "missing; delivered flagged as Late", self._name, item.index,
                               item.volume.source)
            if not self._put(item):
                self.undelivered += len(ready) - i
                return

    def close(self) -> None:
        """At shutdown: release volumes waiting behind gaps, without blocking."""
        ready = self.orderer.release_all("acquisition stopped before it arrived")
        for item in ready:
            if self.queue.full():
                self.undelivered += 1
                continue
            self._record(item, 0.0)  # before the item is visible: its timing is ready
            self.queue.put_nowait(item)
        if self.undelivered:
            logger.warning("%s: stopped with %d item(s) not delivered (queue full)",
                           self._name, self.undelivered)

    def _put(self, item) -> bool:
        """Put ``item`` in the queue, waiting while it is full; its timing is recorded just
        before it becomes visible to the consumer (one producer: room stays room).
        """
        wait = 0.0
        if self.queue.full():
            if not self._full_episode:  # one warning per episode of back-pressure
                self._full_episode = True
                self.count("blocked_episodes")
                text = (f"{self._name}: queue full ({self.queue.maxsize} items): the "
                        f"processing thread is behind; acquisition waits (nothing is dropped)")
                logger.warning(text)
                self.notice("queue_full", text)
            t0 = time.perf_counter()
            with self.queue.not_full:
                while self.queue._qsize() >= self.queue.maxsize:
                    if self._stop.is_set():
                        self.count("blocked_seconds", time.perf_counter() - t0)
                        return False
                    self.queue.not_full.wait(_PUT_POLL)
            wait = time.perf_counter() - t0
        elif self._full_episode:
            self._full_episode = False
            logger.info("%s: queue has room again", self._name)
        self._record(item, wait)
        self.queue.put_nowait(item)
        return True

    def _record(self, item, wait: float) -> None:
        queued = time.perf_counter()
        queued_wall = time.time()
        size = self.queue.qsize() + 1  # recorded just before the put
        with self._lock:
            c = self._counts
            c["queue_high_water"] = max(c["queue_high_water"], size)
            c["blocked_seconds"] += wait
            if isinstance(item, Missing):
                c["missing"] += 1
                return
            late = isinstance(item, Late)
            c["late" if late else "delivered"] += 1
            index = item.index
            source, seen, complete, mtime, read = self._arrival.pop(index)
            self._latencies.append(queued - complete)
            self._timings.append(VolumeTiming(index, source, seen, complete, queued,
                                              queued_wall, mtime, wait, late, read))

    # -- consumer side -----------------------------------------------------------------------
    def get(self, timeout: float | None, running) -> object:
        """Next item; raise queue.Empty on timeout, or at once if stopped and empty."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            if deadline is None:
                step = _PUT_POLL
            else:
                step = deadline - time.perf_counter()
                if step <= 0:
                    return self.queue.get_nowait()
                step = min(step, _PUT_POLL)
            try:
                return self.queue.get(timeout=step)
            except queue.Empty:
                if not running():
                    return self.queue.get_nowait()

    def timing(self, index: int) -> VolumeTiming | None:
        """Timing record of the most recent delivery of ``index`` (searching from the end)."""
        with self._lock:
            for t in reversed(self._timings):
                if t.index == index:
                    return t
        return None

    def stats(self) -> IngestStats:
        with self._lock:
            return IngestStats(**self._counts, latencies=tuple(self._latencies),
                               timings=tuple(self._timings))


class AcquisitionSource:
    """What the processing thread sees of an acquisition source (one thread, one hand-off).

    Subclasses (:class:`~rtfb.ingest.watcher.FolderWatcher`,
    :class:`~rtfb.ingest.tcp.TCPReceiver`) create ``self._handoff`` (a :class:`_Handoff`),
    ``self._stop_event``, ``self._thread = None`` and ``self._series``, and implement
    ``start()`` and the thread's loop; this class gives them the consumer side.
    """

    _handoff: _Handoff
    _thread: threading.Thread | None
    _stop_event: threading.Event
    _series: str | None
    _log_name = "source"

    def _join(self, timeout: float, why: str = "") -> None:
        """Set the stop flag and wait for the acquisition thread (bounded)."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("%s: thread still busy %.1f s after stop()%s", self._log_name,
                               timeout, why)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (items already queued stay available to get)."""
        self._join(timeout)

    def get(self, timeout: float | None = None) -> Volume | Missing | Late:
        """Next item: a :class:`Volume` in index order, or a ``Missing`` or ``Late`` event.

        Raises
        ------
        queue.Empty
            Nothing arrived within ``timeout`` seconds, or the source is stopped and its
            queue is empty.
        """
        return self._handoff.get(timeout, lambda: self.running)

    @property
    def running(self) -> bool:
        """Whether the acquisition thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def series(self) -> str | None:
        """Series followed (the one given, or the first seen; None before the first)."""
        return self._series

    @property
    def stats(self) -> IngestStats:
        """Snapshot of the counters and timings (thread-safe)."""
        return self._handoff.stats()

    def drain_notices(self) -> list[dict]:
        """Events for the session record since the last call: files ignored at start,
        refused files or frames (other series, implausible index), queue-full episodes and
        stalls.

        Each is a dict with ``kind``, ``message``, ``time`` (epoch s) and details.
        """
        return self._handoff.drain_notices()

    def timing(self, index: int) -> VolumeTiming | None:
        """Time stamps of the delivered volume ``index`` (cheap: for the session record).

        None if it was not delivered (yet) or is older than the last ``max_timings``.
        """
        return self._handoff.timing(index)

    def start(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
