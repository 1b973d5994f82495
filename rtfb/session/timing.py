"""Per-volume time stamps of a live session (epoch seconds) and the freshness rule.

Each processed volume's record has ``times``: ``seen`` (file first listed / first byte of
the frame), ``complete`` (file complete / frame fully received), ``read`` (reader returned),
``queued`` (handed to the processing thread), ``dequeued`` (taken by it), ``processed``
(metrics done) and ``published`` (feedback message handed to the publisher), and
``latency_ms = published - complete``. Sources that give no time stamps (a replay) leave
``seen``/``complete``/``read``/``queued`` at None and the latency counts from ``dequeued``.
"""

from __future__ import annotations

from typing import Any

#: acquisition-side stamps taken from :class:`~rtfb.ingest.VolumeTiming`
_SOURCE_STAMPS = ("seen", "complete", "read", "queued")


def source_times(source: Any, index: int, dequeued: float) -> dict:
    """The acquisition stamps of volume ``index`` (epoch s), plus ``dequeued``."""
    timing = None
    get = getattr(source, "timing", None)
    if callable(get):
        try:
            timing = get(index)
        except Exception:  # noqa: BLE001 - timing is informative, never fatal
            timing = None
    times = dict.fromkeys(_SOURCE_STAMPS)
    if timing is not None:
        for name in _SOURCE_STAMPS:
            times[name] = timing.wall(name)
    times["dequeued"] = dequeued
    return times


def latency_origin(times: dict) -> float | None:
    """``complete`` when known, else the earliest stamp the session has."""
    for name in ("complete", "read", "queued", "dequeued"):
        if times.get(name) is not None:
            return times[name]
    return None


def is_fresh(times: dict, now: float, max_delay: float) -> bool:
    """Whether a value published at ``now`` is within ``max_delay`` of its file being
    complete (a volume without time stamps is fresh).
    """
    origin = latency_origin(times)
    return origin is None or now - origin <= max_delay
