"""FeedbackPublisher: binding rules, never blocking, on_sent, errors."""

import json
import threading
import time

import numpy as np
import pytest
import zmq

from rtfb.feedback.messages import MessageError
from rtfb.feedback.publisher import FeedbackPublisher, check_bind_address
from rtfb.feedback.wire import decode

from ._factories import SESSION, feedback, status

pytestmark = pytest.mark.timeout(60)  # a hang fails fast, not after 10 min

ANY_PORT = "tcp://127.0.0.1:0"


@pytest.mark.parametrize("address, expected", [
    ("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5556"),
    ("tcp://127.0.0.1:0", "tcp://127.0.0.1:*"),
    ("tcp://127.0.0.2:*", "tcp://127.0.0.2:*"),
    ("tcp://localhost:6000", "tcp://localhost:6000"),
    ("tcp://[::1]:6000", "tcp://[::1]:6000"),
    ("ipc:///tmp/rtfb-feedback", "ipc:///tmp/rtfb-feedback"),
    ("inproc://feedback", "inproc://feedback"),
])
def test_loopback_addresses_accepted(address, expected):
    assert check_bind_address(address) == expected


@pytest.mark.parametrize("address", ["tcp://*:5556", "tcp://0.0.0.0:5556",
                                     "tcp://192.168.1.20:5556", "tcp://eth0:5556",
                                     "tcp://[::]:5556"])
def test_remote_binds_refused_unless_allowed(address):
    with pytest.raises(ValueError, match="allow_remote"):
        check_bind_address(address)
    with pytest.raises(ValueError, match="allow_remote"):
        FeedbackPublisher(address)
    assert check_bind_address(address, allow_remote=True) == address


@pytest.mark.parametrize("address", ["127.0.0.1:5556", "udp://127.0.0.1:1",
                                     "tcp://127.0.0.1", "tcp://127.0.0.1:99999", 5556])
def test_malformed_addresses(address):
    with pytest.raises((ValueError, TypeError)):
        check_bind_address(address)


def test_port_zero_exposes_endpoint_and_bind_errors_surface():
    with FeedbackPublisher(ANY_PORT, SESSION) as pub:
        endpoint = pub.last_endpoint
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
        assert pub.running
        other = FeedbackPublisher(endpoint, SESSION)
        with pytest.raises(zmq.ZMQError):
            other.start()
        assert not other.running
    assert not pub.running
    with pytest.raises(RuntimeError, match="not started"):
        _ = FeedbackPublisher(ANY_PORT).endpoint


def test_never_blocks_without_subscriber():
    # counts and order, no wall-clock bound: every publish() returns True (queued, never
    # refused), the loop ends (a blocking publish would hang it: the thread join bounds
    # that generously), and every message is either sent or counted as dropped
    pub = FeedbackPublisher(ANY_PORT, SESSION, linger=0.2).start()
    msgs = [feedback(i, (i % 10) / 10) for i in range(3000)]
    results = []
    loop = threading.Thread(target=lambda: results.extend(pub.publish(b"feedback", m)
                                                          for m in msgs))
    loop.start()
    loop.join(30.0)
    assert not loop.is_alive(), "publish() blocked without a subscriber"
    assert results == [True] * 3000
    stopper = threading.Thread(target=pub.stop)
    stopper.start()
    stopper.join(30.0)
    assert not stopper.is_alive() and not pub.running
    assert pub.stats["published"] == 3000
    assert pub.stats["sent"] + pub.stats["dropped"] == 3000


def test_stalled_subscriber_does_not_block_publisher_or_stop():
    pub = FeedbackPublisher(ANY_PORT, SESSION, sndhwm=10, linger=0.2).start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 10)
    sub.connect(pub.endpoint)
    sub.subscribe(b"")
    try:
        pub.publish(b"status", status("start"))
        assert sub.poll(5000)  # connected and subscribed; from now on it never reads
        big = feedback(0, 0.5, raw={f"m{i}": float(i) for i in range(500)})  # ~10 kB
        t0 = time.perf_counter()
        for _ in range(2000):
            pub.publish(b"feedback", big)
        assert time.perf_counter() - t0 < 3.0
        t1 = time.perf_counter()
        pub.stop()
        assert time.perf_counter() - t1 < 2.5
        assert not pub.running
    finally:
        sub.close(linger=0)
        ctx.term()


