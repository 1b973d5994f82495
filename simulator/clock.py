"""Drift-corrected TR clock: the simulator's metronome.

Every tick ``k`` has an absolute target time ``t0 + k * interval`` on the monotonic
high-resolution clock (:func:`time.perf_counter`). The clock sleeps until that target, not
for ``interval`` after the previous tick, so sleep overshoot and slow work between ticks
never accumulate: a tick that is late is followed by ticks on schedule again (a late tick
is never skipped; the next ones simply wait less). The lateness of every tick
(``actual - target``, >= 0 up to scheduling noise) is kept and summarised by
:meth:`TRClock.report`.

Sleeps are cut into short pieces (``max_sleep``) so that a :class:`threading.Event` given as
``stop_event`` (or Ctrl-C in the main thread) stops the clock promptly; the last
``spin`` seconds before a target are spent in a yield loop for sub-millisecond precision
without burning a core.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["TRClock", "TimingReport", "run_ticks"]


@dataclass(frozen=True)
class TimingReport:
    """Lateness statistics of a clock's ticks (seconds; lateness = actual - target).

    Attributes
    ----------
    n : int
        Number of ticks (or events) measured.
    mean, std, median, p95, max, min : float
        Statistics of the lateness in seconds (``nan`` when ``n == 0``).
    """

    n: int
    mean: float
    std: float
    median: float
    p95: float
    max: float
    min: float

    @classmethod
    def from_lateness(cls, lateness) -> TimingReport:
        """Summarise a sequence of lateness values (seconds)."""
        x = np.asarray(list(lateness), dtype=float)
        if x.size == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(int(x.size), float(x.mean()), float(x.std()), float(np.median(x)),
                   float(np.percentile(x, 95)), float(x.max()), float(x.min()))

    def as_dict(self, unit: str = "ms") -> dict:
        """JSON-friendly dict, values in ``unit`` (``"ms"`` or ``"s"``), ``None`` for nan."""
        if unit not in ("ms", "s"):
            raise ValueError(f"unit must be 'ms' or 's', got {unit!r}.")
        scale = 1000.0 if unit == "ms" else 1.0
        out: dict = {"n": self.n, "unit": unit}
        for key, value in asdict(self).items():
            if key != "n":
                out[key] = None if not np.isfinite(value) else round(value * scale, 6)
        return out

    def __str__(self) -> str:
        if self.n == 0:
            return "no ticks"
        return (f"{self.n} ticks, lateness median {self.median * 1e3:.2f} ms, "
                f"p95 {self.p95 * 1e3:.2f} ms, max {self.max * 1e3:.2f} ms")


class TRClock:
    """Absolute-schedule clock: tick ``k`` is due at ``t0 + k * interval``.

    Parameters
    ----------
    interval : float
        Seconds between ticks (e.g. ``TR / speed``), > 0.
    start_delay : float
        Seconds between :meth:`start` and tick 0.
    stop_event : threading.Event | None
        When set, waiting returns at once (see :meth:`sleep_until`).
    timer : callable
        Monotonic clock in seconds (default :func:`time.perf_counter`).
    max_sleep : float
        Longest single sleep, so a stop request is seen within this delay.
    spin : float
        The last ``spin`` seconds before a target are waited with ``time.sleep(0)``
        (yields the CPU) instead of a timed sleep, for precision.
    """

    def __init__(self, interval: float, *, start_delay: float = 0.0,
                 stop_event: threading.Event | None = None,
                 timer: Callable[[], float] = time.perf_counter,
                 max_sleep: float = 0.05, spin: float = 2e-4) -> None:
        interval = float(interval)
        if not np.isfinite(interval) or interval <= 0:
            raise ValueError(f"interval must be a finite number > 0, got {interval!r}.")
        start_delay = float(start_delay)
        if not np.isfinite(start_delay) or start_delay < 0:
            raise ValueError(f"start_delay must be >= 0, got {start_delay!r}.")
        self.interval = interval
        self.start_delay = start_delay
        self.stop_event = stop_event
        self.timer = timer
        self.max_sleep = float(max_sleep)
        self.spin = float(spin)
        self.t0: float | None = None
        self.lateness: list[float] = []

    # -- schedule ----------------------------------------------------------------------
    def start(self, t0: float | None = None) -> float:
        """Fix the schedule origin (``timer() + start_delay`` unless ``t0`` is given)."""
        self.t0 = (self.timer() + self.start_delay) if t0 is None else float(t0)
        return self.t0

    def target(self, k: float) -> float:
        """Absolute time of tick ``k`` (starts the clock if needed)."""
        if self.t0 is None:
            self.start()
        return self.t0 + float(k) * self.interval

    def elapsed(self) -> float:
        """Seconds since ``t0`` (negative before tick 0)."""
        if self.t0 is None:
            self.start()
        return self.timer() - self.t0

    @property
    def stopped(self) -> bool:
        """Whether the stop event is set."""
        return self.stop_event is not None and self.stop_event.is_set()

    # -- waiting -----------------------------------------------------------------------
    def sleep_until(self, target: float, record: bool = True) -> float | None:
        """Sleep until the absolute time ``target`` (on ``timer``).

        Returns
        -------
        float | None
            Lateness ``timer() - target`` in seconds (recorded when ``record``), or
            ``None`` if the stop event was set before the target was reached.
        """
        while True:
            if self.stopped:
                return None
            remaining = target - self.timer()
            if remaining <= 0:
                break
            if remaining > self.spin:
                pause = min(remaining - self.spin, self.max_sleep)
                if self.stop_event is not None:
                    if self.stop_event.wait(pause):
                        return None
                else:
                    time.sleep(pause)
            else:
                time.sleep(0)
        late = self.timer() - target
        if record:
            self.lateness.append(late)
        return late

    def sleep_for(self, seconds: float) -> bool:
        """Sleep ``seconds`` (relative, not recorded); ``False`` if stopped meanwhile."""
        if seconds <= 0:
            return not self.stopped
        return self.sleep_until(self.timer() + seconds, record=False) is not None

    def wait(self, k: int) -> float | None:
        """Sleep until tick ``k``; lateness in seconds, or ``None`` if stopped."""
        return self.sleep_until(self.target(k))

    def ticks(self, n: int | None = None) -> Iterator[int]:
        """Yield ``0, 1, ...`` (``n`` ticks, or forever), each at its due time.

        Stops early when the stop event is set.
        """
        k = 0
        while n is None or k < n:
            if self.wait(k) is None:
                return
            yield k
            k += 1

    def report(self) -> TimingReport:
        """Lateness statistics of the ticks waited so far."""
        return TimingReport.from_lateness(self.lateness)


def run_ticks(callback: Callable[[int], object], n: int, interval: float,
              **kwargs) -> TimingReport:
    """Call ``callback(k)`` at ``t0 + k * interval`` for ``k = 0 .. n-1``.

    Parameters
    ----------
    callback : callable
        Called with the tick number; its duration does not shift later ticks.
    n : int
        Number of ticks.
    interval : float
        Seconds between ticks.
    **kwargs
        Passed to :class:`TRClock`.

    Returns
    -------
    TimingReport
        Lateness of the ticks.
    """
    clock = TRClock(interval, **kwargs)
    clock.start()
    for k in clock.ticks(n):
        callback(k)
    return clock.report()
