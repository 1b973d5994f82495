"""Volume lines of the session record, written once their feedback message is sent.

The processing thread hands a volume's line (``volumes.jsonl``) to :class:`VolumeLines`
just before it hands the feedback message to the publisher; the publisher's thread calls
:meth:`VolumeLines.sent` once the message is out, which stamps the real send time as
``published``, computes ``latency_ms`` (file complete -> sent), writes the line and asks
for an fsync in the background. Writing and fsyncing the record therefore stays off the
processing thread's latency path. Lines whose message is never reported sent (dropped, or
the publisher stopped) are written by :meth:`VolumeLines.flush` with the hand-off time. A
value the publisher withheld because it was sent after its deadline is recorded as such
(flag ``stale``, ``feedback`` null).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .timing import latency_origin

__all__ = ["VolumeLines"]


class VolumeLines:
    """Volume lines waiting for their message's send, and the recent send lag.

    Parameters
    ----------
    recorder : SessionRecorder
        Writes the lines (``write_volume``, ``request_sync``).
    on_latency : callable | None
        Called with each written line's ``latency_ms`` (the live status).
    on_withheld : callable | None
        Called (no argument) when a value was withheld at send time (the live status).

    Attributes
    ----------
    send_lag : float
        Recent delay between hand-off and send in seconds (a decaying maximum), which the
        processing thread subtracts from ``max_delay`` when it decides freshness.
    """

    def __init__(self, recorder, on_latency: Callable[[float | None], None] | None = None,
                 on_withheld: Callable[[], None] | None = None):
        self.recorder = recorder
        self.on_latency = on_latency
        self.on_withheld = on_withheld
        self.send_lag = 0.0
        self._pending: dict[int, dict] = {}
        self._lock = threading.Lock()

    def defer(self, index: int, entry: dict) -> None:
        """Keep ``entry`` until the message of volume ``index`` is reported sent."""
        with self._lock:
            self._pending[index] = entry

    def write_now(self, index: int, entry: dict) -> None:
        """Write ``entry`` at once (its message was not queued), forgetting any deferral."""
        with self._lock:
            self._pending.pop(index, None)
        self.write(entry, None)

    def sent(self, message: dict) -> None:
        """The feedback ``message`` was sent: write its volume's line with the send time."""
        with self._lock:
            entry = self._pending.pop(message.get("volume_index"), None)
        if entry is None:
            return
        flags = message.get("flags") or ()
        if "stale" in flags and "stale" not in entry["flags"]:  # withheld at send time
            entry["flags"].append("stale")
            entry["feedback"] = None
            if self.on_withheld is not None:
                self.on_withheld()
        sent = message.get("time_published")
        if isinstance(sent, (int, float)):  # hand-off -> send lag, decaying maximum
            lag = max(0.0, sent - entry["times"]["published"])
            self.send_lag = max(lag, 0.9 * self.send_lag)
        self.write(entry, sent)

    def write(self, entry: dict, published: float | None) -> None:
        """Write one volume line (``published``: the send time, if known)."""
        times = entry["times"]
        if published is not None:
            times["published"] = published
            origin = latency_origin(times)
            entry["latency_ms"] = None if origin is None else (published - origin) * 1e3
            if self.on_latency is not None:
                self.on_latency(entry["latency_ms"])
        self.recorder.write_volume(entry)
        self.recorder.request_sync()

    def flush(self, older_than: float | None = None) -> None:
        """Write the lines whose message was never reported sent (older than
        ``older_than`` seconds; all when None), with the hand-off time as ``published``.
        """
        with self._lock:
            limit = math.inf if older_than is None else time.time() - older_than
            late = [i for i, e in self._pending.items() if e["times"]["published"] <= limit]
            entries = [self._pending.pop(i) for i in sorted(late)]
        for entry in entries:
            self.write(entry, None)