def test_on_sent_reports_every_message_in_order():
    sent = []
    done = threading.Event()

    def on_sent(topic, message):
        sent.append((topic, message))
        if len(sent) == 6:
            done.set()

    with FeedbackPublisher(ANY_PORT, SESSION, on_sent=on_sent) as pub:
        pub.publish(b"status", status("start"))
        for i in range(4):
            pub.publish("feedback", feedback(i, 0.1 * i))
        pub.publish(b"status", status("end"))
        assert done.wait(5)
    assert [t for t, _ in sent] == ["status"] + ["feedback"] * 4 + ["status"]
    assert [m["volume_index"] for t, m in sent if t == "feedback"] == [0, 1, 2, 3]
    stamps = [m["time_published"] for _, m in sent]
    assert all(isinstance(s, float) for s in stamps)
    assert all(np.diff(stamps) > 0)  # strictly increasing
    for topic, m in sent:  # exactly what went on the wire: valid and JSON-compatible
        decode([topic.encode(), json.dumps(m).encode()])


def test_time_published_increases_when_the_clock_steps_back():
    sent = []
    fake = iter([100.0, 50.0, 50.0, 200.0])
    pub = FeedbackPublisher(ANY_PORT, SESSION, on_sent=lambda t, m: sent.append(m))
    pub._clock = lambda: next(fake)
    with pub:
        for i in range(4):
            pub.publish(b"feedback", feedback(i, 0.5, time_received=1.0))
        deadline = time.monotonic() + 5
        while len(sent) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    stamps = [m["time_published"] for m in sent]
    assert stamps == pytest.approx([100.0, 100.000001, 100.000002, 200.0], abs=1e-7)


def test_on_sent_errors_are_contained():
    def boom(topic, message):
        raise RuntimeError("recorder failed")

    with FeedbackPublisher(ANY_PORT, SESSION, on_sent=boom) as pub:
        pub.publish(b"feedback", feedback(0))
        pub.publish(b"feedback", feedback(1))
        deadline = time.monotonic() + 5
        while pub.stats["callback_errors"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.running
    assert pub.stats["callback_errors"] == 2 and pub.stats["sent"] == 2


def test_publish_checks():
    pub = FeedbackPublisher(ANY_PORT, SESSION)
    with pytest.raises(RuntimeError, match="not running"):
        pub.publish(b"feedback", feedback(0))
    with pub:
        with pytest.raises(MessageError, match="session"):
            pub.publish(b"feedback", feedback(0, session="another"))
        with pytest.raises(MessageError, match="topic"):
            pub.publish(b"status", feedback(0))
        with pytest.raises(MessageError):
            pub.publish(b"feedback", {"type": "feedback"})
        assert pub.publish(b"feedback", feedback(0).to_dict())
    with pytest.raises(RuntimeError, match="not running"):
        pub.publish(b"feedback", feedback(0))
    pub.stop()  # idempotent
    assert len(FeedbackPublisher(ANY_PORT).session_id) == 32
    with pytest.raises(RuntimeError, match="already"):
        pub.start()


def test_dict_messages_as_the_session_builds_them():
    """Plain dicts (NaN raw values, numpy numbers, no target) are validated and re-stamped."""
    sent = []
    msg = {"schema_version": "1.0", "type": "feedback", "session_id": SESSION,
           "volume_index": np.int64(12), "acquisition_time": None, "time_received": 5.0,
           "time_published": 6.0, "value": None, "raw": {"alff": np.float32(np.nan)},
           "block": {"index": 0, "condition": "baseline", "cue": "", "feedback": False},
           "fd": np.float64(0.2), "flags": ["warmup", "no_feedback"], "target": None,
           "display": {"show_bar": False, "state": "rest"}}
    with FeedbackPublisher(ANY_PORT, SESSION, on_sent=lambda t, m: sent.append(m)) as pub:
        assert pub.publish("feedback", msg)
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)
    (out,) = sent
    assert out["raw"] == {"alff": None} and out["target"] is None and out["fd"] == 0.2
    assert out["volume_index"] == 12 and out["time_published"] > 6.0  # stamped when sent


