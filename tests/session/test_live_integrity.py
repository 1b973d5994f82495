"""Live-loop integrity (issue 10): bad references, geometry lock, idle timeout, resume after
an early kill or of a simulated session, and a session at 10x under CPU load."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zmq

from rtfb.config import load_protocol
from rtfb.feedback.publisher import FeedbackPublisher
from rtfb.ingest import FolderWatcher, Volume
from rtfb.session.record_reader import load_record
from rtfb.session.replay import replay_session
from rtfb.session.runner import Session
from tests.session._protocols import alff_protocol, subject
from tests.session._sources import ListSource

pytestmark = pytest.mark.timeout(600)

COMPARED = ("index", "feedback", "feedback_value", "metrics", "motion", "fd", "flags")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    subj = subject(root, volumes=40)
    protocol = load_protocol(alff_protocol(root, subj, volumes=40, window=10))
    img = nib.load(subj / "bold.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    vols = [Volume(data[..., i], img.affine, i, tr=2.0, source=f"vol_{i + 1:05d}.nii")
            for i in range(data.shape[-1])]
    return dict(root=root, protocol=protocol, vols=vols, affine=img.affine)


BAD_FIRST = {
    "nan_voxel": lambda v: np.where(np.arange(v.size).reshape(v.shape) == 7, np.nan, v),
    "all_zeros": lambda v: np.zeros_like(v),
    "constant": lambda v: np.full_like(v, 1000.0),
    "one_voxel": lambda v: np.ones((1, 1, 1), np.float32),
    "anatomical_grid": lambda v: np.ones((256, 256, 128), np.float32),
}


@pytest.mark.parametrize("case", sorted(BAD_FIRST))
def test_bad_first_volume_never_ends_the_session(small, tmp_path, case):
    vols = small["vols"]
    bad = Volume(BAD_FIRST[case](np.asarray(vols[0].data)), small["affine"], 0, tr=2.0,
                 source="vol_00001.nii")
    session = Session(small["protocol"], tmp_path / "rec")
    session.run(ListSource([bad] + vols[1:]))
    record = load_record(tmp_path / "rec")
    assert [v["index"] for v in record.volumes] == list(range(1, 40))
    assert not any("rejected" in v["flags"] or "missing" in v["flags"]
                   for v in record.volumes)
    errors = [e for e in record.events if e.get("code") == "bad_reference"]
    assert len(errors) == 1 and errors[0]["index"] == 0
    assert "vol_00001.nii" in errors[0]["message"]
    assert record.inputs[0]["index"] == 0 and record.inputs[0]["rejected"]
    assert record.session["reference_index"] == 1
    assert any(e["kind"] == "start" and "volume 1" in e["message"] for e in record.events)
    assert session.status.rejected == 0 and session.status.missing == 0


def test_later_volume_of_another_geometry_rejected_naming_file_and_field(small, tmp_path):
    vols = list(small["vols"][:25])
    odd = vols[12]
    vols[12] = Volume(np.asarray(odd.data)[:, :, :-1], odd.affine, 12, tr=2.0,
                      source="vol_00013.nii")
    session = Session(small["protocol"], tmp_path / "rec")
    session.run(ListSource(vols))
    record = load_record(tmp_path / "rec")
    assert [v["index"] for v in record.volumes] == list(range(25))
    flagged = {v["index"]: v["flags"] for v in record.volumes if "rejected" in v["flags"]}
    assert list(flagged) == [12] and "missing" in flagged[12]
    event = next(e for e in record.events if e.get("code") == "rejected")
    assert event["file"] == "vol_00013.nii" and event["field"] == "shape"
    assert "vol_00013.nii" in event["message"] and "shape" in event["message"]
    assert session.status.rejected == 1
    replay_session(tmp_path / "rec", tmp_path / "replay")
    a = [{k: v.get(k) for k in COMPARED} for v in record.volumes]
    b = [{k: v.get(k) for k in COMPARED} for v in load_record(tmp_path / "replay").volumes]
    assert a == b


def test_idle_timeout_fires_while_only_unreadable_files_arrive(small, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    stop = threading.Event()

    def junk():
        k = 0
        while not stop.is_set():
            (export / f"junk_{k:05d}.dcm").write_bytes(os.urandom(2000))
            k += 1
            time.sleep(0.05)

    writer = threading.Thread(target=junk)
    writer.start()
    session = Session(small["protocol"], tmp_path / "rec")
    done = threading.Event()
    try:
        with FolderWatcher(export, tr=2.0) as watcher:
            runner = threading.Thread(target=lambda: (session.run(watcher, idle_timeout=1.0),
                                                      done.set()))
            runner.start()
            runner.join(120)  # generous: the session must end by itself
    finally:
        stop.set()
        writer.join()
    assert done.is_set()
    record = load_record(tmp_path / "rec")
    end = [e for e in record.events if e["kind"] == "end"]
    assert end and "finished" not in end[-1]["message"]
    assert "no volume accepted for 1 s" in end[-1]["message"]
    assert any(e.get("code") == "idle_timeout" for e in record.events)


def _rtfb(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "rtfb", *args], capture_output=True,
                          text=True, timeout=kwargs.pop("timeout", 300),
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), **kwargs)


def test_kill_before_the_first_volume_was_processed_resumes(small, tmp_path):
    # the state a kill leaves while the reference was being set up (ROIs, masks): the
    # session.json of the start, one input recorded, no ROIs, no processed volume
    session = Session(small["protocol"], tmp_path / "rec", source_info={
        "kind": "watch", "directory": str(tmp_path / "export")})
    session.recorder.write_input(small["vols"][0], time.time())
    session.recorder.close()
    export = tmp_path / "export"
    export.mkdir()
    img = nib.load(small["root"] / "subject" / "bold.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    for i in range(1, 40):
        nib.save(nib.Nifti1Image(data[..., i], img.affine), export / f"vol_{i + 1:05d}.nii")
    res = _rtfb("run", "--resume", str(tmp_path / "rec"), "--quiet", "--idle-timeout", "5")
    assert res.returncode == 0, res.stdout + res.stderr
    record = load_record(tmp_path / "rec")
    assert [v["index"] for v in record.volumes] == list(range(40))
    assert record.session["shape"] == list(data.shape[:3])


def test_resume_without_session_json_is_one_clear_message(tmp_path):
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "inputs.jsonl").write_text("")
    res = _rtfb("run", "--resume", str(folder), "--quiet")
    assert res.returncode == 2
    assert "Traceback" not in res.stdout + res.stderr
    out = res.stdout + res.stderr  # the CLI's one-line errors go to stderr
    assert "cannot resume" in out and "session.json" in out


def _count_lines(path):
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_resume_of_a_simulated_session_needs_no_option(tmp_path):
    subj = subject(tmp_path, volumes=40, shape=(20, 20, 12), seed=0)
    protocol_path = alff_protocol(tmp_path, subj, volumes=40, window=10)
    out = tmp_path / "sessions"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "rtfb", "run"]
    first = subprocess.Popen(cmd + [str(protocol_path), "--simulate", "--speed", "10",
                                    "--shape", "20", "20", "12", "--out", str(out), "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    session_dir = None
    while time.monotonic() < deadline:
        dirs = list(out.glob("sub-*")) if out.exists() else []
        if dirs and _count_lines(dirs[0] / "volumes.jsonl") >= 12:
            session_dir = dirs[0]
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert session_dir is not None, "the simulated session did not start"
    dead = Path(tempfile.gettempdir())
    left = [d for d in dead.glob("rtfb-simulate-*")
            if (d / "owner.pid").is_file() and (d / "owner.pid").read_text() == str(first.pid)]
    assert left  # kill -9: nothing could clean up ...
    resumed = subprocess.run(cmd + ["--resume", str(session_dir), "--quiet"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not any(d.exists() for d in left)  # ... the next --simulate removed it
    record = load_record(session_dir)
    indices = [v["index"] for v in record.volumes]
    assert sorted(indices) == list(range(40)) and len(set(indices)) == 40
    assert any(e["kind"] == "resume" for e in record.events)
    assert "session finished" in [e for e in record.events if e["kind"] == "end"][-1][
        "message"]


def _busy():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def test_load_10x_64x64x36_two_busy_processes(tmp_path):
    subj = subject(tmp_path, volumes=60, shape=(64, 64, 36), seed=2)
    protocol = load_protocol(alff_protocol(tmp_path, subj, volumes=60, window=20))
    export = tmp_path / "export"
    export.mkdir()
    Session.warm_up()
    session = Session(protocol, tmp_path / "rec")
    hogs = [_busy(), _busy()]
    try:
        with FeedbackPublisher(protocol.output.zmq_address, session_id=session.session_id,
                               on_sent=session.record_message) as publisher:
            session.publisher = publisher
            with FolderWatcher(export, gap_timeout=2.0, tr=0.2) as watcher:
                # the scanner is another machine: the simulator runs in its own process
                player = subprocess.Popen([sys.executable, "-m", "simulator", "stream",
                                           str(subj), "--to", str(export), "--speed", "10",
                                           "--manifest", str(tmp_path / "m.json")],
                                          stdout=subprocess.DEVNULL)
                session.run(watcher, idle_timeout=20.0)
                player.wait(60)
        session.close()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    record = load_record(tmp_path / "rec")
    manifest = json.loads((tmp_path / "m.json").read_text())
    # 0 lost
    assert [v["index"] for v in record.volumes] == list(range(60))
    assert not any("missing" in v["flags"] or "rejected" in v["flags"]
                   for v in record.volumes)
    t0 = manifest["t0_unix"]
    finished = {v["index"]: t0 + max(w["finished"] for w in v["writes"] if w["complete"])
                for v in manifest["volumes"]}
    sent = {m["message"]["volume_index"]: m["message"] for m in record.messages
            if m["topic"] == "feedback"}
    assert set(sent) == set(range(60))
    # the recorded latency is the truth: within 50 ms of file finished -> published
    diffs = np.array([v["latency_ms"] - 1e3 * (sent[v["index"]]["time_published"]
                                               - finished[v["index"]])
                      for v in record.volumes])
    assert np.all(np.abs(diffs) < 50.0), diffs[np.abs(diffs) >= 50.0]
    # no stale value shown: every value shown was published within max_delay (TR/2)
    for i, msg in sent.items():
        if msg["value"] is not None:
            assert msg["time_published"] - finished[i] <= session.max_delay + 0.05, i
        if "stale" in msg["flags"]:
            assert msg["value"] is None


def test_disk_full_stop_names_the_path_and_does_not_say_finished(small, tmp_path):
    import errno

    from rtfb.session.runner import RecordWriteError

    session = Session(small["protocol"], tmp_path / "rec")
    target = session.recorder._inputs_bin
    real_write = target.write
    calls = []

    def write(data):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(target.path))
        real_write(data)

    target.write = write
    with pytest.raises(RecordWriteError, match="disk full writing .*inputs.bin"):
        session.run(ListSource(small["vols"]))
    record = load_record(tmp_path / "rec")
    end = [e for e in record.events if e["kind"] == "end"][-1]
    assert "finished" not in end["message"] and "disk full writing" in end["message"]
    assert str(target.path) in end["message"]
    assert [v["index"] for v in record.volumes] == list(range(5))


class _StarvedClock:
    """The publisher's clock once its thread runs ``lag`` seconds after the hand-off."""

    def __init__(self):
        self.lag = 0.0

    def __call__(self):
        return time.time() + self.lag


