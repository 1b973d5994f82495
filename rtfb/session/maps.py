"""Whole-brain maps of a session, computed and written off the feedback path.

At a block end (and every ``output.write_maps_every`` volumes) the processing thread hands
the window cleaned by the current nuisance fit (:meth:`MetricEngine.map_window`, a few ms)
to :class:`MapWriter`, *after* the volume's feedback was published. The writer's own
thread computes the maps (:func:`rtfb.session.metric_engine.window_map`: ALFF/fALFF,
ReHo; hundreds of ms on a 64x64x36 grid) and saves them under ``maps/``, so the ROI value
fed back stays on time while maps are being computed.

Overload policy (issue 10): maps may be updated less often under backlog, never at the
cost of the feedback. Jobs run in order; block-end jobs (the per-block record, and the
baseline that later change maps are relative to) are always kept; a periodic job waiting
behind a busy writer is replaced by the next periodic one (the skipped volume is returned
by :meth:`MapWriter.submit` so the session can log it). :meth:`MapWriter.close` finishes
every kept job before the record is closed.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .metric_engine import window_map

__all__ = ["MapJob", "MapWriter"]


@dataclass
class MapJob:
    """Maps of one window.

    Attributes
    ----------
    index : int
        Volume ending the window.
    condition : str
        Its block's condition (file names).
    clean : numpy.ndarray, shape (window, n_mask_voxels)
        The window cleaned by the nuisance fit current at ``index``.
    baseline : bool
        The maps become the baseline of later change maps (end of the baseline block).
    write : bool
        Save the maps (False while a resumed session rebuilds its state silently).
    keep : bool
        Never replaced by a later job (block ends); periodic jobs are ``keep=False``.
    """

    index: int
    condition: str
    clean: np.ndarray
    baseline: bool = False
    write: bool = True
    keep: bool = True


class MapWriter:
    """One thread computing and saving a session's whole-brain maps, in order.

    Parameters
    ----------
    out_dir : path-like
        The session's ``maps/`` folder.
    names : sequence of str
        Maps to compute (``"alff"``, ``"falff"``, ``"reho"``).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; the window's columns are its voxels in C order.
    affine : ndarray, shape (4, 4)
        Affine of the saved maps.
    tr, band, neighborhood, convention
        As for :class:`~rtfb.session.metric_engine.MetricEngine`.

    Attributes
    ----------
    baseline_ : dict of str -> ndarray
        Baseline maps (after the baseline block's job ran).
    n_written_ : int
        Jobs whose maps were saved.
    n_skipped_ : int
        Periodic jobs replaced by a later one.
    """

    def __init__(self, out_dir, names, mask, affine, *, tr: float, band, neighborhood=27,
                 convention: str = "rtfb"):
        self.out_dir = Path(out_dir)
        self.names = tuple(names)
        self.mask = np.asarray(mask, dtype=bool)
        self.affine = np.asarray(affine, dtype=float)
        self.params = dict(tr=float(tr), band=tuple(band), neighborhood=neighborhood,
                           convention=convention)
        self.baseline_: dict[str, np.ndarray] = {}
        self.n_written_ = 0
        self.n_skipped_ = 0
        self._jobs: deque[MapJob] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rtfb-maps", daemon=True)
        self._thread.start()

    def submit(self, job: MapJob) -> int | None:
        """Queue a job; returns the index of a periodic job it replaced, if any.

        Raises
        ------
        OSError
            A previous job could not be saved (e.g. disk full): reported to the session.
        """
        self._raise_error()
        skipped = None
        with self._cond:
            if not job.keep and self._jobs and not self._jobs[-1].keep:
                skipped = self._jobs.pop().index
                self.n_skipped_ += 1
            self._jobs.append(job)
            self._cond.notify_all()
        return skipped

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._jobs) + self._busy

    def close(self, timeout: float | None = None) -> None:
        """Finish every queued job, then end the thread; re-raises a saving error."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closing)
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                self._do(job)
            except BaseException as err:  # reported by the next submit() or close()
                self._error = err
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _do(self, job: MapJob) -> None:
        for name in self.names:
            current = window_map(job.clean, self.mask, name, **self.params)
            if job.baseline:
                self.baseline_.setdefault(name, current)
            if not job.write:
                continue
            base = self.baseline_.get(name)
            change = current - base if base is not None else current
            kind = "change" if base is not None else "map"
            img = nib.Nifti1Image(np.nan_to_num(change).astype(np.float32), self.affine)
            self._save(img, f"{name}-{kind}_{job.condition}_vol-{job.index:05d}.nii.gz")
        if job.write:
            self.n_written_ += 1

    def _save(self, img, name: str) -> None:
        """Write in ``maps/.partial/`` then rename: readers (dashboard, report) never see a
        half-written map.
        """
        partial = self.out_dir / ".partial"
        partial.mkdir(exist_ok=True)
        nib.save(img, partial / name)
        os.replace(partial / name, self.out_dir / name)
