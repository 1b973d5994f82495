"""End-to-end sessions: simulator with faults -> watcher -> session -> ZeroMQ -> display."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from rtfb.config import load_protocol
from rtfb.display.headless import HeadlessDisplay
from rtfb.feedback.publisher import FeedbackPublisher
from rtfb.ingest import FolderWatcher
from rtfb.session.record_reader import load_record
from rtfb.session.replay import replay_session
from rtfb.session.runner import Session
from simulator import stream
from tests.session._protocols import alff_protocol, subject

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "feedback_schema.json").read_text())
COMPARED = ("index", "feedback", "feedback_value", "metrics", "motion", "fd", "flags")


def _compare(record_a, record_b):
    a = [{k: v.get(k) for k in COMPARED} for v in record_a.volumes]
    b = [{k: v.get(k) for k in COMPARED} for v in record_b.volumes]
    return a, b


@pytest.fixture(scope="module")
def faulty_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("session")
    subj = subject(root, volumes=60)
    protocol = load_protocol(alff_protocol(root, subj, volumes=60, window=20))
    export = root / "export"
    export.mkdir()
    faults = {"drop": [10], "duplicate": [15], "truncate": [25], "delay": [30],
              "shuffle": [40]}
    session = Session(protocol, root / "record", source_info={"kind": "watch"})
    with FeedbackPublisher(protocol.output.zmq_address, session_id=session.session_id,
                           on_sent=session.record_message) as publisher:
        session.publisher = publisher
        display = HeadlessDisplay(publisher.endpoint)
        display.start()
        time.sleep(0.3)
        with FolderWatcher(export, gap_timeout=0.5, incomplete_timeout=0.5) as watcher:
            player = threading.Thread(target=stream, args=(subj, export), kwargs=dict(
                speed=100.0, faults=faults, delay_seconds=0.05, manifest=root / "m.json"))
            player.start()
            session.run(watcher, idle_timeout=3.0)
            player.join()
        time.sleep(0.3)
        display.stop()
    session.close()
    manifest = json.loads((root / "m.json").read_text())
    return dict(root=root, record=load_record(root / "record"), manifest=manifest,
                display=display, protocol=protocol)


def test_every_complete_volume_one_feedback_message(faulty_session):
    record, manifest = faulty_session["record"], faulty_session["manifest"]
    valid = {v["index"] for v in manifest["volumes"] if v["valid"]}
    invalid = {v["index"] for v in manifest["volumes"] if not v["valid"]}
    assert invalid == {9, 24}
    feedback = [m["message"] for m in record.messages if m["topic"] == "feedback"]
    counts = Counter(m["volume_index"] for m in feedback)
    assert all(counts[i] == 1 for i in valid)
    for i in invalid:  # reported, and the time axis kept with a flagged message
        assert counts[i] == 1
        msg = next(m for m in feedback if m["volume_index"] == i)
        assert "missing" in msg["flags"]
    missing_events = {e["index"] for e in record.events if e["kind"] == "missing"}
    assert missing_events == invalid
    assert sorted(v["index"] for v in record.volumes) == list(range(60))
    assert sorted(e["index"] for e in record.inputs) == sorted(valid)


def test_messages_validate_against_schema(faulty_session):
    record = faulty_session["record"]
    assert len(record.messages) >= 60
    for m in record.messages:
        jsonschema.validate(m["message"], SCHEMA)
    kinds = {m["message"]["type"] for m in record.messages}
    assert kinds == {"feedback", "status"}


def test_display_received_the_feedback(faulty_session):
    shown = [r.message for r in faulty_session["display"].messages if r.topic == "feedback"]
    assert {m["volume_index"] for m in shown} == set(range(60))


def test_feedback_follows_protocol(faulty_session):
    record = faulty_session["record"]
    for v in record.volumes:
        if v["block"]["condition"] != "regulate":
            assert v["feedback"] is None
        elif v["feedback"] is not None:
            assert 0.0 <= v["feedback"] <= 1.0
    assert any(v["feedback"] is not None for v in record.volumes)
    assert all(v["latency_ms"] >= 0 for v in record.volumes)


def test_replay_is_bit_exact(faulty_session, tmp_path):
    replay_session(faulty_session["root"] / "record", tmp_path / "replay")
    a, b = _compare(faulty_session["record"], load_record(tmp_path / "replay"))
    assert a == b


def _count_lines(path):
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill9_then_resume_loses_nothing(tmp_path):
    subj = subject(tmp_path, volumes=60, seed=3)
    protocol_path = alff_protocol(tmp_path, subj, volumes=60, window=20)
    export, out = tmp_path / "export", tmp_path / "sessions"
    export.mkdir()
    player = threading.Thread(target=stream, args=(subj, export),
                              kwargs=dict(speed=25.0, manifest=tmp_path / "m.json"))
    cmd = [sys.executable, "-m", "rtfb", "run"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the scanner may start before rtfb watches: its files are this series'
    first = subprocess.Popen(cmd + [str(protocol_path), "--watch", str(export), "--out",
                                    str(out), "--quiet", "--idle-timeout", "20",
                                    "--accept-existing"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    player.start()
    deadline = time.monotonic() + 60
    session_dir = None
    while time.monotonic() < deadline:
        dirs = list(out.glob("sub-*")) if out.exists() else []
        if dirs and _count_lines(dirs[0] / "volumes.jsonl") >= 20:
            session_dir = dirs[0]
            break
        time.sleep(0.02)
    assert session_dir is not None, "the session did not start"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    n_before = _count_lines(session_dir / "volumes.jsonl")
    assert 20 <= n_before < 60
    resumed = subprocess.run(cmd + ["--resume", str(session_dir), "--quiet",
                                    "--idle-timeout", "4"],
                             capture_output=True, text=True, env=env, timeout=120)
    player.join()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = load_record(session_dir)
    indices = [v["index"] for v in record.volumes]
    assert sorted(indices) == list(range(60)) and len(indices) == len(set(indices))
    received = [e["index"] for e in record.inputs]
    assert sorted(received) == list(range(60))
    assert any(e["kind"] == "resume" for e in record.events)
    # the resumed record replays bit for bit: the state was rebuilt exactly
    replay_session(session_dir, tmp_path / "replay")
    a, b = _compare(record, load_record(tmp_path / "replay"))
    assert a == b


def test_ctrl_c_stops_cleanly(tmp_path):
    subj = subject(tmp_path, volumes=60, seed=5)
    protocol_path = alff_protocol(tmp_path, subj, volumes=60, window=20)
    export, out = tmp_path / "export", tmp_path / "sessions"
    export.mkdir()
    player = threading.Thread(target=stream, args=(subj, export),
                              kwargs=dict(speed=25.0, manifest=tmp_path / "m.json"))
    proc = subprocess.Popen([sys.executable, "-m", "rtfb", "run", str(protocol_path),
                             "--watch", str(export), "--out", str(out), "--quiet",
                             "--accept-existing"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    player.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dirs = list(out.glob("sub-*")) if out.exists() else []
        if dirs and _count_lines(dirs[0] / "volumes.jsonl") >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    player.join()
    assert proc.returncode == 0, output
    assert "stopping after the current volume" in output
    record = load_record(dirs[0])
    end = [e for e in record.events if e["kind"] == "end"]
    assert end and "stopped by the operator" in end[-1]["message"]
    n = len(record.volumes)
    assert 10 <= n < 60
    assert [v["index"] for v in record.volumes] == list(range(n))  # nothing half-written