def test_value_sent_after_max_delay_is_withheld_and_recorded_stale(small, tmp_path):
    # the publisher's thread starves from the first value on: every message leaves 5 s
    # (> max_delay = TR/2) after the session decided it was fresh. The first late value is
    # withheld by the publisher at send time; from then on the session, which learns the
    # send lag, flags the values stale itself. Either way no value reaches the participant
    # and the record says so (flag "stale", feedback null), as does the status.
    session = Session(small["protocol"], tmp_path / "rec")
    with FeedbackPublisher(small["protocol"].output.zmq_address, session_id=session.session_id,
                           on_sent=session.record_message) as publisher:
        clock = publisher._clock = _StarvedClock()
        handed = publisher.publish

        def publish(topic, message, **kw):
            if message.get("value") is not None:
                clock.lag = 5.0
            return handed(topic, message, **kw)

        publisher.publish = publish
        session.publisher = publisher
        session.run(ListSource(small["vols"]))
    session.close()
    record = load_record(tmp_path / "rec")
    would_show = [v for v in record.volumes if v["feedback_value"] is not None
                  and "no_feedback" not in v["flags"]]
    assert len(would_show) >= 5  # the regulate block had values to show
    assert all(v["feedback"] is None and "stale" in v["flags"] for v in would_show)
    sent = [m["message"] for m in record.messages if m["topic"] == "feedback"]
    assert len(sent) == 40 and all(m["value"] is None for m in sent)
    assert publisher.stats["withheld"] >= 1
    assert session.status.stale >= len(would_show)
    # a replay reproduces the record, withheld values included
    replayed = load_record(replay_session(tmp_path / "rec", tmp_path / "replay"))
    assert [v["feedback"] for v in replayed.volumes] == [v["feedback"] for v in record.volumes]


