"""VolumeOrderer: order, gaps -> Missing, Late, duplicates, bounds (deterministic clock)."""

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtfb.ingest.ordering import (
    ACCEPTED,
    DUPLICATE,
    LATE,
    OUT_OF_RANGE,
    Late,
    Missing,
    VolumeOrderer,
)


@dataclass(frozen=True)
class Item:  # anything with an index will do; real use passes Volume
    index: int
    tag: str = ""


def indices(out):
    """Compact view: 5 for a volume, 'm5' for Missing, 'l5' for Late."""
    view = []
    for item in out:
        if isinstance(item, Missing):
            view.append(f"m{item.index}")
        elif isinstance(item, Late):
            view.append(f"l{item.index}")
        else:
            view.append(item.index)
    return view


def test_in_order_passes_through():
    o = VolumeOrderer(1.0)
    for i in range(3):
        assert o.add(Item(i), now=i) == ACCEPTED
        assert indices(o.poll(i)) == [i]
    assert o.next_index == 3 and o.n_pending == 0 and o.next_deadline() is None


def test_out_of_order_released_in_order():
    o = VolumeOrderer(1.0)
    for i in (2, 1):
        assert o.add(Item(i), now=0.0) == ACCEPTED
    assert o.poll(0.1) == [] and o.n_pending == 2
    o.add(Item(0), now=0.2)
    assert indices(o.poll(0.2)) == [0, 1, 2]


def test_gap_reported_missing_after_timeout_then_late():
    o = VolumeOrderer(1.0)
    o.add(Item(0), 0.0)
    o.add(Item(3), 0.5)  # 1 and 2 missing, timer starts at 0.5
    assert o.next_deadline() == pytest.approx(1.5)
    assert indices(o.poll(1.4)) == [0]
    out = o.poll(1.5)
    assert indices(out) == ["m1", "m2", 3]
    assert "gap_timeout=1" in out[0].reason
    assert o.add(Item(2, "late"), 2.0) == LATE
    (late,) = o.poll(2.0)
    assert isinstance(late, Late) and late.index == 2 and late.volume.tag == "late"
    assert o.add(Item(2, "again"), 2.1) == DUPLICATE  # already delivered (late)
    assert o.add(Item(1), 2.2) == LATE  # still accepted late


def test_duplicates_of_delivered_and_waiting():
    o = VolumeOrderer(1.0)
    o.add(Item(0), 0)
    o.add(Item(2), 0)
    assert o.add(Item(0), 0) == DUPLICATE
    assert o.add(Item(2), 0) == DUPLICATE
    assert o.is_known(0) and o.is_known(2) and not o.is_known(1)
    assert indices(o.poll(0)) == [0]


def test_several_gaps_resolved_in_one_poll_and_timer_per_gap():
    o = VolumeOrderer(1.0)
    o.add(Item(2), 0.0)
    o.add(Item(5), 0.8)
    assert indices(o.poll(1.0)) == ["m0", "m1", 2]
    assert indices(o.poll(1.79)) == []  # gap 3-4 is timed from the arrival of 5
    o.add(Item(7), 1.79)
    assert indices(o.poll(5.0)) == ["m3", "m4", 5, "m6", 7]  # both overdue: one poll


def test_note_used_in_missing_reason():
    o = VolumeOrderer(0.5)
    o.note(1, "file run_00002.nii truncated")
    o.add(Item(0), 0)
    o.add(Item(2), 0)
    out = o.poll(1.0)
    assert "run_00002.nii truncated" in out[1].reason


def test_max_pending_forces_missing_and_max_ahead_refuses():
    o = VolumeOrderer(100.0, max_pending=3, max_ahead=10)
    for i in (1, 2, 3):
        o.add(Item(i), 0)
    assert o.poll(0) == []
    o.add(Item(4), 0)  # 4 waiting > max_pending: give up on 0 now
    out = o.poll(0)
    assert indices(out) == ["m0", 1, 2, 3, 4] and "max_pending" in out[0].reason
    assert o.add(Item(16), 0) == OUT_OF_RANGE
    assert o.add(Item(15), 0) == ACCEPTED


def test_first_index_none_starts_at_first_volume():
    o = VolumeOrderer(1.0, first_index=None)
    assert o.next_index is None
    o.add(Item(40), 0)
    assert indices(o.poll(0)) == [40]
    assert o.add(Item(39), 0) == DUPLICATE


def test_release_all_at_shutdown():
    o = VolumeOrderer(100.0)
    o.add(Item(1), 0)
    o.add(Item(4), 0)
    assert indices(o.release_all("stopped")) == ["m0", 1, "m2", "m3", 4]


@pytest.mark.parametrize("kwargs", [{"gap_timeout": 0}, {"gap_timeout": 1, "first_index": -1},
                                    {"gap_timeout": 1, "max_pending": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        VolumeOrderer(**kwargs)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_property_every_volume_once_in_order(data):
    """Random arrival order, drops and duplicates: each arrived index is delivered exactly
    once; in-order volumes strictly increase; each index is a volume or Missing (+ Late)."""
    n = data.draw(st.integers(1, 30))
    arrived = data.draw(st.lists(st.integers(0, n - 1), max_size=3 * n))
    times = sorted(data.draw(st.lists(st.floats(0, 10), min_size=len(arrived),
                                      max_size=len(arrived))))
    o = VolumeOrderer(1.0)
    out = []
    for i, t in zip(arrived, times, strict=True):
        o.add(Item(i), t)
        out += o.poll(t)
    out += o.release_all("end")
    volumes = [x.index for x in out if not isinstance(x, Missing | Late)]
    late = [x.index for x in out if isinstance(x, Late)]
    missing = [x.index for x in out if isinstance(x, Missing)]
    assert volumes == sorted(set(volumes))
    assert sorted(volumes + late) == sorted(set(arrived))
    assert set(late) <= set(missing)
    assert not set(volumes) & set(missing)
    top = max(arrived, default=-1)
    assert sorted(volumes + missing) == list(range(top + 1))