def test_wait_for_subscriptions_counts_subscribers():
    # rtfb run --simulate --wait-display: the simulated scanner starts once a display is in
    pub = FeedbackPublisher(ANY_PORT, SESSION, linger=0.2).start()
    ctx = zmq.Context()
    subs = []
    try:
        assert not pub.wait_for_subscriptions(1, timeout=0.05)  # nobody yet
        for _ in range(2):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.subscribe(b"")
            sub.connect(pub.endpoint)
            subs.append(sub)
            assert pub.wait_for_subscriptions(len(subs), timeout=30)
        assert pub.stats["subscriptions"] == 2
        assert not pub.wait_for_subscriptions(3, timeout=0.05)
    finally:
        for sub in subs:
            sub.close()
        ctx.term()
        pub.stop()


def test_value_sent_after_its_deadline_is_withheld():
    # the freshness rule applied at the last moment: a message that leaves the publisher
    # after its deadline carries no value and the flag "stale", and on_sent sees it so
    sent = []
    pub = FeedbackPublisher(ANY_PORT, SESSION, linger=0.2,
                            on_sent=lambda t, m: sent.append(m)).start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.subscribe(b"feedback")
    sub.connect(pub.endpoint)
    try:
        assert pub.wait_for_subscriptions(1, timeout=30)
        now = time.time()
        assert pub.publish(b"feedback", feedback(0, 0.7), deadline=now - 1.0)  # too late
        assert pub.publish(b"feedback", feedback(1, 0.8), deadline=now + 3600.0)  # in time
        assert pub.publish(b"feedback", feedback(2, 0.9))  # no deadline
        got = {}
        while len(got) < 3 and sub.poll(30_000):
            _, msg = decode(sub.recv_multipart())
            got[msg["volume_index"]] = msg
    finally:
        sub.close()
        ctx.term()
        pub.stop()
    assert got[0]["value"] is None and "stale" in got[0]["flags"]
    assert got[1]["value"] == 0.8 and "stale" not in got[1]["flags"]
    assert got[2]["value"] == 0.9
    assert pub.stats["withheld"] == 1
    assert [m["value"] for m in sent] == [None, 0.8, 0.9]


def test_participant_displays_are_told_apart_from_other_subscribers():
    # displays subscribe to TOPIC_DISPLAY too (connect_subscriber); the dashboard and other
    # subscribers do not: the session knows whether the participant can see anything
    from rtfb.display.headless import connect_subscriber

    changes = []
    pub = FeedbackPublisher(ANY_PORT, SESSION, linger=0.2, on_display=changes.append).start()
    ctx = zmq.Context()
    try:
        other = ctx.socket(zmq.SUB)  # e.g. the dashboard: everything, but not as a display
        other.setsockopt(zmq.LINGER, 0)
        other.subscribe(b"")
        other.connect(pub.endpoint)
        assert pub.wait_for_subscriptions(1, timeout=30)
        assert not pub.wait_for_displays(1, timeout=0.2) and not pub.display_connected
        first = connect_subscriber(ctx, pub.endpoint)
        second = connect_subscriber(ctx, pub.endpoint)
        assert pub.wait_for_displays(2, timeout=30)
        assert pub.display_connected and changes == [True]
        first.close()  # one display left: still connected
        second.close()  # the last one left
        deadline = time.monotonic() + 30
        while pub.display_connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pub.display_connected and changes == [True, False]
        assert pub.stats["displays"] == 2
        other.close()
    finally:
        ctx.term()
        pub.stop()
