"""Signed feedback: only the session's publisher changes what the participant sees."""

import hashlib
import hmac
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from rtfb._utils.keys import ensure_key, load_key, write_key
from rtfb.display.headless import HeadlessDisplay
from rtfb.exceptions import AuthenticationError
from rtfb.feedback.publisher import FeedbackPublisher
from rtfb.feedback.signing import (
    MessageVerifier,
    SignatureError,
    default_key_path,
    sign_frames,
    verify_message,
)
from rtfb.feedback.wire import encode
from tests.session._protocols import free_port

from ._factories import SESSION, feedback, status

pytestmark = pytest.mark.timeout(120)

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_tag_is_hmac_sha256_of_topic_and_payload():
    frames = encode(b"feedback", feedback(3, 0.4))
    signed = sign_frames(frames, KEY)
    # independent oracle: the documented construction, computed here with hmac directly
    expected = hmac.new(KEY, b"rtfb feedback message v1\0" + len(frames[0]).to_bytes(4, "big")
                        + frames[0] + frames[1], hashlib.sha256).digest()
    assert signed[:2] == frames and signed[2] == expected
    topic, message = verify_message(signed, KEY)
    assert topic == "feedback" and message["volume_index"] == 3


@pytest.mark.parametrize("tamper", ["unsigned", "other_key", "payload", "topic", "tag", "extra"])
def test_forged_messages_refused(tamper):
    frames = sign_frames(encode(b"feedback", feedback(3, 0.4)), KEY)
    if tamper == "unsigned":
        frames = frames[:2]
    elif tamper == "other_key":
        frames = sign_frames(frames[:2], OTHER)
    elif tamper == "payload":
        frames[1] = frames[1].replace(b"0.4", b"0.9")
    elif tamper == "topic":
        frames = [b"status", frames[1], frames[2]]
    elif tamper == "tag":
        frames[2] = bytes(32)
    else:
        frames = frames + [b"x"]
    with pytest.raises(SignatureError):
        verify_message(frames, KEY)


def test_no_key_reads_signed_and_unsigned():
    frames = encode(b"status", status("start"))
    assert verify_message(frames, None)[0] == "status"
    assert verify_message(sign_frames(frames, KEY), None)[0] == "status"


def test_key_files_private_and_checked(tmp_path):
    path = tmp_path / "sub" / "k.key"
    key, created = ensure_key(path)
    assert created and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_key(path) == (key, False)
    assert load_key(path) == key
    assert write_key(path) != key  # a new random key replaces it
    path.chmod(0o644)
    with pytest.raises(AuthenticationError, match="readable by others"):
        load_key(path)
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(AuthenticationError, match="64 hexadecimal"):
        load_key(path)
    with pytest.raises(AuthenticationError, match="does not exist"):
        load_key(tmp_path / "missing.key")


def test_verifier_reloads_a_rotated_key_file(tmp_path):
    path = tmp_path / "feedback.key"
    verifier = MessageVerifier(path)
    frames = encode(b"status", status("start"))
    with pytest.raises(SignatureError, match="waiting"):
        verifier.verify(sign_frames(frames, KEY))  # no key file yet
    write_key(path, KEY)
    assert verifier.verify(sign_frames(frames, KEY))[0] == "status"
    write_key(path, OTHER)  # a new session
    assert verifier.verify(sign_frames(frames, OTHER))[0] == "status"
    with pytest.raises(SignatureError):
        verifier.verify(sign_frames(frames, KEY))  # the old session's key no longer works
    assert verifier.n_rejected == 2


def _rogue_publisher(address, stop_after, key=None):
    """Bind ``address`` first and send forged "well done" feedback (plain pyzmq)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.bind(address)
    forged = feedback(7, 1.0, flags=(), target=0.75)
    deadline = time.monotonic() + stop_after
    n = 0
    while time.monotonic() < deadline:
        frames = encode(b"feedback", forged, time_published=time.time())
        sock.send_multipart(frames if key is None else sign_frames(frames, key))
        n += 1
        time.sleep(0.02)
    sock.close(linger=0)
    ctx.term()
    return n


def test_rogue_publisher_cannot_drive_the_headless_display(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    key_file = tmp_path / "session.key"
    write_key(key_file, OTHER)  # the previous session's key (the rogue may even know it)
    with HeadlessDisplay(address, timeout=30, key=key_file) as display:
        sent = _rogue_publisher(address, 1.0) + _rogue_publisher(address, 1.0, key=OTHER[::-1])
        assert sent > 20
        assert display.n_rejected >= 10  # the messages did arrive, and were refused
        assert all(s.mode == "waiting" for s in display.snapshots)
        assert display.messages == []
        # the real session: new key written to the file, then it publishes
        key = write_key(key_file)
        with FeedbackPublisher(address, SESSION, key=key, linger=0.2) as pub:
            pub.publish(b"status", status("start"))
            pub.publish(b"feedback", feedback(1, 0.25))
            snap = display.wait_for(lambda s: s.mode == "feedback", timeout=10)
            assert snap.level == pytest.approx(0.25)
            assert snap.volume_index == 1
    assert all(r.message["session_id"] == SESSION for r in display.messages)


def test_rogue_publisher_cannot_drive_the_installed_display(tmp_path):
    """``rtfb display --headless`` finds the session's key file from --address alone."""
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "RTFB_KEY_DIR": str(tmp_path / "keys")}
    rtfb = Path(sys.executable).parent / "rtfb"
    display = subprocess.Popen(
        [str(rtfb), "display", "--headless", "--address", address, "--exit-on-end",
         "--duration", "60", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1.0)
        _rogue_publisher(address, 2.0)
        os.environ["RTFB_KEY_DIR"], old = str(tmp_path / "keys"), os.environ.get("RTFB_KEY_DIR")
        try:
            key = write_key(default_key_path(address))
        finally:
            if old is None:
                del os.environ["RTFB_KEY_DIR"]
            else:
                os.environ["RTFB_KEY_DIR"] = old
        with FeedbackPublisher(address, SESSION, key=key, linger=0.5) as pub:
            pub.publish(b"status", status("start"))
            pub.publish(b"feedback", feedback(1, 0.25))
            time.sleep(0.5)
            pub.publish(b"status", status("end"))
            out, err = display.communicate(timeout=60)
    finally:
        if display.poll() is None:
            display.kill()
            display.communicate()
    assert display.returncode == 0, err
    assert "Traceback" not in out + err
    assert "level=1.000" not in out and "vol=7" not in out  # the forged cue never showed
    assert "vol=1 level=0.250" in out
    assert "message refused" in err  # the rogue's messages were logged
