"""Publisher -> headless display over TCP: round trip, late joiners, restarts."""

import time

import pytest
import zmq

from rtfb._utils.keys import write_key
from rtfb.display.cli import display_main
from rtfb.display.headless import HeadlessDisplay
from rtfb.feedback.publisher import FeedbackPublisher
from rtfb.feedback.wire import encode

from ..feedback._factories import REGULATE, SESSION, feedback, status

pytestmark = pytest.mark.timeout(60)  # a hang fails fast, not after 10 min


@pytest.fixture
def pub():
    publisher = FeedbackPublisher("tcp://127.0.0.1:0", SESSION, linger=0.2).start()
    yield publisher
    publisher.stop()


def eventually(condition, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def publish_run(pub, values, start=0):
    for i, v in enumerate(values, start):
        pub.publish(b"feedback", feedback(i, v))


def test_round_trip(pub):
    with HeadlessDisplay(pub.endpoint, timeout=10) as display:
        # the display may connect after the first messages: the late-join copy covers that
        pub.publish(b"status", status("start", block=REGULATE))
        values = [None, None, 0.2, 0.4, 0.6, 0.8, 0.55]
        publish_run(pub, values)
        snap = display.wait_for(lambda s: s.volume_index == len(values) - 1)
        assert snap.mode == "feedback" and snap.level == 0.55 and snap.cue == "Lower the bar"
        received = display.messages
        indices = [r.message["volume_index"] for r in received if r.topic == "feedback"]
        # in order, without gaps from the first one received; a late-join copy of the last
        # message sent before the subscription was seen may repeat it
        unique = [i for k, i in enumerate(indices) if k == 0 or i != indices[k - 1]]
        assert unique == list(range(indices[0], len(values))), indices
        for r in received:
            assert 0 <= r.time - r.message["time_published"] < 30.0  # order; loose bound
        levels = [s.level for s in display.snapshots if s.mode == "feedback"]
        assert levels[-1] == 0.55
        assert display.state.tr == 2.0


def test_late_joiner_gets_current_state_immediately(pub):
    pub.publish(b"status", status("start", tr=1.5))
    publish_run(pub, [0.1, 0.2, 0.3, 0.42])
    time.sleep(0.1)  # all sent before the display exists
    # nothing new is published: the state can only come from the publisher's re-send
    with HeadlessDisplay(pub.endpoint) as display:
        snap = display.wait_for(lambda s: s.volume_index == 3, timeout=30)
        assert snap is not None
        assert snap.mode == "feedback" and snap.level == 0.42
        topics = [r.topic for r in display.messages]
        assert topics == ["status", "feedback"]  # in the order first sent
        assert display.state.effective_timeout == pytest.approx(4.5)
    assert eventually(lambda: pub.stats["resent"] >= 2)


def test_late_joiner_after_end_sees_end(pub):
    publish_run(pub, [0.3, 0.5])
    pub.publish(b"status", status("end", message="done"))
    time.sleep(0.05)
    with HeadlessDisplay(pub.endpoint) as display:
        snap = display.wait_for(lambda s: s.mode == "end", timeout=3)
        assert snap.volume_index == 1


def test_display_restart_does_not_disturb_publisher(pub):
    pub.publish(b"status", status("start"))
    first = HeadlessDisplay(pub.endpoint, timeout=10).start()
    publish_run(pub, [0.1, 0.2])
    first.wait_for(lambda s: s.volume_index == 1)
    first.stop()  # the display dies
    t0 = time.perf_counter()
    publish_run(pub, [0.3, 0.4, 0.5], start=2)  # published while nobody listens
    assert time.perf_counter() - t0 < 0.5
    time.sleep(0.05)
    with HeadlessDisplay(pub.endpoint, timeout=10) as second:  # restarted display
        snap = second.wait_for(lambda s: s.volume_index == 4, timeout=3)
        assert snap.level == 0.5
        publish_run(pub, [0.6], start=5)
        assert second.wait_for(lambda s: s.volume_index == 5).level == 0.6
    assert eventually(lambda: pub.stats["sent"] == 7)  # counted just after each send
    assert pub.running and pub.stats["dropped"] == 0


def test_second_display_joining_does_not_disturb_the_first(pub):
    pub.publish(b"status", status("start"))
    with HeadlessDisplay(pub.endpoint, timeout=10) as first:
        publish_run(pub, [0.1, 0.7])
        first.wait_for(lambda s: s.volume_index == 1)
        n_before = len(first.snapshots)
        with HeadlessDisplay(pub.endpoint, timeout=10) as second:
            second.wait_for(lambda s: s.volume_index == 1)
            first.wait_for_message(lambda r: r.topic == "feedback"
                                   and r.message["volume_index"] == 1
                                   and first.state.n_ignored >= 1, timeout=3)
        assert first.state.n_ignored >= 1  # the copies were recognised...
        snaps = first.snapshots
        assert len(snaps) == n_before, (snaps[n_before - 2:], first.messages)  # no change


def test_headless_timeout_reports_signal_lost(pub):
    with HeadlessDisplay(pub.endpoint, timeout=0.3) as display:
        pub.publish(b"feedback", feedback(0, 0.5))
        display.wait_for(lambda s: s.mode == "feedback")
        snap = display.wait_for(lambda s: s.mode == "signal_lost", timeout=3)
        assert snap.volume_index == 0
        pub.publish(b"feedback", feedback(1, 0.6))
        display.wait_for(lambda s: s.mode == "feedback" and s.volume_index == 1)
        modes = [s.mode for s in display.snapshots]
        assert modes[-3:] == ["feedback", "signal_lost", "feedback"]


def test_invalid_messages_are_skipped():
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    try:
        with HeadlessDisplay(f"tcp://127.0.0.1:{port}", timeout=10) as display:
            good = encode(b"feedback", feedback(3, 0.3))
            deadline = time.monotonic() + 5
            while not display.messages and time.monotonic() < deadline:  # slow joiner
                raw.send_multipart([b"feedback", b"{broken"])
                raw.send_multipart(good)
                time.sleep(0.02)
            display.wait_for(lambda s: s.volume_index == 3)
            assert display.n_invalid >= 1
            assert all(r.message["volume_index"] == 3 for r in display.messages)
    finally:
        raw.close(linger=0)
        ctx.term()


def test_wait_for_times_out(pub):
    with HeadlessDisplay(pub.endpoint) as display:
        with pytest.raises(TimeoutError, match="not reached"):
            display.wait_for(lambda s: s.mode == "end", timeout=0.1)
        with pytest.raises(TimeoutError):
            display.wait_for_message(lambda r: True, timeout=0.1)
    with pytest.raises(ValueError):
        HeadlessDisplay("127.0.0.1:5556")
    with pytest.raises(zmq.ZMQError):
        HeadlessDisplay("tcp://127.0.0.1:port").start()


def test_display_main_headless(tmp_path, capsys):
    key_file = tmp_path / "session.key"
    key = write_key(key_file)
    with FeedbackPublisher("tcp://127.0.0.1:0", SESSION, linger=0.2, key=key) as pub:
        pub.publish(b"status", status("start"))
        publish_run(pub, [0.25])
        pub.publish(b"status", status("end"))
        code = display_main(["--headless", "--address", pub.endpoint, "--duration", "3",
                             "--exit-on-end", "--key", str(key_file)])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[1] == "waiting"
    assert out[-1].split()[1] == "end"


def test_display_main_arguments(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        display_main(["--duration", "-1", "--headless"])
    monkeypatch.setitem(__import__("sys").modules, "psychopy", None)  # not installed
    assert display_main(["--duration", "0.1"]) == 2
    assert 'pip install "rtfb[display]"' in capsys.readouterr().err
