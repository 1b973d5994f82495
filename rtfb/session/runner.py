"""Runs a protocol: ingest -> preprocess -> metrics -> feedback, recording everything.

One acquisition thread (inside the :class:`~rtfb.ingest.FolderWatcher` or
:class:`~rtfb.ingest.TCPReceiver`) hands volumes through a bounded queue; the loop in
:meth:`Session.run` is the single processing thread and owns all state. Every received
volume is written to the record *before* it is processed, every processed volume after,
so a crash loses nothing and :func:`replay_session` can reproduce the session bit for bit.
Missing volumes keep the time axis regular: the metrics get the previous cleaned volume
again (flag ``"missing"``), and the gap is reported.

Live-loop rules (``docs/session_record.md``): the first volume fit to be the reference
(:func:`~rtfb.session.reference.reference_problem`) fixes the geometry and TR
(:class:`~rtfb.ingest.series_lock.GeometryLock`); a bad candidate is recorded, reported and
skipped, a later volume that disagrees is rejected naming the field. Every volume carries
its acquisition time stamps (:mod:`rtfb.session.timing`); a feedback value older than
``feedback.max_delay`` when published is flagged ``stale`` and not shown.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numba
import numpy as np

from ..dashboard.commands import CommandQueue
from ..feedback.messages import FLAGS, SCHEMA_VERSION
from ..ingest import Late, Missing, Volume
from ..ingest.series_lock import GeometryLock
from ..metrics.qa import RunningQA
from ..preprocess.pipeline import Preprocessor
from .blocks import BlockSchedule
from .builders import build_engine, build_mapper, build_preprocessor, build_qa
from .maps import MapJob, MapWriter
from .operator import apply_commands
from .record import SessionRecorder
from .record_reader import load_record
from .reference import reference_problem
from .resume import ResumeMixin
from .rois import load_recorded_rois, resolve_rois, save_rois
from .schedules import FeedbackSchedule
from .timing import is_fresh, latency_origin, source_times
from .volume_lines import VolumeLines

logger = logging.getLogger("rtfb.session")


@dataclass
class SessionStatus:
    """Live view of the session for the terminal display (read by another thread)."""

    index: int = -1
    block: str = ""
    value: float | None = None  # feedback shown to the participant (None: nothing shown)
    metric: float | None = None  # the protocol's metric (NaN/None during warm-up)
    fd: float | None = None
    latency_ms: float | None = None
    processed: int = 0
    missing: int = 0
    late: int = 0
    rejected: int = 0
    stale: int = 0
    warnings: int = 0
    catching_up: bool = False
    display: bool | None = None  # a participant display connected (None: not known yet)
    flags: tuple = ()
    done: bool = False
    messages: list = field(default_factory=list)


class _NoPublisher:
    def publish(self, topic, message, deadline=None):
        pass


class RecordWriteError(OSError):
    """The session record could not be written (disk full, ...): the session stops."""


def default_kernel_threads() -> int:
    """Numba threads for the processing thread: 1 on 2 cores or fewer (the other core
    serves acquisition and publishing), else all cores but one, at most 4.
    """
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(cores - 1, 4)


def session_dir_name(protocol_name: str, participant: str = "anon") -> str:
    """BIDS-derivatives-like session folder name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return f"sub-{participant}_ses-{stamp}_task-{protocol_name}"


