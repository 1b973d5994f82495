"""TR clock: absolute schedule, no accumulated error, stoppable, jitter report.

Schedules are checked in virtual time (exact on a busy machine); the few wall-clock checks
are loose bounds (2 shared cores, other jobs running).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from simulator.clock import TimingReport, TRClock, run_ticks

N_TICKS = 50
INTERVAL = 0.010


class _VirtualTime:
    """A clock that only moves when someone sleeps or works: timing checks become exact."""

    def __init__(self):
        self.now = 0.0

    def timer(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(float(seconds), 1e-6)


def _virtual_run(monkeypatch, work):
    """Run N_TICKS ticks in virtual time; ``work(k)`` is the seconds tick k works.

    Returns the clock and how late each tick fired after its target (s).
    """
    vt = _VirtualTime()
    monkeypatch.setattr("simulator.clock.time.sleep", vt.sleep)
    clock = TRClock(INTERVAL, timer=vt.timer)
    clock.start()
    fired = []
    for k in clock.ticks(N_TICKS):
        fired.append(vt.now - clock.t0)
        vt.sleep(work(k))
    return clock, np.array(fired) - np.arange(N_TICKS) * INTERVAL


def test_slow_callback_does_not_accumulate(monkeypatch):
    # each callback "works" 6 ms of a 10 ms interval. A naive "sleep(interval) after the
    # work" loop would drift by 6 ms per tick (last tick at 49 * 16 ms); the absolute
    # schedule fires every tick at its own target.
    clock, late = _virtual_run(monkeypatch, lambda k: 0.006)
    assert late.size == N_TICKS
    assert (late >= 0).all()  # never early
    assert (late < clock.spin + 1e-5).all()  # no accumulated delay


def test_late_tick_is_caught_up(monkeypatch):
    # one 45 ms hiccup at tick 5 (4.5 intervals); the next ticks fire at once, back to
    # back, until the schedule is met again, then on time
    clock, late = _virtual_run(monkeypatch, lambda k: 0.045 if k == 5 else 0.0001)
    assert (late >= 0).all()
    assert late[6] > 0.02  # late right after the hiccup
    assert (np.diff(late[6:11]) < 0).all()  # catching up: each tick less late
    assert (late[20:] < clock.spin + 1e-5).all()  # on schedule again
    report = clock.report()
    assert report.n == N_TICKS
    assert report.max > 0.02


def test_targets_are_absolute():
    clock = TRClock(0.5, start_delay=1.0)
    t0 = clock.start(t0=100.0)
    assert t0 == 100.0
    assert clock.target(0) == 100.0
    assert clock.target(7) == pytest.approx(103.5)
    assert clock.target(10_000) == pytest.approx(100.0 + 5000.0)  # no summed floats


def test_start_delay():
    clock = TRClock(0.01, start_delay=0.05)
    before = time.perf_counter()
    clock.start()
    assert clock.wait(0) is not None
    assert time.perf_counter() - before >= 0.05 - 1e-4


def test_run_ticks_report():
    calls = []
    report = run_ticks(calls.append, 10, 0.005)
    assert calls == list(range(10))
    assert isinstance(report, TimingReport)
    assert report.n == 10
    assert report.min >= -1e-4
    d = report.as_dict("ms")
    assert d["unit"] == "ms" and d["n"] == 10
    assert d["max"] == pytest.approx(report.max * 1e3, abs=1e-3)
    assert "ticks" in str(report)


def test_empty_report():
    report = TimingReport.from_lateness([])
    assert report.n == 0
    assert report.as_dict()["median"] is None
    with pytest.raises(ValueError, match="unit"):
        report.as_dict("us")


def test_stop_event_interrupts_a_long_wait():
    stop = threading.Event()
    clock = TRClock(5.0, stop_event=stop)
    clock.start()
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    t = time.perf_counter()
    ticks = list(clock.ticks(3))
    assert ticks == [0]  # tick 0 is due at once; tick 1 (5 s later) never comes
    assert time.perf_counter() - t < 2.0
    assert clock.sleep_until(time.perf_counter() + 10) is None
    timer.join()


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf")])
def test_bad_interval(interval):
    with pytest.raises(ValueError, match="interval"):
        TRClock(interval)


def test_bad_start_delay():
    with pytest.raises(ValueError, match="start_delay"):
        TRClock(1.0, start_delay=-1)
