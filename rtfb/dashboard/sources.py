"""Feeds of the dashboard model: the ZeroMQ feedback stream and the session record.

- :class:`RecordFeed` reads what was appended to the record's JSON-lines files since its
  last call (``volumes.jsonl``: motion, latency and flags of each volume; ``events.jsonl``;
  and, for a recorded session or a late start, ``messages.jsonl``) plus ``session.json``
  and ``protocol.toml`` once they exist. It only reads files; the session writes them.
- :class:`LiveFeed` is one thread with a ZeroMQ SUB socket connected to the session's
  publisher (exactly like a display) that also polls the :class:`RecordFeed` a few times
  a second. Messages reach the page within milliseconds of publication; record lines
  follow at the next poll.
- :func:`replay_record` feeds a finished record, at once or paced by its TR.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from ..feedback.messages import MessageError
from ..feedback.signing import verify_message
from ..reporting import condition_colors
from .model import DashboardModel

__all__ = ["JsonlTail", "LiveFeed", "RecordFeed", "read_protocol_info", "replay_record"]

logger = logging.getLogger("rtfb.dashboard")


class JsonlTail:
    """The complete lines appended to a JSON-lines file since the previous :meth:`read`.

    A last line without its newline (being written, or cut by a crash) is left for the next
    call; lines that are not JSON objects are skipped.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._pos = 0

    def read(self) -> list[dict[str, Any]]:
        """New complete lines as dicts (empty when the file does not exist yet)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                if size < self._pos:  # truncated (a resumed record repairs its last line)
                    self._pos = 0
                fh.seek(self._pos)
                data = fh.read()
        except (FileNotFoundError, PermissionError):
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._pos += end + 1
        out = []
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_protocol_info(session_dir) -> dict[str, Any]:
    """What the page needs from ``session.json`` and ``protocol.toml`` (empty before).

    Returns
    -------
    dict
        ``session_id``, ``protocol_name``, ``tr``, ``n_expected``, ``shape``, ``metric``
        (the fed-back metric), ``roi``, ``fd_threshold``, ``target``, ``blocks``
        (condition, volumes, feedback), ``feedback`` (whether the participant sees
        feedback) and ``lock`` (the series lock, when the record has one).
    """
    from ..config import PreprocessConfig

    session_dir = Path(session_dir)
    try:
        session = json.loads((session_dir / "session.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    proto = _load_toml(session_dir / "protocol.toml")
    metric = proto.get("metric", {})
    feedback = proto.get("feedback")
    info = {
        "session_id": session.get("session_id"), "protocol_name": session.get("protocol_name"),
        "tr": session.get("tr"), "n_expected": session.get("n_expected"),
        "shape": session.get("shape"), "started": session.get("started"),
        "source": (session.get("source") or {}).get("kind"),
        "metric": metric.get("kind"),
        "roi": metric.get("roi") or metric.get("target") or metric.get("seed"),
        "fd_threshold": proto.get("preprocess", {}).get(
            "fd_threshold", PreprocessConfig.fd_threshold),
        "target": (feedback or {}).get("target"),
        "feedback": bool(proto.get("session", {}).get("participant_feedback", True)
                         and feedback is not None),
        "blocks": [{"condition": b.get("condition"), "volumes": b.get("volumes"),
                    "feedback": bool(b.get("feedback", True))}
                   for b in proto.get("blocks", [])],
    }
    info["colors"] = condition_colors(b["condition"] for b in info["blocks"])
    info["lock"] = _lock_info(session)
    return info


def _lock_info(session: dict[str, Any]) -> dict[str, Any]:
    """The series lock as the session recorded it: reference volume, geometry, TR."""
    import numpy as np

    lock: dict[str, Any] = {}
    if session.get("reference_index") is not None:
        lock["reference volume"] = session["reference_index"]
    affine = session.get("affine")
    try:
        affine = np.asarray(affine, dtype=float)
        if affine.shape == (4, 4):
            import nibabel as nib

            zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
            lock["voxel size (mm)"] = " x ".join(f"{z:.2f}" for z in zooms)
            lock["orientation"] = "".join(nib.aff2axcodes(affine))
    except (TypeError, ValueError):
        pass
    if session.get("max_delay") is not None:
        lock["stale after (s)"] = session["max_delay"]
    for key in ("series_lock", "series"):
        if isinstance(session.get(key), dict):
            lock.update(session[key])
    return lock


class RecordFeed:
    """Feeds the model with what was appended to a session record since the last poll.

    Parameters
    ----------
    session_dir : path
        The session folder (it may not exist yet: the session creates it).
    model : DashboardModel
        The model to feed.
    messages : bool
        Also read ``messages.jsonl`` (a recorded session, or to catch up with messages
        published before the subscriber connected; duplicates merge harmlessly).
    """

    def __init__(self, session_dir, model: DashboardModel, messages: bool = True):
        self.session_dir = Path(session_dir)
        self.model = model
        self._volumes = JsonlTail(self.session_dir / "volumes.jsonl")
        self._events = JsonlTail(self.session_dir / "events.jsonl")
        self._messages = JsonlTail(self.session_dir / "messages.jsonl") if messages else None
        self._info_mtime: float | None = None
        self._maps: set[str] = set()

    def poll(self) -> int:
        """Read and feed everything new; returns the number of lines read."""
        self._check_info()
        n = 0
        if self._messages is not None:
            for entry in self._messages.read():
                self.model.ingest_message(str(entry.get("topic")), entry.get("message") or {})
                n += 1
        for event in self._events.read():
            self.model.ingest_event(event)
            n += 1
        for entry in self._volumes.read():
            self.model.ingest_volume(entry)
            n += 1
        self._check_maps()
        return n

    def _check_info(self) -> None:
        path = self.session_dir / "session.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime != self._info_mtime:
            info = read_protocol_info(self.session_dir)
            if info:
                self._info_mtime = mtime
                self.model.set_info(**info)
                self.model.slices_changed()

    def _check_maps(self) -> None:
        folder = self.session_dir / "maps"
        try:
            names = {p.name for p in folder.glob("*.nii*")}
        except OSError:
            return
        if names - self._maps:
            self._maps = names
            self.model.slices_changed()


class LiveFeed:
    """Subscriber thread: ZeroMQ feedback stream + record polling, into the model.

    Parameters
    ----------
    address : str
        The session publisher's endpoint (``FeedbackPublisher.endpoint``).
    session_dir : path
        The session folder being recorded.
    model : DashboardModel
        The model to feed.
    poll_interval : float
        Seconds between record polls (also the longest wait for a message).
    key : bytes | None
        The session's feedback key: only messages signed with it are shown
        (:func:`rtfb.feedback.signing.verify_message`); ``None`` reads unsigned ones too.
    """

    def __init__(self, address: str, session_dir, model: DashboardModel,
                 poll_interval: float = 0.2, key: bytes | None = None):
        self.address = address
        self.key = key
        self.model = model
        self.record = RecordFeed(session_dir, model, messages=True)
        self.poll_interval = float(poll_interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.n_invalid = 0

    def start(self) -> LiveFeed:
        """Start the thread; returns ``self``."""
        self._thread = threading.Thread(target=self._run, name="rtfb-dashboard-feed",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Read what is left of the record, then stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if "[" in self.address:
            sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.SUBSCRIBE, b"")  # everything, like the displays
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_poll = 0.0
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(self.poll_interval * 1000)))
                if events.get(sock):
                    self._receive(sock)
                now = time.monotonic()
                if now >= next_poll:
                    self.record.poll()
                    next_poll = now + self.poll_interval
            self.record.poll()
        except Exception:  # pragma: no cover - the page shows no more updates
            logger.exception("dashboard feed failed")
        finally:
            sock.close(linger=0)
            ctx.term()

    def _receive(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                topic, message = verify_message(frames, self.key)
            except MessageError as err:
                self.n_invalid += 1
                logger.debug("dashboard: invalid message skipped: %s", err)
                continue
            self.model.ingest_message(topic, message)


def replay_record(session_dir, model: DashboardModel, speed: float = 0.0,
                  stop: threading.Event | None = None) -> None:
    """Feed a recorded session into the model (``rtfb dashboard SESSION_DIR``).

    Parameters
    ----------
    session_dir : path
        A session record.
    model : DashboardModel
        The model to feed.
    speed : float
        0 feeds everything at once; otherwise volumes follow each other every TR/speed
        seconds (with their messages and events), as they did in the session.
    stop : threading.Event | None
        Set to end a paced replay early.
    """
    feed = RecordFeed(session_dir, model, messages=True)
    if speed <= 0:
        feed.poll()
        model.mark_done()
        return
    feed._check_info()
    tr = float(model.snapshot()["info"].get("tr") or 2.0)
    messages = feed._messages.read()
    volumes = feed._volumes.read()
    events = feed._events.read()
    by_index: dict[int | None, list] = {}
    for entry in messages:
        msg = entry.get("message") or {}
        by_index.setdefault(msg.get("volume_index"), []).append(("m", entry))
    for event in events:
        by_index.setdefault(event.get("index"), []).append(("e", event))
    for entry in volumes:
        by_index.setdefault(entry.get("index"), []).append(("v", entry))
    stop = stop or threading.Event()
    for key in [None] + sorted(k for k in by_index if k is not None):
        for kind, item in by_index.get(key, []):
            if kind == "m":
                model.ingest_message(str(item.get("topic")), item.get("message") or {})
            elif kind == "e":
                model.ingest_event(item)
            else:
                model.ingest_volume(item)
        if key is not None and stop.wait(tr / speed):
            return
    feed._check_maps()
    model.mark_done()