class Session(ResumeMixin):
    """One neurofeedback / monitoring session driven by a protocol.

    Parameters
    ----------
    protocol : rtfb.config.Protocol
        Validated protocol.
    out_dir : path
        Session folder (created; for ``resume=True`` an existing record).
    publisher : object with ``publish(topic, message)`` | None
        ZeroMQ publisher; ``None`` publishes nothing (replay).
    source_info : dict
        Description of the acquisition source, stored in ``session.json``.
    simulator_dir : path | None
        Synthetic subject folder, for ``simulator_roi`` ROIs.
    rois_from : path | None
        Session folder whose recorded brain mask and ROIs (``rois/``) are used instead of
        resolving the protocol's ROIs again (replay; resume uses its own folder).
    kernel_threads : int | None
        Threads of the numba kernels in the processing thread; None:
        :func:`default_kernel_threads` (1 on a 2-core machine, which leaves the second core
        to the acquisition and publishing threads: lower latency than parallel kernels
        competing with them, see docs/benchmarks.md).
    resume : bool
        Continue an existing record: its volumes are re-processed silently to rebuild the
        state, then acquisition continues after the last recorded volume.
    on_status : callable | None
        Called with a :class:`SessionStatus` after every volume.
    """

    def __init__(self, protocol, out_dir, *, publisher=None, source_info=None,
                 simulator_dir=None, resume: bool = False, rois_from=None,
                 kernel_threads: int | None = None,
                 on_status: Callable[[SessionStatus], None] | None = None):
        self.protocol = protocol
        self.out_dir = Path(out_dir)
        self.publisher = publisher if publisher is not None else _NoPublisher()
        self.source_info = source_info or {}
        self.simulator_dir = simulator_dir
        self.resume = resume
        self.rois_from = Path(rois_from) if rois_from else (self.out_dir if resume else None)
        self.kernel_threads = (default_kernel_threads() if kernel_threads is None
                               else kernel_threads)
        self.on_status = on_status
        fb = protocol.feedback
        self.max_delay = (fb.max_delay if fb is not None and getattr(fb, "max_delay", None)
                          else protocol.session.tr / 2)
        self._geometry = GeometryLock(tr=protocol.session.tr)
        self._end_reason: str | None = None
        self.replay_stale: set[int] | None = None
        self.status = SessionStatus()
        self.schedule = BlockSchedule(protocol.blocks)
        self.feedback_schedule = FeedbackSchedule(  # continuous/intermittent, sham, shaping
            protocol.feedback if protocol.session.participant_feedback else None, self.schedule)
        self._silent = False
        self._state_ready = False
        self._last_vec = None
        self._baseline_values: list[float] = []
        self._maps: MapWriter | None = None  # whole-brain maps, off the feedback path
        self._maps_failed = False
        self._processed: set[int] = set()
        self._received: set[int] = set()
        self.commands = CommandQueue()  # operator commands (dashboard), applied between volumes
        self.feedback_paused = False
        self._open_record()

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def warm_up() -> None:
        """Load every kernel once on tiny data, before the scanner starts.

        Imports (nilearn) and compiled numba kernels cost about a second on first use;
        doing it here keeps that out of the first volumes' latency.
        """
        from ..metrics import SlidingALFF, SlidingPSC, SlidingReHo, SlidingSeedFC
        from ..preprocess.masks import compute_brain_mask

        rng = np.random.default_rng(0)
        grid = np.zeros((12, 12, 10))
        grid[2:10, 2:10, 2:8] = 1000.0
        vols = [grid + rng.normal(0, 5, grid.shape) for _ in range(4)]
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
        mask = compute_brain_mask(vols[0], affine)
        pre = Preprocessor(glm="cumulative", n_expected=4, smoothing_fwhm=4.0).fit(
            Volume(vols[0], affine, 0))
        states = [SlidingALFF(3, 10.0, (0.01, 0.05)), SlidingReHo(3, mask), SlidingPSC(3),
                  SlidingSeedFC(3, np.arange(2)), RunningQA()]
        for i, vol in enumerate(vols):
            data = pre.transform(Volume(vol, affine, i)).data
            for state in states:
                state.partial_fit(data if not isinstance(state, SlidingReHo)
                                  else vol[mask])

    def _open_record(self) -> None:
        if self.resume:
            self.record_in = load_record(self.out_dir)
            self.session_id = self.record_in.session_id
            self._started = self.record_in.session.get("started")
        else:
            if self.out_dir.exists() and any(self.out_dir.iterdir()):
                raise FileExistsError(f"Session folder {self.out_dir} is not empty; use "
                                      "--resume to continue it or choose another --out.")
            self.session_id = uuid.uuid4().hex[:12]
        self.recorder = SessionRecorder(self.out_dir)
        self._lines = VolumeLines(self.recorder, on_latency=self._set_latency,
                                  on_withheld=self._count_withheld)
        if not self.resume:  # before any volume: a kill at any moment leaves a resumable record
            self.recorder.write_session(self._session_info(None), self.protocol.path)

    def _setup(self, reference: Volume) -> None:
        p = self.protocol
        self._geometry.fix(reference)
        recorded = None
        if self.rois_from is not None:  # resume: the record's own; replay: the original's
            recorded = load_recorded_rois(self.rois_from / "rois", p.rois,
                                          missing_ok=self.resume
                                          and self.rois_from == self.out_dir)
        mask = recorded.pop("brain_mask") if recorded else self._load_mask(reference)
        self.preprocessor = build_preprocessor(p, reference, mask)
        if recorded:
            self.rois = recorded
        else:
            ref_img = nib.Nifti1Image(np.asarray(reference.data), reference.affine)
            self.rois = resolve_rois(p.rois, ref_img, self.simulator_dir)
            save_rois(self.out_dir / "rois", self.preprocessor.mask_, self.rois,
                      reference.affine)
        self.engine = build_engine(p, self.preprocessor, self.rois)
        self.qa = build_qa(self.preprocessor.mask_, self.rois)
        self.mapper = build_mapper(p.feedback)
        self.reference_affine = reference.affine
        self._state_ready = True
        if not self.resume or self.record_in.session.get("shape") is None:
            self.recorder.write_session(self._session_info(reference), p.path)

    def _load_mask(self, reference: Volume):
        mask = self.protocol.preprocess.brain_mask
        if mask in (None, "auto"):
            return None
        from ..preprocess.masks import load_mask

        return load_mask(mask, reference.affine, reference.shape, name="brain_mask")

    def _session_info(self, reference: Volume | None) -> dict:
        p = self.protocol
        if not hasattr(self, "_started"):
            self._started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return {
            "session_id": self.session_id, "protocol_name": p.session.name,
            "protocol_sha256": p.sha256, "source": self.source_info,
            "started": self._started,
            "shape": None if reference is None else list(reference.shape),
            "affine": None if reference is None else reference.affine,
            "reference_index": None if reference is None else reference.index,
            "max_delay": self.max_delay,
            "tr": p.session.tr, "n_expected": p.session.volumes,
            "zmq_address": p.output.zmq_address, "schema_version": SCHEMA_VERSION,
            "protocol_dir": str(Path(p.path).parent) if p.path else None,
            "feedback_schedule": self.feedback_schedule.record_info(),
        }

    # ---------------------------------------------------------------- messages
    def record_message(self, topic: str, message: dict) -> None:
        """``on_sent`` hook of the publisher: records every message as actually sent.

        A feedback message's volume line is written here, in the publisher's thread, once
        the message is out (:class:`~rtfb.session.volume_lines.VolumeLines`).
        """
        self.recorder.write_message(topic, message)
        if topic == "feedback":
            self._lines.sent(message)

    def record_display(self, connected: bool) -> None:
        """``on_display`` hook of the publisher: a participant display connected, or the last
        one left (recorded; a warning, since the participant then sees nothing new).
        """
        if self.status.done:  # displays closing after the end are no news
            return
        self.status.display = connected
        index = self.status.index if self.status.index >= 0 else None
        try:
            if connected:
                self._event("display", "participant display connected", index,
                            code="display_connected")
            else:
                self._event("warning", "participant display disconnected: the participant "
                            "sees no feedback until it reconnects", index, code="display_lost")
        except (OSError, ValueError):  # the record is closed (end of session)
            pass

    def _set_latency(self, latency_ms: float | None) -> None:
        self.status.latency_ms = latency_ms

    def _count_withheld(self) -> None:  # publisher thread: a value sent after its deadline
        self.status.stale += 1
        self.status.catching_up = True

    def _publish(self, topic: str, message: dict, deadline: float | None = None) -> bool:
        """Hand a message to the publisher; False if it was not queued for sending.

        ``deadline``: the latest send time at which a feedback value may be shown (later,
        the publisher withholds it, see :meth:`FeedbackPublisher.publish`).
        """
        if self._silent:
            return False
        message["time_published"] = time.time()
        try:
            return self.publisher.publish(topic, message, deadline=deadline) is not False
        except RuntimeError as err:  # publisher down: the session and its record go on
            if not getattr(self, "_publisher_down", False):
                self._publisher_down = True
                self._event("error", f"feedback publisher unavailable: {err}")
            return False

    def _base_message(self, kind: str, index, acquisition_time, received) -> dict:
        return {"schema_version": SCHEMA_VERSION, "type": kind, "session_id": self.session_id,
                "volume_index": index, "acquisition_time": acquisition_time,
                "time_received": received, "time_published": None}

    def _status(self, event: str, text: str, index=None, block=None) -> None:
        msg = self._base_message("status", index, None, time.time())
        msg.update(event=event, message=text, tr=self.protocol.session.tr,
                   block=None if block is None else block.as_dict())
        self._publish("status", msg)

    # -------------------------------------------------------------- processing
    def _baseline_condition(self) -> str | None:
        if self.protocol.feedback is None:
            return self._monitoring_baseline()
        baseline = self.protocol.feedback.baseline
        return baseline.split(":", 1)[1] if baseline.startswith("block:") else None

    def _monitoring_baseline(self) -> str | None:
        """Monitoring protocols: change maps are relative to a block named 'baseline'."""
        names = [b.condition for b in self.protocol.blocks]
        return "baseline" if "baseline" in names else None

    def _update_baseline(self, index: int, block, values: dict) -> None:
        cond = self._baseline_condition()
        if cond is None:
            return
        if self.mapper_has_baseline():
            return
        primary = values.get(self.protocol.metric.kind, math.nan)
        if block.condition == cond and math.isfinite(primary):
            self._baseline_values.append(primary)
        if block.condition == cond and self.schedule.is_last_of_block(index):
            if self._baseline_values:
                self.mapper.set_baseline(float(np.mean(self._baseline_values)))

    @property
    def end_reason(self) -> str | None:
        """Why :meth:`run` ended ("finished", "stopped by the operator", "stopped: ...")."""
        return self._end_reason

    def mapper_has_baseline(self) -> bool:
        """True once the feedback baseline is known."""
        return getattr(self.mapper, "baseline_", None) is not None

    def _submit_maps(self, index: int, block) -> None:
        """Hand the window's maps to the map writer (after the volume was published)."""
        if not self.engine.maps or self._maps_failed:
            return
        every = self.protocol.output.write_maps_every
        block_end = self.schedule.is_last_of_block(index)
        baseline = block_end and block.condition == self._baseline_condition()
        periodic = bool(every) and (index + 1) % every == 0
        if self._silent and not baseline:  # rebuilding a resumed session: no files
            return
        if not (block_end or periodic):
            return
        clean = self.engine.map_window()
        if clean is None:  # warm-up: no full window yet
            return
        if self._maps is None:
            m = self.protocol.metric
            self._maps = MapWriter(self.out_dir / "maps", self.engine.maps,
                                   self.engine.mask, self.reference_affine,
                                   tr=self.protocol.session.tr, band=m.band,
                                   neighborhood=m.neighborhood, convention=m.convention)
        keep = block_end or self.replay_stale is not None  # a replay has time for all
        try:
            skipped = self._maps.submit(MapJob(index, block.condition, clean,
                                               baseline=baseline, write=not self._silent,
                                               keep=keep))
        except OSError:  # disk full: the session stops with a clear message (run loop)
            raise
        except Exception as err:  # maps are monitoring: they never stop the feedback
            self._maps_failed = True
            self._event("error", f"whole-brain maps stopped: {err!r}; the session and its "
                        "feedback go on", index, code="maps_error")
            return
        if skipped is not None:
            self._event("warning", f"maps of volume {skipped} skipped: the map writer is "
                        f"behind (maps of volume {index} queued instead)", index,
                        code="maps_skipped")

    def _process(self, volume: Volume | None, index: int, times: dict | None = None,
                 acquisition_time=None, missing_reason: str | None = None,
                 rejected: str | None = None) -> None:
        """Process one volume index (``volume=None``: missing or rejected, impute the last
        vector); ``times`` holds the acquisition stamps (:mod:`rtfb.session.timing`).
        """
        times = dict(times or {})
        block = self.schedule.block_at(index)
        if block.index != getattr(self, "_block_index", None):
            if getattr(self, "_block_index", None) is not None:
                self._event("block", f"block {block.index} ({block.condition}) starts", index)
                self._status("block", f"{block.condition}: {block.cue}", index, block)
            self._block_index = block.index
        flags = []
        motion, fd, censored = None, None, False
        vec = result = qa = None
        if rejected is not None:
            flags.append("rejected")
        elif volume is not None:
            try:
                result = self.preprocessor.transform(volume)
                vec, motion, fd, censored = result.data, result.motion, result.fd, \
                    result.censored
                flags.extend(result.flags)
                qa = self.qa.partial_fit(result.uncleaned).summary()
            except ValueError as err:
                self._event("error", f"volume {index} rejected: {err}", index)
                flags.append("rejected")
        if "rejected" in flags:
            self.status.rejected += 1
        if vec is None:
            flags.append("missing")
            vec = self._last_vec
        values = {}
        if vec is not None:
            # the engine cleans its whole window with the current nuisance fit
            values = (self.engine.partial_fit() if result is None else
                      self.engine.partial_fit(result.uncleaned, result.design_row))
            if self._last_vec is None:
                self._last_vec = np.empty_like(vec)
            if vec is not self._last_vec:
                self._last_vec[:] = vec
            self._update_baseline(index, block, values)
        primary = values.get(self.protocol.metric.kind, math.nan)
        value = None
        if math.isfinite(primary) and self.mapper_has_baseline():
            value = self.mapper.transform(primary)
        elif not math.isfinite(primary):
            flags.append("warmup")
        else:
            flags.append("baseline")
        show = bool(block.feedback and self.protocol.session.participant_feedback)
        if show and self.feedback_paused:  # operator pause (dashboard)
            show = False
            flags.append("paused")
        if not show:
            flags.append("no_feedback")
        shown, show_bar, target = self.feedback_schedule.apply(index, block, value, show)
        state = "feedback" if show else "rest"
        if "motion" in flags:
            state = "motion"
        processed = time.time()
        times["processed"] = processed
        if self.replay_stale is not None:  # replay: as in the original session
            stale = index in self.replay_stale
        else:
            # fresh means *sent* within max_delay: allow for the publisher's recent lag
            stale = not self._silent and not is_fresh(times, processed,
                                                      self.max_delay - self._lines.send_lag)
        if stale:  # too late to be shown as the participant's current state
            flags.append("stale")
            shown = None
        msg = self._base_message("feedback", index, acquisition_time,
                                 times.get("dequeued"))
        msg.update(value=shown, raw=values, block=block.as_dict(), fd=fd,
                   flags=[f for f in flags if f in FLAGS],
                   target=None if self.protocol.feedback is None else target,
                   display={"show_bar": show_bar, "state": state}, qa=qa,
                   baseline=getattr(self.mapper, "baseline_", None))
        published = time.time()
        times["published"] = published
        origin = latency_origin(times)
        latency = None if self._silent or origin is None else (published - origin) * 1e3
        entry = {"index": index, "block": block.as_dict(), "motion": motion, "fd": fd,
                 "censored": censored, "metrics": values, "feedback": shown,
                 "feedback_value": value, "target": target, "flags": flags, "qa": qa,
                 "times": times, "latency_ms": latency}
        if missing_reason:
            entry["missing_reason"] = missing_reason
        if rejected:
            entry["rejected_reason"] = rejected
        if not self._silent:
            self._lines.flush(older_than=5.0)
            deferred = not isinstance(self.publisher, _NoPublisher)
            if deferred:  # written by record_message once sent (real send time)
                self._lines.defer(index, entry)
            deadline = (None if shown is None or origin is None or self.replay_stale is not None
                        else origin + self.max_delay)
            if not self._publish("feedback", msg, deadline) or not deferred:
                self._lines.write_now(index, entry)
        self._submit_maps(index, block)
        self._processed.add(index)
        s = self.status
        s.index, s.block, s.fd = index, block.condition, fd
        if not stale:
            s.value = shown
        s.metric = primary if math.isfinite(primary) else None
        s.stale += stale
        s.catching_up = stale
        s.latency_ms, s.flags = latency, tuple(flags)
        s.processed += 1
        if self.on_status is not None and not self._silent:
            self.on_status(s)

    def close(self) -> None:
        """Once the publisher has stopped: write the volume lines whose message was never
        reported sent, and close the record.
        """
        self._lines.flush()
        self.recorder.close_volumes()
        self.recorder.close_messages()

    def _event(self, kind: str, message: str, index=None, **extra) -> None:
        log = logger.warning if kind in ("warning", "error", "missing", "late") else logger.info
        log(message)
        if kind == "warning":
            self.status.warnings += 1
        if not self._silent:
            self.recorder.write_event(kind, message, index, **extra)

    def _record_notices(self, source) -> None:
        """Events of the acquisition thread (ignored files, implausible indices, queue
        full, stalls) go to the record as warnings, with their ``code``.
        """
        drain = getattr(source, "drain_notices", None)
        if drain is None:
            return
        for notice in drain():
            notice = dict(notice)
            code = notice.pop("kind")
            message = notice.pop("message")
            index = notice.pop("index", None)
            notice.pop("time", None)
            self._event("warning", message, index, code=code, **notice)

    def handle(self, item, source=None, dequeued: float | None = None) -> bool:
        """Handle one item from an acquisition source (Volume, Missing or Late).

        Returns
        -------
        bool
            True when a volume was accepted (processed, or recorded as late).
        """
        now = time.time() if dequeued is None else dequeued
        if isinstance(item, Missing):
            self.status.missing += 1
            self._event("missing", f"volume {item.index} missing: {item.reason}", item.index)
            if self._state_ready:
                self._process(None, item.index, {"dequeued": now},
                              missing_reason=item.reason)
            return False
        if isinstance(item, Late):
            vol = item.volume
            self.status.late += 1
            self.recorder.write_input(vol, now, late=True)
            self._event("late", f"volume {vol.index} arrived after it was reported missing; "
                        "recorded, not processed", vol.index)
            return True
        if not isinstance(item, Volume):
            raise TypeError(f"unexpected item from the acquisition source: {item!r}")
        if item.index in self._received:
            self._event("warning", f"volume {item.index} received twice; ignored", item.index)
            return False
        times = source_times(source, item.index, now)
        name = item.source or "tcp"
        if not self._state_ready:
            problem = reference_problem(item, self.protocol) or self._geometry.check(item)
            self.recorder.write_input(item, now, rejected=problem)
            if problem is not None:
                self._event("error", f"volume {item.index} ({name}) cannot be the reference: "
                            f"{problem}; the next good volume will be", item.index,
                            code="bad_reference", file=name)
                return False
            try:
                self._setup(item)
            except ValueError as err:
                self._event("error", f"volume {item.index} ({name}) cannot be the reference: "
                            f"{err}; the next good volume will be", item.index,
                            code="bad_reference", file=name)
                return False
            self._received.add(item.index)
            self._event("start", f"session {self.session_id} started at volume {item.index}")
            self._status("start", f"session {self.session_id} started", item.index,
                         self.schedule.block_at(item.index))
            self._process(item, item.index, times, acquisition_time=item.acquisition_time)
            return True
        self._received.add(item.index)
        problem = self._geometry.check(item)
        self.recorder.write_input(item, now, rejected=problem)
        if problem is not None:
            field_name = problem.split(":", 1)[0]
            self._event("error", f"volume {item.index} ({name}) rejected: {field_name} "
                        f"differs from the reference ({problem})", item.index,
                        code="rejected", file=name, field=field_name)
            self._process(None, item.index, times, acquisition_time=item.acquisition_time,
                          rejected=problem)
            return False
        self._process(item, item.index, times, acquisition_time=item.acquisition_time)
        return True

    # --------------------------------------------------------------- run loop
    def run(self, source, stop_event: threading.Event | None = None,
            idle_timeout: float | None = None) -> Path:
        """Process items from ``source`` until the protocol's volumes are done.

        Parameters
        ----------
        source : object with ``get(timeout)``
            Started acquisition source (watcher, TCP receiver) or a record source.
        stop_event : threading.Event | None
            Set it to stop cleanly after the current volume (Ctrl-C).
        idle_timeout : float | None
            Stop when no volume was accepted for this many seconds, counted from the last
            accepted volume or the start of :meth:`run` (files that are refused, unreadable
            or rejected do not count).

        Returns
        -------
        Path
            The session folder.
        """
        numba.set_num_threads(max(1, min(int(self.kernel_threads),
                                         numba.config.NUMBA_NUM_THREADS)))
        stop_event = stop_event or threading.Event()
        n_expected = self.protocol.session.volumes
        reason = None
        try:
            if self.resume:
                next_index = self._rebuild_from_record()
                self._event("resume", f"session resumed at volume {next_index}", next_index)
            last_accept = time.monotonic()
            while not stop_event.is_set():
                if apply_commands(self, stop_event) and stop_event.is_set():
                    break
                if self._processed and max(self._processed) >= n_expected - 1:
                    reason = "finished"
                    break
                try:
                    item = source.get(timeout=0.1)
                except queue.Empty:
                    self._record_notices(source)
                    if (idle_timeout is not None
                            and time.monotonic() - last_accept > idle_timeout):
                        reason = f"stopped: no volume accepted for {idle_timeout:g} s"
                        self._event("warning", f"no volume accepted for {idle_timeout:g} s: "
                                    "stopping (--idle-timeout)", code="idle_timeout")
                        break
                    if getattr(source, "running", True) is False:
                        # a recording ends when it delivered everything; a scanner source
                        # that stops early did not
                        reason = ("finished" if getattr(source, "complete_when_stopped", False)
                                  else "stopped: the acquisition source stopped")
                        break
                    continue
                dequeued = time.time()
                self._record_notices(source)
                if self.handle(item, source, dequeued):
                    last_accept = time.monotonic()
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                where = err.filename or self.out_dir
                reason = f"stopped: disk full writing {where}"
                self._end_reason = reason
                try:
                    self._event("error", f"session {reason}")
                except OSError:
                    pass
                raise RecordWriteError(err.errno, f"disk full writing {where}: the session "
                                       f"stopped after {len(self._processed)} volumes; free "
                                       f"space, then rtfb run --resume {self.out_dir}") from err
            reason = f"stopped by an error: {err!r}"
            self._event("error", f"session {reason}")
            raise
        except Exception as err:  # record the crash reason, then re-raise
            reason = f"stopped by an error: {err!r}"
            self._event("error", f"session {reason}")
            raise
        finally:
            if stop_event.is_set() and reason is None:
                reason = "stopped by the operator"
            reason = reason or "stopped"
            self._end_reason = reason
            try:
                self._event("end", f"session {reason}: {len(self._processed)} volumes "
                            f"processed", code="finished" if reason == "finished" else "stopped")
                self._status("end", f"session {reason}")
            except OSError:
                pass
            self.status.done = True
            if self._maps is not None:  # the maps queued are part of the record
                try:
                    self._maps.close()
                except Exception as err:  # the record and its other files still close
                    try:
                        self._event("error", f"maps not saved: {err!r}", code="maps_error")
                    except OSError:
                        pass
            try:
                self.recorder.close(messages=isinstance(self.publisher, _NoPublisher))
            except OSError:
                pass
        return self.out_dir