def test_display_connected_and_lost_are_recorded(small, tmp_path):
    # the operator must know when the participant's screen stops receiving: the record has
    # display_connected when a display subscribes and a display_lost warning when it leaves
    from rtfb.display.headless import connect_subscriber

    session = Session(small["protocol"], tmp_path / "rec")
    ctx = zmq.Context()
    with FeedbackPublisher(small["protocol"].output.zmq_address, session_id=session.session_id,
                           on_sent=session.record_message,
                           on_display=session.record_display) as publisher:
        session.publisher = publisher
        display = connect_subscriber(ctx, publisher.endpoint)
        assert publisher.wait_for_displays(1, timeout=60)

        class Source(ListSource):
            def get(self, timeout=None):
                if len(self.items) == 20:  # half way: the display goes away
                    display.close()
                    deadline = time.monotonic() + 60
                    while publisher.display_connected and time.monotonic() < deadline:
                        time.sleep(0.01)
                return super().get(timeout)

        session.run(Source(small["vols"]))
    session.close()
    ctx.term()
    events = load_record(tmp_path / "rec").events
    codes = [(e.get("code"), e.get("index")) for e in events
             if e.get("code") in ("display_connected", "display_lost")]
    assert [c for c, _ in codes] == ["display_connected", "display_lost"]
    assert codes[1][1] == 19  # lost after volume 19, the last one it could have shown
    assert session.status.warnings >= 1
