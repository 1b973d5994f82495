"""Play a run in real time, as a scanner would, with optional injected faults.

``stream(source, to, tr)`` sends volume after volume on a drift-corrected TR clock
(:class:`simulator.clock.TRClock`, ``interval = tr / speed``):

* to a **folder** (the scanner's export folder): NIfTI sources become one 3D NIfTI-1 file
  per volume, ``vol_<NNNNN>.nii`` (1-based, 5 digits, float32, TR in ``pixdim[4]``);
  DICOM sources are replayed file by file, Siemens real-time mosaics as
  ``<prefix>_<series:06d>_<vol:06d>.dcm``, GE slices as ``i<n>.MRDC.<instance>`` (other
  slice series as ``<series:06d>_<vol:06d>_<slice:04d>.dcm``). Every file is written
  directly under its final name in ``chunks`` pieces with ``chunk_pause`` seconds in
  between, so a watcher sees partial files, as on a real scanner (no rename trick).
* to **TCP** (``tcp://HOST:PORT``): one frame per volume in framing version 2 of
  ``docs/tcp_protocol.md`` (implemented here independently of rtfb), each frame tagged with
  HMAC-SHA256 under the session's key (``key``: the bytes or the key file of
  ``rtfb run --key FILE``). The sender waits for the receiver (``connect_timeout``),
  reconnects when the connection drops, and, since a receiver closes the connection after a
  bad frame, closes and reopens it itself after sending a truncated or corrupted frame. It
  reads the receiver's signed acknowledgements and records, per frame, what the receiver
  said became of it (``ack``). TCP output needs a NIfTI source.

Looping: ``volumes=N`` plays the source's volumes again and again up to ``N`` volumes. For
DICOM the looped copies get the continuing numbers (InstanceNumber; AcquisitionNumber
when the source numbers acquisitions), new deterministic SOPInstanceUIDs, the same
SeriesInstanceUID, and names that continue the run. Files of the first pass whose header
needs no change are copied byte for byte.

Faults (``faults={"drop": 0.1, "delay": [5, 17], ...}``; a rate in [0, 1) drawn with the
seeded RNG ``fault_seed`` or a list of 1-based volume numbers); each volume gets at most
one fault (precedence: drop, truncate, corrupt, shuffle, delay, duplicate; conflicting
explicit lists are an error):

=============  =====================================================================
``drop``       never written / sent
``duplicate``  written twice: ``duplicate_mode="same"`` rewrites the same file half an
               interval later, ``"copy"`` writes a second file ``<stem>_copy<ext>``
               with the same content (same volume number in the DICOM header); TCP:
               the same frame sent twice
``truncate``   only the first ``truncate_fraction`` of the bytes are ever written (TCP:
               the frame is cut and the connection closed); last file of a slice volume
``delay``      written ``delay_seconds`` (scanner seconds, default 2 TR) late, after later
               volumes
``shuffle``    swapped with the next volume (volume v at v+1's time and vice versa); the
               partner is marked ``shuffled`` too
``corrupt``    ``corrupt_mode="random"``: random bytes of the right length (TCP: the whole
               frame); ``"header"``: the header bytes are damaged (NIfTI: the 348-byte
               header; DICOM: the ``DICM`` magic and file meta; TCP: the JSON header)
=============  =====================================================================

A JSON manifest (``manifest``, default ``<out>/../stream_manifest.json`` for a folder,
``./stream_manifest.json`` for TCP) is written when the stream starts (``status:
"running"``, the plan) and when it ends (``"completed"``, or ``"interrupted"`` after a
stop request or Ctrl-C). Times in it are seconds after the schedule origin ``t0`` (real
seconds, on :func:`time.perf_counter`); see :func:`stream` for the fields.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .clock import TimingReport, TRClock
from .faults import ACTIONS, FAULT_TYPES, corrupt_bytes, plan_faults
from .sources import DicomSource, NiftiSource, Rendered, chunk_bounds, load_source
from .tcp_sender import TcpSink, parse_tcp_address, read_key

__all__ = ["MANIFEST_VERSION", "stream"]

MANIFEST_VERSION = 1


# ----------------------------------------------------------------------------------------
# sinks
# ----------------------------------------------------------------------------------------


class _FolderSink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def deliver(self, name: str, content: bytes, limit: int, chunks: int,
                pause: Callable[[], bool], retry: bool = True) -> dict:
        """Write ``content[:limit]`` in chunks under ``name``; returns bytes written."""
        bounds = chunk_bounds(len(content), chunks)
        written = 0
        stopped = False
        # buffering=0: every write() is a system call, visible to a watcher at once
        with open(self.folder / name, "wb", buffering=0) as fh:
            for i in range(chunks):
                lo, hi = bounds[i], min(bounds[i + 1], limit)
                if hi > lo:
                    view = memoryview(content)[lo:hi]
                    while view:
                        n = fh.write(view)
                        written += n
                        view = view[n:]
                if hi >= limit or i == chunks - 1:
                    break
                if not pause():
                    stopped = True
                    break
        return {"bytes_written": written, "stopped": stopped}

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------
# the stream
# ----------------------------------------------------------------------------------------
@dataclass(order=True)
class _Event:
    time: float
    priority: int
    seq: int
    volume: int = field(compare=False)
    kind: str = field(compare=False)  # write, rewrite, copy, truncate, corrupt


class _Prefetcher:
    """Render output volumes ahead of time in a background thread (bounded)."""

    def __init__(self, render: Callable[[int], Rendered], order: list[int],
                 ahead: int = 3) -> None:
        self._render = render
        self._order = order
        self._ahead = max(2, int(ahead))
        self._ready: dict[int, Rendered] = {}
        self._error: BaseException | None = None
        self._done = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="simulator-render",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for v in self._order:
                with self._cond:
                    while len(self._ready) >= self._ahead and not self._done:
                        self._cond.wait()
                    if self._done:
                        return
                item = self._render(v)
                with self._cond:
                    self._ready[v] = item
                    self._cond.notify_all()
        except BaseException as err:  # handed to the consumer
            with self._cond:
                self._error = err
                self._cond.notify_all()

    def get(self, v: int) -> Rendered:
        with self._cond:
            while v not in self._ready:
                if self._error is not None:
                    raise self._error
                if not self._thread.is_alive() and v not in self._ready:
                    raise RuntimeError(f"volume {v} was not rendered.")  # pragma: no cover
                self._cond.wait(0.1)
            return self._ready[v]

    def release(self, v: int) -> None:
        with self._cond:
            self._ready.pop(v, None)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


def _copy_name(name: str) -> str:
    for ext in (".nii.gz", ".nii", ".dcm"):
        if name.endswith(ext):
            return name[: -len(ext)] + "_copy" + ext
    return name + "_copy"


def _seconds_after_midnight(epoch: float) -> float:
    now = _dt.datetime.fromtimestamp(epoch)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return (now - midnight).total_seconds()


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def stream(
    source: str | Path | NiftiSource | DicomSource,
    to: str | Path,
    tr: float | None = None,
    *,
    speed: float = 1.0,
    volumes: int | None = None,
    faults: Mapping[str, float | Sequence[int] | str] | None = None,
    fault_seed: int = 0,
    delay_seconds: float | None = None,
    truncate_fraction: float = 0.5,
    corrupt_mode: str = "random",
    duplicate_mode: str = "same",
    chunks: int = 4,
    chunk_pause: float | None = None,
    start_delay: float = 0.0,
    manifest: str | Path | None = None,
    stop_event: threading.Event | None = None,
    connect_timeout: float = 10.0,
    series: str | None = None,
    key: bytes | str | os.PathLike | None = None,
    ack_timeout: float = 5.0,
    log: Callable[[str], None] | None = None,
    first_volume: int = 1,
) -> dict:
    """Stream a run to a folder or a TCP receiver in real time, with optional faults.

    Parameters
    ----------
    source : str | pathlib.Path | NiftiSource | DicomSource
        4D NIfTI file, ``write_subject`` folder (``bold.nii.gz``) or DICOM series folder.
    to : str | pathlib.Path
        Output folder (created if needed) or ``"tcp://HOST:PORT"``.
    tr : float | None
        Repetition time in seconds (default: the source's; required if it has none).
    speed : float
        Time compression: volumes come every ``tr / speed`` real seconds.
    volumes : int | None
        Number of volumes (default: the source's); the source is looped if larger.
    faults : mapping | None
        Fault type -> rate in [0, 1) or 1-based volume numbers (see :func:`plan_faults`).
    fault_seed : int
        Seed of the fault draws and of the random bytes of corrupted volumes.
    delay_seconds : float | None
        Lateness of delayed volumes in scanner seconds (default ``2 * tr``).
    truncate_fraction : float
        Fraction in (0, 1) of the bytes written for a truncated volume.
    corrupt_mode : {"random", "header"}
        How corrupted volumes are damaged.
    duplicate_mode : {"same", "copy"}
        Duplicates rewrite the same file (``same``) or write ``<stem>_copy<ext>``.
    chunks : int
        Number of pieces each file (or frame) is written in.
    chunk_pause : float | None
        Real seconds between pieces (default ``min(0.05, 0.2 * interval / (chunks *
        files_per_volume))``).
    start_delay : float
        Real seconds before the first volume (not scaled by ``speed``).
    manifest : str | pathlib.Path | None
        Manifest path (default ``<to>/../stream_manifest.json``, or
        ``./stream_manifest.json`` for TCP).
    stop_event : threading.Event | None
        Set it (from another thread) to stop; the manifest then says ``interrupted``.
    connect_timeout : float
        Seconds to wait for a TCP receiver at each (re)connection.
    series : str | None
        TCP ``series`` field (default: ``sim-<source name>``).
    key : bytes | str | os.PathLike | None
        TCP: the session's secret key, or its key file (``rtfb run --key FILE``); ``None``
        for a receiver without key.
    ack_timeout : float
        TCP: seconds to wait for the receiver's outstanding acknowledgements before closing
        a connection (after a damaged frame, and at the end).
    log : callable | None
        Called with one line per event (e.g. ``print``).
    first_volume : int
        1-based number of the first volume played (default 1): a run picked up in the
        middle (e.g. to resume a session); earlier volumes get the action ``skipped``
        and the schedule starts with this one.

    Returns
    -------
    dict
        The manifest: ``version``, ``status`` (``completed``, ``interrupted`` or
        ``failed`` with ``error``), source and output description, ``tr``, ``speed``,
        ``interval``, ``n_volumes``, the fault settings and the resolved plan
        (``faults.volumes``), ``t0_unix``, ``timing`` (lateness of writes, ms),
        ``written`` (every file name written, in order) and ``volumes``: one record per
        volume with ``volume`` (1-based), ``index`` (0-based), ``source_volume``,
        ``action`` (written/dropped/duplicated/truncated/delayed/shuffled/corrupted),
        ``swapped_with``, ``planned_time`` (nominal ``start_delay + (volume-1) *
        interval``), ``valid`` (a complete, intact copy exists under the volume's regular
        name / was sent), ``names`` (its regular file names, ``null`` for TCP), and
        ``writes``: every write with ``kind`` (write/rewrite/copy/truncate/corrupt),
        ``file``, ``scheduled_time``, ``started``, ``finished``, ``lateness``, ``size``
        (full size), ``bytes_written``, ``complete`` and for TCP ``connection`` and
        ``resent``.

    Raises
    ------
    KeyboardInterrupt
        Re-raised after the manifest is written with status ``interrupted``.
    """
    log = log or (lambda _msg: None)
    src = source if isinstance(source, NiftiSource | DicomSource) else load_source(source)
    tcp = parse_tcp_address(str(to))
    if tcp is not None and src.kind != "nifti":
        raise ValueError("TCP output needs a NIfTI source (the frame carries a 3D array "
                         "and its affine); replay DICOM to a folder instead.")
    tr = src.tr if tr is None else float(tr)
    if tr is None or not np.isfinite(tr) or tr <= 0:
        raise ValueError(f"the source {src.path} has no repetition time; give tr (--tr).")
    speed = float(speed)
    if not np.isfinite(speed) or speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed!r}.")
    n_volumes = src.n_volumes if volumes is None else int(volumes)
    if n_volumes < 1:
        raise ValueError(f"volumes must be >= 1, got {n_volumes}.")
    chunks = int(chunks)
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}.")
    if not 0.0 < float(truncate_fraction) < 1.0:
        raise ValueError(f"truncate_fraction must lie in (0, 1), got {truncate_fraction!r}.")
    if corrupt_mode not in ("random", "header"):
        raise ValueError(f"corrupt_mode must be 'random' or 'header', got {corrupt_mode!r}.")
    if duplicate_mode not in ("same", "copy"):
        raise ValueError(f"duplicate_mode must be 'same' or 'copy', got {duplicate_mode!r}.")
    start_delay = float(start_delay)
    if not np.isfinite(start_delay) or start_delay < 0:
        raise ValueError(f"start_delay must be >= 0, got {start_delay!r}.")
    interval = tr / speed
    files_per_volume = 1 if tcp else getattr(src, "files_per_volume", 1)
    if chunk_pause is None:
        chunk_pause = min(0.05, 0.2 * interval / (chunks * files_per_volume))
    chunk_pause = float(chunk_pause)
    delay_seconds = 2.0 * tr if delay_seconds is None else float(delay_seconds)
    if delay_seconds < 0:
        raise ValueError(f"delay_seconds must be >= 0, got {delay_seconds!r}.")
    first_volume = int(first_volume)
    if not 1 <= first_volume <= n_volumes:
        raise ValueError(f"first_volume must lie in [1, {n_volumes}], got {first_volume}.")
    plan = plan_faults(n_volumes, faults, seed=fault_seed)
    fault_rng_seed = [int(fault_seed), 0x5EED]

    if manifest is None:
        manifest = (Path("stream_manifest.json") if tcp
                    else Path(to).resolve().parent / "stream_manifest.json")
    manifest = Path(manifest)
    series = series or f"sim-{Path(src.path).name.split('.')[0]}"

    # schedule: one or two events per volume
    events: list[_Event] = []
    seq = 0
    for v in range(first_volume, n_volumes + 1):
        nominal = start_delay + (v - first_volume) * interval
        fault, partner = plan.get(v, (None, None))
        todo: list[tuple[float, int, str]] = []
        if fault == "drop":
            pass
        elif fault == "duplicate":
            second = "rewrite" if duplicate_mode == "same" else "copy"
            todo = [(nominal, 0, "write"), (nominal + 0.5 * interval, 1, second)]
        elif fault == "truncate":
            todo = [(nominal, 0, "truncate")]
        elif fault == "corrupt":
            todo = [(nominal, 0, "corrupt")]
        elif fault == "delay":
            todo = [(nominal + delay_seconds / speed, 1, "write")]
        elif fault == "shuffle":
            todo = [(start_delay + (partner - first_volume) * interval, 0, "write")]
        else:
            todo = [(nominal, 0, "write")]
        for t, prio, kind in todo:
            events.append(_Event(t, prio, seq, v, kind))
            seq += 1
    heapq.heapify(events)
    remaining = {}
    for ev in events:
        remaining[ev.volume] = remaining.get(ev.volume, 0) + 1

    records = []
    for v in range(1, n_volumes + 1):
        fault, partner = plan.get(v, (None, None))
        skipped = v < first_volume
        records.append({
            "volume": v, "index": v - 1, "source_volume": (v - 1) % src.n_volumes + 1,
            "action": "skipped" if skipped else ACTIONS.get(fault, "written"),
            "swapped_with": partner,
            "planned_time": round(start_delay + (v - first_volume) * interval, 6),
            "valid": not skipped and fault in (None, "duplicate", "delay", "shuffle"),
            "names": None if tcp else src.names(v), "writes": [],
        })
    resolved = {kind: [v for v, (f, _) in plan.items() if f == kind] for kind in FAULT_TYPES}
    out_desc = (f"tcp://{tcp[0]}:{tcp[1]}" if tcp else str(Path(to).resolve()))
    doc = {
        "version": MANIFEST_VERSION,
        "status": "running",
        "source": str(Path(src.path).resolve()),
        "source_kind": src.kind if src.kind == "nifti" else
        ("dicom-mosaic" if src.mosaic else "dicom-slices"),
        "n_source_volumes": src.n_volumes,
        "files_per_volume": files_per_volume,
        "to": out_desc,
        "output": "tcp" if tcp else "folder",
        "tr": tr, "speed": speed, "interval": interval, "n_volumes": n_volumes,
        "start_delay": float(start_delay), "chunks": chunks, "chunk_pause": chunk_pause,
        "first_volume": first_volume,
        "faults": {
            "requested": {k: v for k, v in (faults or {}).items()},
            "seed": int(fault_seed), "delay_seconds": delay_seconds,
            "truncate_fraction": float(truncate_fraction), "corrupt_mode": corrupt_mode,
            "duplicate_mode": duplicate_mode, "volumes": resolved,
        },
        "times": "real seconds after t0 (time.perf_counter); t0_unix is t0 on the wall clock",
        "t0_unix": None,
        "timing": None,
        "written": [],
        "volumes": records,
    }

    def _json_faults(d):
        return {k: (list(v) if not np.isscalar(v) and not isinstance(v, str) else v)
                for k, v in d.items()}

    doc["faults"]["requested"] = _json_faults(doc["faults"]["requested"])

    if tcp:
        sink = TcpSink(tcp[0], tcp[1], connect_timeout, stop_event, log,
                        key=read_key(key))
    else:
        sink = _FolderSink(Path(to))
        if any(Path(to).iterdir()):
            log(f"warning: output folder {Path(to)} is not empty; files of the same "
                "names are overwritten")
    clock = TRClock(interval, start_delay=0.0, stop_event=stop_event)
    cache: dict[int, Rendered] = {}
    prefetch = None if tcp else _Prefetcher(
        lambda v: Rendered(files=src.render_files(v, tr)),
        list(dict.fromkeys(ev.volume for ev in sorted(events))))

    def _render(v: int) -> Rendered:
        if prefetch is not None:
            return prefetch.get(v)
        if v not in cache:
            acq = _seconds_after_midnight(doc["t0_unix"] + records[v - 1]["planned_time"])
            cache[v] = Rendered(frame=src.render_frame(v, tr, acq, series))
        return cache[v]

    def _release(v: int) -> None:
        if prefetch is not None:
            prefetch.release(v)
        cache.pop(v, None)

    status = "interrupted"
    try:
        if tcp and not sink.connect():
            if stop_event is not None and stop_event.is_set():
                raise _Stopped
            raise ConnectionError(f"no TCP receiver at {out_desc} after {connect_timeout} s.")
        if events:  # warm up (load the source, first files) before the clock starts
            if tcp:
                src.volume(0)
            else:
                prefetch.start()
                _render(events[0].volume)
        t0 = clock.start()
        doc["t0_unix"] = time.time() - (time.perf_counter() - t0)
        _write_json_atomic(manifest, doc)
        while events:
            ev = heapq.heappop(events)
            rendered = _render(ev.volume)  # before sleeping: not counted as lateness
            rec = records[ev.volume - 1]
            late = clock.sleep_until(t0 + ev.time, record=False)
            if late is None:
                raise _Stopped
            if tcp:
                items = [(None, rendered.frame)]
            else:
                items = list(rendered.files)
            for j, (name, content) in enumerate(items):
                last = j == len(items) - 1
                kind = ev.kind
                damage = None
                if kind == "corrupt" and last:
                    rng = np.random.default_rng([*fault_rng_seed, ev.volume])
                    if tcp:  # the frame is built for its connection, then damaged
                        def damage(frame, head, rng=rng):
                            return corrupt_bytes(frame, corrupt_mode, rng, "tcp", head)
                    else:
                        content = corrupt_bytes(content, corrupt_mode, rng, src.kind)
                if tcp:  # a fraction: the frame's size depends on the connection
                    limit = float(truncate_fraction) if kind == "truncate" else 1.0
                else:
                    limit = len(content)
                    if kind == "truncate" and last:
                        limit = max(1, int(len(content) * float(truncate_fraction)))
                if kind == "copy" and name is not None:
                    name = _copy_name(name)
                started = clock.elapsed()
                extra = {"damage": damage} if tcp else {}
                res = sink.deliver(name, content, limit, chunks,
                                   lambda: clock.sleep_for(chunk_pause),
                                   retry=kind not in ("truncate", "corrupt"), **extra)
                finished = clock.elapsed()
                size = res["size"] if tcp else len(content)
                write = {
                    "kind": kind if (last or kind in ("write", "rewrite", "copy")) else "write",
                    "file": name, "scheduled_time": round(ev.time, 6),
                    "started": round(started, 6), "finished": round(finished, 6),
                    "lateness": round(started - ev.time, 6) if j == 0 else None,
                    "size": size,
                    "bytes_written": res["bytes_written"],
                    "complete": res["bytes_written"] == size,
                }
                if tcp:
                    write.update(connection=res.get("connection"), seq=res.get("seq"),
                                 resent=res.get("resent"), ack=None)
                    if res.get("error"):
                        write["error"] = res["error"]
                        if kind == "write":  # a failed second send leaves the first valid
                            rec["valid"] = False
                rec["writes"].append(write)
                if name is not None:
                    doc["written"].append(name)
                log(f"vol {ev.volume:5d} {write['kind']:8s} {name or 'frame'} "
                    f"{res['bytes_written']}/{size} B at {started:8.3f} s "
                    f"(+{1e3 * (started - ev.time):6.2f} ms)")
                if res.get("stopped"):
                    raise _Stopped
            if tcp and ev.kind in ("truncate", "corrupt"):
                # the receiver cannot re-synchronise: collect the acknowledgements of the
                # frames before, then start a new connection
                sink.close(wait_acks=ack_timeout)
            remaining[ev.volume] -= 1
            if remaining[ev.volume] == 0:
                _release(ev.volume)
        status = "completed"
    except _Stopped:
        pass
    except Exception as err:
        status = "failed"
        doc["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        if prefetch is not None:
            prefetch.stop()
        if tcp:
            sink.close(wait_acks=ack_timeout if status == "completed" else 0.0)
            counts: dict[str, int] = {}
            for r in records:
                for w in r["writes"]:
                    if w.get("seq") is None:
                        continue
                    ack = sink.acks.get((w["connection"], w["seq"]))
                    w["ack"] = None if ack is None else ack["status"]
                    if w["complete"]:
                        name = "unacknowledged" if ack is None else ack["status"]
                        counts[name] = counts.get(name, 0) + 1
                r["acknowledged"] = any(w.get("ack") in ("accepted", "late")
                                        for w in r["writes"])
            doc["acknowledged"] = counts
            doc["bad_acks"] = sink.bad_acks
        else:
            sink.close()
        doc["status"] = status
        doc["timing"] = TimingReport.from_lateness(
            [w["lateness"] for r in records for w in r["writes"]
             if w["lateness"] is not None]).as_dict("ms")
        _write_json_atomic(manifest, doc)
    doc["manifest"] = str(manifest)
    return doc


class _Stopped(Exception):
    """Internal: a stop request ended the stream."""
