"""Export layouts: follow the series folder a scanner creates for the run.

Many sites export each series to its own folder under one root:

* GE: ``ROOT/p<patient>/e<exam>/s<series>/`` (``p001/e1234/s5/``);
* Philips XTC / DRIN: ``ROOT/<NNNN>/`` (``0001/``, ``0002/``, ...);
* Siemens and others: ``ROOT/<series folder>/``, one per series;

and some write every file into ROOT itself. :class:`SeriesFolderWatcher` (what
``rtfb run --watch ROOT`` uses) watches ROOT like a :class:`~rtfb.ingest.watcher.FolderWatcher`
and, at the same time, looks for series folders (folders without subfolders, at most three
levels below ROOT) that appear **after it started**. It follows the newest of them, and moves
on to a newer one while the folder followed has delivered nothing yet (a localizer or a
scout that came first); once a volume was delivered the folder is kept (the run's series is
locked) and new folders are only logged. Folders that were there before the start (earlier
sessions, other patients) are never read.

The folder scan runs in :meth:`SeriesFolderWatcher.get` (the consumer's thread), at most every
``scan_interval`` seconds and only until the first volume: it costs nothing afterwards.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from typing import Any

from .._utils.checks import _validate_type, check_positive_number
from ._handoff import IngestStats, VolumeTiming
from .names import shown_name
from .ordering import Late, Missing
from .volume import Volume
from .watcher import FolderWatcher

logger = logging.getLogger("rtfb.ingest")

__all__ = ["SeriesFolderWatcher", "series_folders"]

#: Deepest series folder looked for below ROOT (GE p/e/s).
MAX_DEPTH = 3


def series_folders(root: str | os.PathLike, max_depth: int = MAX_DEPTH) -> dict[str, float]:
    """Leaf folders (no subfolder) at most ``max_depth`` levels below ``root``.

    Returns their modification times by path; hidden folders (leading ``.``) are skipped.
    """
    found: dict[str, float] = {}

    def walk(path: str, depth: int) -> None:
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        subdirs = [e for e in entries if not e.name.startswith(".")
                   and e.is_dir(follow_symlinks=False)]
        if depth > 0 and not subdirs:
            try:
                found[path] = os.stat(path).st_mtime
            except OSError:
                pass
            return
        if depth < max_depth:
            for entry in subdirs:
                walk(entry.path, depth + 1)

    walk(os.fspath(root), 0)
    return found


class SeriesFolderWatcher:
    """Watch ROOT and follow the newest series folder created below it after the start.

    Parameters
    ----------
    root : str | path-like
        The export root (it may not exist yet).
    scan_interval : float
        Seconds between scans for new series folders (until the first volume).
    **kwargs
        Passed to each :class:`~rtfb.ingest.watcher.FolderWatcher` (``first_index``,
        ``poll_interval``, ``gap_timeout``, ...).

    Notes
    -----
    Same interface as :class:`~rtfb.ingest.watcher.FolderWatcher` (``start``, ``stop``,
    ``get``, ``running``, ``stats``, ``timing``, ``series``, context manager); ``directory``
    is the folder followed now.
    """

    def __init__(self, root: str | os.PathLike, *, scan_interval: float = 0.25,
                 **kwargs: Any) -> None:
        _validate_type(root, (str, os.PathLike), "root")
        self.root = os.fspath(root)
        self.scan_interval = check_positive_number(scan_interval, "scan_interval")
        self._kwargs = kwargs
        self._before: set[str] | None = None
        self._ignored: set[str] = set()
        self._last_scan = -float("inf")
        self._delivered = False
        self._current = FolderWatcher(self.root, **kwargs)
        self._started = False
        self._notices: list[dict] = []

    # -- interface of FolderWatcher ----------------------------------------------------------
    def start(self) -> SeriesFolderWatcher:
        """Note the folders already there, then start watching ROOT; return self."""
        if self._started:
            raise RuntimeError("SeriesFolderWatcher.start() was already called.")
        self._started = True
        self._before = set(series_folders(self.root))
        self._current.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watcher of the folder followed."""
        self._current.stop(timeout)

    def get(self, timeout: float | None = None) -> Volume | Missing | Late:
        """Next item of the folder followed (see :meth:`FolderWatcher.get`)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._delivered:
                self._scan()
            wait = 0.1 if end is None else max(0.0, min(0.1, end - time.monotonic()))
            try:
                item = self._current.get(timeout=wait)
            except queue.Empty:
                if end is not None and time.monotonic() >= end:
                    raise
                if not self._current.running and self._delivered:
                    raise
                continue
            if isinstance(item, (Volume, Late)):
                self._delivered = True
            return item

    @property
    def directory(self) -> str:
        """Folder followed now (ROOT until a series folder appeared)."""
        return self._current.directory

    @property
    def running(self) -> bool:
        """Whether the watcher of the folder followed runs."""
        return self._current.running

    @property
    def series(self) -> str | None:
        """Series followed (see :attr:`FolderWatcher.series`)."""
        return self._current.series

    @property
    def stats(self) -> IngestStats:
        """Counters and timings of the folder followed."""
        return self._current.stats

    def drain_notices(self) -> list[dict]:
        """Notices for the session record (see :meth:`FolderWatcher.drain_notices`), those
        of a folder left for a newer one included.
        """
        notices, self._notices = self._notices, []
        return notices + self._current.drain_notices()

    def timing(self, index: int) -> VolumeTiming | None:
        """Time stamps of a delivered volume (see :meth:`FolderWatcher.timing`)."""
        return self._current.timing(index)

    def __enter__(self) -> SeriesFolderWatcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SeriesFolderWatcher {self.root!r} following {self.directory!r}>"

    # -- series folders ----------------------------------------------------------------------
    def _scan(self) -> None:
        now = time.monotonic()
        if now - self._last_scan < self.scan_interval:
            return
        self._last_scan = now
        new = {path: mtime for path, mtime in series_folders(self.root).items()
               if path not in (self._before or ()) and path not in self._ignored}
        new.pop(self._current.directory, None)
        if not new:
            return
        newest = max(new, key=lambda p: (new[p], p))
        if self._current.directory != self.root:
            try:
                current_mtime = os.stat(self._current.directory).st_mtime
            except OSError:
                current_mtime = -float("inf")
            if new[newest] <= current_mtime:
                return  # the folder followed is still the one written last
        self._follow(newest)

    def _follow(self, folder: str) -> None:
        old = self._current
        if old.directory != self.root:
            self._ignored.add(old.directory)
        old.stop()
        self._notices.extend(old.drain_notices())
        relative = os.path.relpath(folder, self.root)
        shown = "/".join(shown_name(part) for part in relative.split(os.sep))
        logger.info("watcher: following the new series folder %s under the export root", shown)
        # the folder was created after the start: every file in it is of the new series
        kwargs = dict(self._kwargs, accept_existing=True)
        self._current = FolderWatcher(folder, **kwargs).start()
