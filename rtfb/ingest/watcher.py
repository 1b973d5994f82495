"""Export-folder watcher: one acquisition thread turns the scanner's files into ordered volumes.

The scanner (or its export tool, or the simulator) writes one file per volume (Siemens mosaic
DICOM, NIfTI, PAR/REC) or one file per slice (GE-style DICOM) into a folder, often a network
share. :class:`FolderWatcher` polls that folder with :func:`os.scandir` (inotify does not see
writes made by another machine on a share; between polls a change of the folder's mtime, a
file created or renamed in, triggers the listing at once), decides that a file is complete
by trying to read it (not by waiting for its size to settle, which costs a poll interval or
more), stacks a slice volume as soon as its last slice is there, and hands
complete :class:`~rtfb.ingest.volume.Volume` objects, in index order, through a bounded queue
to the processing thread, together with :class:`~rtfb.ingest.ordering.Missing` and
:class:`~rtfb.ingest.ordering.Late` events. Nothing is dropped silently: every file ignored is
logged (``logging.getLogger("rtfb.ingest")``, naming the file and the reason, never header
contents) and counted in :attr:`FolderWatcher.stats`.

Typical use (the processing thread)::

    with FolderWatcher("/mnt/export") as watcher:
        while session_running:
            item = watcher.get(timeout=10)      # queue.Empty if nothing for 10 s
            if isinstance(item, Missing):
                record_gap(item.index, item.reason)
            elif isinstance(item, Late):
                process(item.volume, late=True)
            else:
                process(item)
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._utils.checks import _validate_type, check_int, check_positive_number
from ..exceptions import IncompleteFileError, IngestError
from ._handoff import AcquisitionSource, IngestStats, VolumeTiming, _Handoff
from .names import shown_name
from .ordering import ACCEPTED, IMPLAUSIBLE, LATE, Late, Missing, refusal_message
from .series_lock import IdentityLock
from .slicecount import SliceCounts
from .volume import Volume

__all__ = ["FolderWatcher", "IngestStats", "Late", "Missing", "VolumeTiming"]

logger = logging.getLogger("rtfb.ingest")

_TEMP_SUFFIXES = (".part", ".tmp")

# File states
_PENDING = "pending"  # new or changed: to be (re)tried
_GROUPED = "grouped"  # a slice file waiting for the rest of its volume
_DONE = "done"  # used or ignored for good (unless re-written)
_FAILED = "failed"  # unreadable; retried only if it changes
_STALLED = "stalled"  # incomplete for incomplete_timeout; retried only if it changes
_COMPANION = "companion"  # part of another file's volume (the .rec of a PAR/REC pair)


@dataclass
class _File:
    name: str
    first_seen: float
    stamp: tuple[int, int]  # (size, mtime_ns)
    changed_at: float
    state: str = _PENDING
    tried_stamp: tuple[int, int] | None = None
    last_try: float = -math.inf
    reported: set[str] = field(default_factory=set)  # counted as unreadable/truncated
    group: tuple | None = None
    duplicate_of: int | None = None  # reported as a duplicate of this index
    generation: int = 0  # last listing that showed the file
    companion_of: str | None = None  # name of the file read for this one (PAR/REC)
    changed_after: float = -math.inf  # the listing before the last change was seen


@dataclass
class _Group:
    series: Any
    index: int
    n_parts: int
    first_seen: float
    changed_at: float
    parts: dict[int, str] = field(default_factory=dict)
    last_try: float = -math.inf
    retry: bool = True  # False after a failure/stall: wait for a change
    reported: bool = False
    changed_after: float = -math.inf  # latest listing before the last part's change
    info: Any = None  # probe result of a part (identity fields for the series lock)


def _default_reader(name: str) -> Callable:
    try:
        from . import read
    except ImportError as err:  # pragma: no cover - read.py is part of the package
        raise ImportError(f"rtfb.ingest.read is not available ({err}); pass probe=, reader= "
                          f"and slice_reader= to FolderWatcher.") from err
    return getattr(read, name)


class FolderWatcher(AcquisitionSource):
    """Watch an export folder and deliver its volumes in order through a bounded queue.

    Parameters
    ----------
    directory : str | path-like
        Folder the scanner exports to. It may not exist yet when the watcher starts (a warning
        is logged once and polling goes on).
    poll_interval : float
        Seconds between listings of the folder (default 10 ms). A complete file is delivered
        within about one interval plus the time to read it.
    change_interval : float
        Seconds between checks, while waiting for the next listing, of the folder's own
        modification time (default 2 ms): when a file is created in, renamed into or
        removed from the folder, it is listed at once instead of at the next poll (a file
        written in place is listed at once when it is created, and seen growing at the
        next polls). One ``stat`` of the folder per check; the wait after a listing is
        never shorter than the listing took, so listing a large folder uses at most half
        of a core. File systems whose folder times lag or are coarse (some network
        shares) just fall back on ``poll_interval``.
    queue_size : int
        Capacity of the queue read by :meth:`get`. When it is full the acquisition thread
        waits (back-pressure, logged and measured), it never drops a volume.
    gap_timeout : float
        Seconds a missing index may stay missing after a later volume arrived before it is
        reported as :class:`~rtfb.ingest.ordering.Missing`.
    incomplete_timeout : float
        Seconds a file may stay incomplete without changing before it is reported as
        truncated (it is still retried if it changes later).
    series : str | None
        Series to follow, by SeriesNumber, SeriesInstanceUID or the reader's series key
        (``--series``). ``None`` follows the series of the first volume accepted; files of
        any other series (a field of :class:`~rtfb.ingest.series_lock.SeriesIdentity`
        differs) are ignored with a warning naming the field.
    accept_existing : bool
        Use the files already in the folder when the watcher starts (default True, for
        library use). ``False`` (what ``rtfb run --watch`` does unless ``--accept-existing``
        or ``--series`` is given) treats them as leftovers of an earlier series: listed once
        as ignored (:meth:`drain_notices`) and never used, unless ``series`` names them.
    tr : float | None
        Repetition time (s) of the run; bounds how far ahead an index may plausibly be
        (see :class:`~rtfb.ingest.ordering.VolumeOrderer`). None: ``max_ahead`` only.
    stall_threshold : float
        A probe or read of one file taking longer than this (seconds) is reported as an
        ingest stall.
    pattern : str | re.Pattern | None
        Only file names matching this glob (e.g. ``"*.dcm"``) or regular expression (full
        match) are considered. Hidden and temporary names (leading ``.`` or ``~``, trailing
        ``~``, ``.part``, ``.tmp``) are always skipped.
    first_index : int | None
        Index of the first volume expected (default 0); ``None`` starts at the first volume
        seen (resuming a session mid-run).
    retry_interval : float
        Seconds between retries of an incomplete file whose size and modification time did
        not change (a changed file is retried at the next poll). Covers file systems whose
        attributes lag behind the content (NFS attribute cache).
    recheck_interval : float
        Seconds between checks that files already used were not re-written (a re-written
        file is then reported as a duplicate). Only new and unfinished files are checked
        at every poll, so a poll costs little even with thousands of files in the folder.
    max_pending, max_ahead : int
        Bounds of the reordering buffer, see :class:`~rtfb.ingest.ordering.VolumeOrderer`.
    max_timings : int
        Number of per-volume timing records kept in :attr:`stats`.
    probe, reader, slice_reader : callable | None
        ``probe(path) -> FileInfo``, ``reader(path) -> Volume``,
        ``slice_reader(paths) -> Volume``; default to :func:`rtfb.ingest.read.probe`,
        :func:`rtfb.ingest.read.read_volume` and :func:`rtfb.ingest.read.read_dicom_slices`.
        They raise :class:`~rtfb.exceptions.IncompleteFileError` for a file still being
        written and :class:`~rtfb.exceptions.IngestError` for an unreadable one; any other
        exception is logged as a reader error and the file ignored.

    Notes
    -----
    One thread, started by :meth:`start`, does all file-system work. :meth:`get` is for one
    consumer (the processing thread). Time stamps in :attr:`stats` use
    :func:`time.perf_counter` (see :class:`~rtfb.ingest._handoff.VolumeTiming`).
    Volumes waiting behind a gap when the watcher stops are released, after ``Missing``
    events for the gap, if the queue has room.
    """

    _log_name = "watcher"

    def __init__(self, directory: str | os.PathLike, *, poll_interval: float = 0.01,
                 change_interval: float = 0.002,
                 queue_size: int = 32, gap_timeout: float = 3.0,
                 incomplete_timeout: float = 5.0, series: str | None = None,
                 pattern: str | re.Pattern | None = None, first_index: int | None = 0,
                 retry_interval: float = 0.05, recheck_interval: float = 1.0,
                 max_pending: int = 64, max_ahead: int = 1000,
                 max_timings: int = 100_000, probe: Callable | None = None,
                 reader: Callable | None = None, slice_reader: Callable | None = None,
                 accept_existing: bool = True, tr: float | None = None,
                 stall_threshold: float = 1.0) -> None:
        _validate_type(directory, (str, os.PathLike), "directory")
        self.directory = os.fspath(directory)
        self.poll_interval = check_positive_number(poll_interval, "poll_interval")
        self.change_interval = check_positive_number(change_interval, "change_interval")
        self.incomplete_timeout = check_positive_number(incomplete_timeout,
                                                        "incomplete_timeout")
        self.retry_interval = check_positive_number(retry_interval, "retry_interval")
        self.recheck_interval = check_positive_number(recheck_interval, "recheck_interval")
        if series is not None:
            _validate_type(series, str, "series")
        if pattern is not None:
            _validate_type(pattern, (str, re.Pattern), "pattern")
        self._pattern = pattern
        self._lock = IdentityLock(series)
        self._series = series
        self.accept_existing = bool(accept_existing)
        self.stall_threshold = check_positive_number(stall_threshold, "stall_threshold")
        self._first_poll = True
        self._prev_poll = -math.inf
        self._listed_mtime: int | None = None  # folder mtime just before the last listing
        self._probe = probe if probe is not None else _default_reader("probe")
        self._reader = reader if reader is not None else _default_reader("read_volume")
        self._slice_reader = (slice_reader if slice_reader is not None
                              else _default_reader("read_dicom_slices"))
        self._stop_event = threading.Event()
        self._handoff = _Handoff(
            queue_size=check_int(queue_size, "queue_size", 1), gap_timeout=gap_timeout,
            first_index=first_index, max_pending=max_pending, max_ahead=max_ahead,
            max_timings=check_int(max_timings, "max_timings", 1),
            stop_event=self._stop_event, name="watcher", tr=tr)
        self._thread: threading.Thread | None = None
        self._files: dict[str, _File] = {}
        self._groups: dict[tuple, _Group] = {}
        self._slice_counts = SliceCounts()
        self._last_restat = -math.inf
        self._generation = 0
        self._dir_problem: str | None = None
        self._last_error: tuple[str, float] | None = None

    # -- public API --------------------------------------------------------------------------
    def start(self) -> FolderWatcher:
        """Start the acquisition thread; return self."""
        if self._thread is not None:
            raise RuntimeError("FolderWatcher.start() was already called; a watcher cannot "
                               "be restarted, create a new one.")
        self._handoff.orderer.start_clock(time.perf_counter())
        self._thread = threading.Thread(target=self._run, name="rtfb-watcher", daemon=True)
        self._thread.start()
        logger.info("watcher: watching %s every %.0f ms", self.directory,
                    1000 * self.poll_interval)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (items already queued stay available to get)."""
        self._join(timeout, " (a read blocked?)")

    def __repr__(self) -> str:
        return (f"<FolderWatcher {self.directory!r} poll={1000 * self.poll_interval:.0f} ms "
                f"{'running' if self.running else 'stopped'}>")

    # -- acquisition thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop_event.is_set():
                t0 = time.perf_counter()
                try:
                    self._poll(t0)
                    self._handoff.flush()
                except Exception as err:  # the thread must survive anything
                    self._log_loop_error(err)
                self._prev_poll = t0
                took = time.perf_counter() - t0
                self._wait(max(0.0, self._handoff.time_to_deadline(self.poll_interval - took)),
                           took)
        finally:
            self._handoff.close()

    def _wait(self, seconds: float, at_least: float) -> None:
        """Wait ``seconds`` before the next listing; less if the folder changes (its mtime,
        checked every ``change_interval`` after ``at_least`` seconds) or at :meth:`stop`.
        """
        end = time.perf_counter() + seconds
        step = max(self.change_interval, at_least)
        while True:
            left = end - time.perf_counter()
            if left <= 0 or self._stop_event.wait(min(step, left)):
                return
            if self._folder_mtime() != self._listed_mtime:
                return
            step = self.change_interval

    def _folder_mtime(self) -> int | None:
        try:
            return os.stat(self.directory).st_mtime_ns
        except OSError:
            return None

    def _log_loop_error(self, err: Exception) -> None:
        key = f"{type(err).__name__}: {err}"
        now = time.perf_counter()
        if self._last_error is None or self._last_error[0] != key or \
                now - self._last_error[1] > 10.0:
            logger.error("watcher: unexpected error, watching goes on: %s", key,
                         exc_info=True)
            self._last_error = (key, now)

    def _ignored(self, name: str) -> bool:
        if name.startswith((".", "~")) or name.endswith("~"):
            return True
        if name.lower().endswith(_TEMP_SUFFIXES):
            return True
        if self._pattern is None:
            return False
        if isinstance(self._pattern, str):
            return not fnmatch.fnmatch(name, self._pattern)
        return self._pattern.fullmatch(name) is None

    def _poll(self, now: float) -> None:
        self._listed_mtime = self._folder_mtime()  # before listing: a later change is seen
        try:
            entries = os.scandir(self.directory)
        except OSError as err:
            problem = type(err).__name__
            if problem != self._dir_problem:
                logger.warning("watcher: cannot list %s (%s: %s); retrying", self.directory,
                               problem, err.strerror or err)
                self._dir_problem = problem
            return
        if self._dir_problem is not None:
            logger.info("watcher: %s can be listed again", self.directory)
            self._dir_problem = None
        restat_done = now - self._last_restat >= self.recheck_interval
        if restat_done:
            self._last_restat = now
        self._generation += 1
        generation = self._generation
        files = self._files
        n_present = 0
        candidates = []
        leftovers: list[str] = []
        with entries:
            for entry in entries:
                name = entry.name
                f = files.get(name)
                if f is None:
                    if self._ignored(name):
                        continue
                    try:
                        if not entry.is_file():
                            continue
                        st = entry.stat()
                    except OSError:
                        continue  # vanished between listing and stat
                    f = files[name] = _File(name, now, (st.st_size, st.st_mtime_ns), now,
                                            changed_after=self._prev_poll)
                    f.generation = generation
                    n_present += 1
                    if self._first_poll and not self.accept_existing and \
                            self._series is None:
                        f.state = _DONE  # a leftover: never used, even if it changes
                        f.duplicate_of = -1
                        leftovers.append(name)
                        continue
                    candidates.append(f)
                    continue
                f.generation = generation
                n_present += 1
                if f.state == _DONE and (not restat_done or f.duplicate_of == -1):
                    continue  # fast path: most files, most polls; leftovers for good
                if f.state == _COMPANION:
                    main = files.get(f.companion_of)
                    if main is None or main.state == _DONE:
                        f.state = _DONE
                        continue
                try:
                    st = entry.stat()
                except OSError:
                    continue
                stamp = (st.st_size, st.st_mtime_ns)
                if stamp != f.stamp:
                    f.stamp = stamp
                    f.changed_at = now
                    f.changed_after = self._prev_poll
                    if f.state == _GROUPED:
                        group = self._groups.get(f.group)
                        if group is not None:
                            group.changed_at = now
                            group.retry = True
                    elif f.state == _COMPANION:
                        self._poke(f.companion_of, now, candidates)
                    else:
                        f.state = _PENDING  # new content: even a used file is looked at again
                if f.state == _PENDING:
                    candidates.append(f)
        if self._first_poll:
            self._first_poll = False
            if leftovers:
                self._report_leftovers(sorted(leftovers))
        if n_present != len(files):  # some files vanished: forget them
            for name in [n for n, f in files.items() if f.generation != generation]:
                del files[name]
        for f in sorted(candidates, key=lambda f: f.name):
            if self._stop_event.is_set():
                return
            if f.tried_stamp == f.stamp and time.perf_counter() - f.last_try < \
                    self.retry_interval:
                continue
            self._attempt(f)
        if self._groups:
            self._try_groups()

    def _attempt(self, f: _File) -> None:
        path = os.path.join(self.directory, f.name)
        f.tried_stamp = f.stamp
        f.last_try = time.perf_counter()
        if f.stamp[0] == 0:  # created, nothing written yet: not worth a reader's opinion
            self._incomplete(f, None, IncompleteFileError("empty file"))
            return
        t_probe = time.perf_counter()
        try:
            info = self._probe(path)
        except IncompleteFileError as err:
            self._incomplete(f, None, err)
            return
        except Exception as err:
            self._unreadable(f, err)
            return
        finally:
            self._check_stall(f.name, "probing", t_probe)
        kind = getattr(info, "kind", None)
        if kind not in ("volume", "slice"):
            self._unreadable(f, IngestError(f"probe returned kind {kind!r}"))
            return
        target = os.fspath(getattr(info, "path", None) or path)
        target_name = os.path.basename(target)
        if target_name != f.name:  # e.g. the .rec of a PAR/REC pair: read via the .par
            f.state = _COMPANION
            f.companion_of = target_name
            self._poke(target_name, time.perf_counter(), [])
            return
        n_volumes = getattr(info, "n_volumes", 1)
        if n_volumes != 1:
            self._unreadable(f, IngestError(f"holds {n_volumes} volumes (a whole run?); the "
                                            f"watcher expects one volume per file"))
            return
        if not self._series_ok(f, info):
            f.state = _DONE
            return
        index = int(info.index)
        if self._handoff.is_known(index):
            if f.duplicate_of != index:  # once per file, not again as it keeps changing
                f.duplicate_of = index
                self._duplicate(f.name, index)
            f.state = _DONE
            return
        if kind == "slice":
            self._add_slice(f, info, index)
            return
        t_read = time.perf_counter()
        try:
            volume = self._reader(target)
        except IncompleteFileError as err:
            self._incomplete(f, index, err)
            return
        except Exception as err:
            self._unreadable(f, err)
            return
        finally:
            self._check_stall(f.name, "reading", t_read)
        read = time.perf_counter()
        self._restamp(f, path)
        if f.reported:
            logger.info("%s: now complete and readable", f.name)
        f.state = _DONE
        mtime = f.stamp[1] / 1e9
        complete = self._complete_time(mtime, f.changed_after, t_read)
        self._deliver(volume, f.name, index, seen=f.first_seen, complete=complete,
                      mtime=mtime, read=read, info=info)

    def _poke(self, name: str, now: float, candidates: list) -> None:
        """A companion file changed: retry the file it belongs to at once."""
        main = self._files.get(name)
        if main is None or main.state in (_DONE, _GROUPED, _COMPANION):
            return
        main.state = _PENDING
        main.changed_at = now
        main.tried_stamp = None
        if main not in candidates:
            candidates.append(main)

    @staticmethod
    def _restamp(f: _File, path: str) -> None:
        """Record the stamp of the content just read (it may have grown since the listing),
        so that a file read while its last bytes were landing is not re-read as changed.
        """
        try:
            st = os.stat(path)
        except OSError:
            return
        f.stamp = (st.st_size, st.st_mtime_ns)

    @staticmethod
    def _complete_time(mtime: float | None, after: float, read_start: float) -> float:
        """When the file became complete (perf_counter): its modification time, clamped
        between the listing before its last change was seen and the start of the read
        that succeeded (a preserved or skewed mtime cannot make it earlier or later).
        """
        if mtime is None:
            return read_start
        m = mtime - (time.time() - time.perf_counter())
        return min(max(m, after), read_start)

    def _check_stall(self, name: str, what: str, t0: float) -> None:
        took = time.perf_counter() - t0
        if took > self.stall_threshold:
            text = f"{name}: ingest stalled {took:.1f} s {what} this file"
            logger.warning("watcher: %s", text)
            self._handoff.notice("stall", text, seconds=round(took, 3), file=name)

    def _report_leftovers(self, names: list[str]) -> None:
        shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)"
                                         if len(names) > 20 else "")
        text = (f"{len(names)} file(s) already in {self.directory} at start ignored (an "
                f"earlier series; --accept-existing or --series to use them): {shown}")
        logger.warning("watcher: %s", text)
        self._handoff.notice("ignored_at_start", text, files=names)

    def _series_ok(self, f: _File, info: Any) -> bool:
        problem = self._lock.check(info)
        if problem is None:
            return True
        if "other_series" in f.reported:  # probed again as it grew: reported once
            return False
        f.reported.add("other_series")
        name = f.name
        text = f"{name}: ignored: {problem}"
        logger.warning(text)
        self._handoff.count("other_series")
        self._handoff.notice("rejected", text, file=name, field=self._lock.field_)
        return False

    def _duplicate(self, name: str, index: int) -> None:
        logger.warning("%s: ignored: duplicate of volume %d, already received", name, index)
        self._handoff.count("duplicates")

    def _incomplete(self, f: _File, index: int | None, err: Exception) -> None:
        f.state = _PENDING
        waited = time.perf_counter() - f.changed_at
        if waited < self.incomplete_timeout:
            return  # still being written: retried when it changes or after retry_interval
        f.state = _STALLED
        # log before counting: the count tells observers that the report has been made
        logger.warning("%s: truncated: still incomplete %.1f s after its last change (%s); "
                       "retried if it changes", f.name, waited, err)
        if "truncated" not in f.reported:
            f.reported.add("truncated")
            self._handoff.count("truncated")
        if index is not None:
            self._handoff.orderer.note(index, f"file {shown_name(f.name)} truncated")

    def _unreadable(self, f: _File, err: Exception) -> None:
        f.state = _FAILED
        if isinstance(err, IngestError):
            logger.warning("%s: unreadable (%s); ignored unless it changes", f.name, err)
        else:
            logger.warning("%s: reader error (%s: %s); ignored unless it changes", f.name,
                           type(err).__name__, err, exc_info=True)
        if "unreadable" not in f.reported:
            f.reported.add("unreadable")
            self._handoff.count("unreadable")

    def _deliver(self, volume: Any, name: str, index: int, *, seen: float, complete: float,
                 mtime: float | None, read: float | None = None, info: Any = None) -> None:
        if not isinstance(volume, Volume):
            logger.warning("%s: reader returned %s, not a Volume; ignored", name,
                           type(volume).__name__)
            self._handoff.count("unreadable")
            return
        if volume.index != index:
            logger.warning("%s: probe said volume %d, reader said %d; using %d", name, index,
                           volume.index, volume.index)
        status = self._handoff.submit(volume, seen=seen, complete=complete, mtime=mtime,
                                      read=read)
        if status in (ACCEPTED, LATE):
            if self._lock.accept(info if info is not None else volume):
                logger.info("%s: following the series of this file", name)
                if self._series is None:
                    self._series = getattr(info, "series", None) or volume.series
            return
        message = refusal_message(status, self._handoff.orderer, volume.index,
                                  time.perf_counter())
        if message is None:
            return
        logger.warning("%s: %s", name, message)
        if status == "duplicate":
            self._handoff.count("duplicates")
            return
        self._handoff.count("out_of_range")
        if status == IMPLAUSIBLE:
            self._handoff.notice("implausible", f"{name}: {message}", file=name,
                                 index=volume.index)

    # -- slices ------------------------------------------------------------------------------
    def _add_slice(self, f: _File, info: Any, index: int) -> None:
        key = (info.series, index)
        n_parts = check_int(info.n_parts, "n_parts", 0)
        learned = n_parts == 0  # classic series: count learned, see rtfb.ingest.slicecount
        if learned:
            n_parts = self._slice_counts.observe(info.series, index, info.part,
                                                 getattr(info, "position", None))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(info.series, index, n_parts, f.first_seen,
                                               time.perf_counter())
        elif group.n_parts != n_parts and not learned:
            self._unreadable(f, IngestError(f"{n_parts} slices per volume, the other slices "
                                            f"of volume {index} say {group.n_parts}"))
            return
        part = info.part
        if group.parts.get(part, f.name) != f.name:
            logger.warning("%s: ignored: duplicate of slice %s of volume %d (%s)", f.name, part,
                           index, group.parts[part])
            self._handoff.count("duplicates")
            f.state = _DONE
            return
        group.parts[part] = f.name
        group.first_seen = min(group.first_seen, f.first_seen)
        group.changed_after = max(group.changed_after, f.changed_after)
        group.info = info
        group.changed_at = time.perf_counter()
        group.retry = True
        f.state = _GROUPED
        f.group = key
        if len(group.parts) >= (group.n_parts or self._slice_counts.count(group.series) or
                                math.inf):
            self._try_group(key)  # the last slice: stack the volume now, not after the poll

    def _try_groups(self) -> None:
        for key in sorted(self._groups, key=lambda k: k[1]):
            self._try_group(key)

    def _try_group(self, key: tuple) -> None:
        """Stack and deliver the slices of one volume if they are all there."""
        group = self._groups[key]
        now = time.perf_counter()
        if self._handoff.is_known(group.index):  # e.g. delivered from a copy meanwhile
            self._finish_group(key, duplicate=True)
            return
        if group.n_parts == 0:
            group.n_parts = self._slice_counts.count(group.series)
        if group.n_parts == 0 or len(group.parts) < group.n_parts:
            if group.n_parts and not group.reported and \
                    now - group.changed_at >= self.incomplete_timeout:
                group.reported = True
                logger.warning("volume %d: only %d of %d slices arrived (first %s); "
                               "waiting for the rest", group.index, len(group.parts),
                               group.n_parts, group.parts[min(group.parts)])
                self._handoff.count("truncated")
                self._handoff.orderer.note(group.index, "slices missing")
            return
        if not group.retry and group.changed_at <= group.last_try:
            return
        if group.last_try > group.changed_at and now - group.last_try < self.retry_interval:
            return
        group.last_try = now
        names = [group.parts[p] for p in sorted(group.parts)]
        first = names[0]
        t_read = time.perf_counter()
        try:
            volume = self._slice_reader([os.path.join(self.directory, n) for n in names])
        except IncompleteFileError as err:
            if now - group.changed_at >= self.incomplete_timeout:
                group.retry = False
                logger.warning("volume %d (%s...): truncated slices, still incomplete "
                               "%.1f s after the last change (%s)", group.index, first,
                               now - group.changed_at, err)
                if not group.reported:
                    group.reported = True
                    self._handoff.count("truncated")
                self._handoff.orderer.note(group.index,
                                           f"slices of {shown_name(first)} truncated")
            return
        except Exception as err:
            group.retry = False
            kind = "unreadable" if isinstance(err, IngestError) else "reader error"
            logger.warning("volume %d (%s...): slices %s (%s: %s); ignored unless they "
                           "change", group.index, first, kind, type(err).__name__, err)
            self._handoff.count("unreadable")
            return
        read = time.perf_counter()
        self._check_stall(first, "reading the slices of", t_read)
        for n in names:
            if n in self._files:
                self._restamp(self._files[n], os.path.join(self.directory, n))
        mtime = max((self._files[n].stamp[1] for n in names if n in self._files),
                    default=None)
        mtime = None if mtime is None else mtime / 1e9
        complete = self._complete_time(mtime, group.changed_after, t_read)
        self._finish_group(key)
        self._deliver(volume, first, group.index, seen=group.first_seen,
                      complete=complete, mtime=mtime, read=read, info=group.info)

    def _finish_group(self, key: tuple, duplicate: bool = False) -> None:
        group = self._groups.pop(key)
        for name in group.parts.values():
            f = self._files.get(name)
            if f is not None:
                f.state = _DONE
                f.group = None
                if duplicate:
                    self._duplicate(name, group.index)
