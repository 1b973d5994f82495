"""What the dashboard knows about a session, built from messages and the record only.

:class:`DashboardModel` merges, per volume index, the feedback message the displays receive
(value, metric values, block, target, baseline, FD, flags, real-time QA) with the session
record's line for that volume (six motion parameters, latency, every flag) and keeps the
record's events (missing, late, rejected, operator marks, ...). Every change is pushed to
the listeners (the web page's event streams) as a small *patch*; a new listener first gets a
*snapshot* of everything. The model never sees session state: it is fed by
:mod:`rtfb.dashboard.sources`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DashboardModel"]

#: record flags shown as events on the page (missing/late come from the record's events)
FLAG_EVENTS = ("stale", "rejected", "motion")
#: record event kinds shown on the page (``block`` changes are drawn as shading instead)
EVENT_KINDS = ("start", "resume", "end", "warning", "error", "missing", "late", "mark",
               "feedback_pause", "feedback_resume", "stop", "lock", "series", "stale", "display",
               "rejected", "spike", "motion")

Listener = Callable[[dict[str, Any]], None]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class DashboardModel:
    """Per-volume rows, events and session info, shared by the feeds and the web server.

    Parameters
    ----------
    mode : {"live", "review"}
        ``live`` while ``rtfb run`` runs the session (controls available); ``review`` for
        ``rtfb dashboard SESSION_DIR``.
    max_events : int
        Events kept (oldest dropped first).
    """

    def __init__(self, mode: str = "live", max_events: int = 5000):
        if mode not in ("live", "review"):
            raise ValueError(f"mode must be 'live' or 'review', got {mode!r}.")
        self.mode = mode
        self.max_events = max_events
        self._lock = threading.Lock()
        self._display: bool | None = None  # participant display connected (None: unknown)
        self._rows: dict[int, dict[str, Any]] = {}
        self._processed: set[int] = set()
        self._counts: dict[str, int] = {}
        self._events: list[dict[str, Any]] = []
        self._event_keys: set[tuple] = set()
        self._info: dict[str, Any] = {}
        self._listeners: list[Listener] = []
        self._last_index = -1
        self._latest_latency: float | None = None
        self._paused = False
        self._done = False
        self._slices_version = 0
        self.n_messages = 0

    # ------------------------------------------------------------------ listeners
    def subscribe(self, listener: Listener) -> tuple[dict[str, Any], Callable[[], None]]:
        """Register ``listener(patch)``; returns the current snapshot and an unsubscribe.

        The snapshot and the registration are atomic: the listener receives every change
        made after the snapshot, none before.
        """
        with self._lock:
            self._listeners.append(listener)
            snap = self._snapshot_locked()

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return snap, unsubscribe

    def _emit_locked(self, patch: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(patch)
            except Exception:  # a broken listener must not stop the feeds
                self._listeners.remove(listener)

    def close(self) -> None:
        """Tell every listener that the stream ends (``None`` patch)."""
        with self._lock:
            for listener in list(self._listeners):
                try:
                    listener(None)
                except Exception:
                    pass
            self._listeners.clear()

    # ------------------------------------------------------------------ inputs
    def set_info(self, **info: Any) -> None:
        """Merge session information (protocol, TR, series lock, ...); pushed as ``info``."""
        with self._lock:
            self._info.update(info)
            self._emit_locked({"type": "info", "info": dict(self._info)})

    def _row(self, index: int) -> dict[str, Any]:
        row = self._rows.get(index)
        if row is None:
            row = self._rows[index] = {"i": index}
        return row

    def ingest_message(self, topic: str, message: dict[str, Any]) -> None:
        """A feedback or status message as published (ZeroMQ or ``messages.jsonl``)."""
        if topic == "status":
            self._ingest_status(message)
            return
        if topic != "feedback":
            return
        index = message.get("volume_index")
        if not isinstance(index, int):
            return
        block = message.get("block") or {}
        display = message.get("display") or {}
        fields = {
            "value": _finite(message.get("value")), "raw": message.get("raw") or {},
            "block": block.get("condition"), "bi": block.get("index"),
            "bf": bool(block.get("feedback", False)), "target": _finite(message.get("target")),
            "baseline": _finite(message.get("baseline")), "fd": _finite(message.get("fd")),
            "flags": list(message.get("flags") or []), "state": display.get("state"),
            "qa": message.get("qa"), "tp": _finite(message.get("time_published")),
            "trx": _finite(message.get("time_received")),
        }
        with self._lock:
            self.n_messages += 1
            row = self._row(index)
            row.update(fields)
            self._processed.add(index)
            self._last_index = max(self._last_index, index)
            self._emit_locked({"type": "row", "row": dict(row), "status": self._status_locked()})
            qa = fields["qa"]
            if isinstance(qa, dict) and qa.get("spike"):
                z = _finite(qa.get("dvars_z"))
                self._add_event_locked({"kind": "spike", "index": index, "time": fields["tp"],
                                        "message": "DVARS spike" + (f" (z = {z:.1f})"
                                                                    if z is not None else "")})

    def _ingest_status(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        with self._lock:
            if event == "end":
                self._done = True
            if event == "start" and message.get("tr"):
                self._info.setdefault("tr", message.get("tr"))
            self._emit_locked({"type": "status", "status": self._status_locked()})

    def ingest_volume(self, entry: dict[str, Any]) -> None:
        """One line of the record's ``volumes.jsonl``."""
        index = entry.get("index")
        if not isinstance(index, int):
            return
        motion = entry.get("motion")
        block = entry.get("block") or {}
        fields = {
            "motion": motion if isinstance(motion, list) and len(motion) == 6 else None,
            "lat": _finite(entry.get("latency_ms")), "rflags": list(entry.get("flags") or []),
            "fv": _finite(entry.get("feedback_value")), "metrics": entry.get("metrics") or {},
            "censored": bool(entry.get("censored")), "fd": _finite(entry.get("fd")),
            "block": block.get("condition"), "bi": block.get("index"),
            "bf": bool(block.get("feedback", False)),
        }
        if "qa" in entry and entry["qa"] is not None:
            fields["qa"] = entry["qa"]
        with self._lock:
            row = self._row(index)
            row.update(fields)
            self._processed.add(index)
            self._last_index = max(self._last_index, index)
            if fields["lat"] is not None:
                self._latest_latency = fields["lat"]
            self._emit_locked({"type": "row", "row": dict(row), "status": self._status_locked()})
            for flag in FLAG_EVENTS:
                if flag in fields["rflags"]:
                    self._add_event_locked({"kind": flag, "index": index,
                                            "time": (entry.get("times") or {}).get("published"),
                                            "message": f"volume {index}: {flag}"})

    def ingest_event(self, event: dict[str, Any]) -> None:
        """One line of the record's ``events.jsonl``."""
        kind = event.get("kind")
        with self._lock:
            if kind == "end":
                self._done = True
            elif kind == "feedback_pause":
                self._paused = True
            elif kind == "feedback_resume":
                self._paused = False
            elif kind == "display" or event.get("code") == "display_lost":
                self._display = kind == "display"  # a participant display connected / left
            if kind in ("lock", "series") and isinstance(event.get("series"), dict):
                self._info["lock"] = event["series"]
                self._emit_locked({"type": "info", "info": dict(self._info)})
            if kind in EVENT_KINDS:
                self._add_event_locked({k: event.get(k) for k in ("kind", "index", "time",
                                                                   "message")})
            self._emit_locked({"type": "status", "status": self._status_locked()})

    def _add_event_locked(self, event: dict[str, Any]) -> None:
        key = (event.get("kind"), event.get("index"), event.get("message"))
        if key in self._event_keys:
            return
        self._event_keys.add(key)
        kind = str(event.get("kind"))
        self._counts[kind] = self._counts.get(kind, 0) + 1
        self._events.append(event)
        if len(self._events) > self.max_events:
            self._events.pop(0)
        self._emit_locked({"type": "event", "event": event})

    def slices_changed(self) -> None:
        """Tell the page that newer slices (mean EPI, change map) can be fetched."""
        with self._lock:
            self._slices_version += 1
            self._emit_locked({"type": "slices", "version": self._slices_version})

    def mark_done(self) -> None:
        """The session is over (end of the record, or the run finished)."""
        with self._lock:
            self._done = True
            self._emit_locked({"type": "status", "status": self._status_locked()})

    # ------------------------------------------------------------------ outputs
    def status(self) -> dict[str, Any]:
        """``GET /api/status``: processed, index, block, latency_ms, value, ... (JSON)."""
        with self._lock:
            return self._status_locked()

    def _status_locked(self) -> dict[str, Any]:
        last = self._rows.get(self._last_index, {})
        count = self._counts.get
        return {
            "session_id": self._info.get("session_id"), "mode": self.mode,
            "processed": len(self._processed), "index": self._last_index if self._rows else None,
            "n_expected": self._info.get("n_expected"), "block": last.get("block"),
            "latency_ms": last.get("lat", self._latest_latency),
            "value": last.get("value"), "fd": last.get("fd"),
            "flags": sorted(set(last.get("flags", [])) | set(last.get("rflags", []))),
            "paused": self._paused, "done": self._done, "display": self._display,
            "missing": count("missing", 0), "late": count("late", 0),
            "spikes": count("spike", 0), "marks": count("mark", 0),
            "messages": self.n_messages,
            "time": time.time(),
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything: info, rows (by index), events and status."""
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> dict[str, Any]:
        return {"type": "snapshot", "info": dict(self._info),
                "rows": [dict(self._rows[i]) for i in sorted(self._rows)],
                "events": list(self._events), "status": self._status_locked(),
                "slices": self._slices_version}
