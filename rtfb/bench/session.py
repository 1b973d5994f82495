"""Whole session latency: file complete in the export folder -> feedback message published.

The simulator streams a synthetic subject (with motion) into an export folder at a fixed
pace; a session with whole-brain sliding ALFF and ReHo maps (plus the ROI value fed back)
runs on it with a real ZeroMQ publisher. The file-complete times come from the simulator's
manifest (when the last chunk was written), the publish times from the messages actually
sent. Memory: resident size after the first 300 volumes and at the end of a long run.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np

from ._timing import peak_rss_mib, rss_mib, summary_ms

_PROTOCOL = """
[session]
name = "bench_session"
tr = 2.0
volumes = {volumes}
participant_feedback = true

[[blocks]]
condition = "baseline"
volumes = {baseline}
cue = "Rest"
feedback = false

[[blocks]]
condition = "regulate"
volumes = {rest}
cue = "Regulate"
feedback = true

[preprocess]
realign = true
glm = "cumulative"

[rois.left_insula]
file = "{roi}"
space = "native"

[metric]
kind = "alff"
roi = "left_insula"
window = {window}
band = [0.01, 0.08]
whole_brain = true
maps = ["alff", "reho"]

[feedback]
baseline = "block:baseline"
direction = "down"
change = "relative"
scale = 0.2

[output]
zmq_address = "tcp://127.0.0.1:{port}"
write_maps_every = 0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_session(shape, n_subject: int, n_volumes: int, window: int, interval: float,
                tmp: Path, rss_at: int = 300, attach=None) -> dict:
    """Stream and process one session; returns latencies and memory figures.

    ``attach(session, publisher)`` (optional) runs once the publisher is up and returns a
    ``detach()`` called after the session (e.g. the dashboard, ``rtfb.bench.dashboard``).
    """
    from simulator import make_subject, stream, write_subject

    from ..config import load_protocol
    from ..feedback.publisher import FeedbackPublisher
    from ..ingest import FolderWatcher
    from ..session.record_reader import load_record
    from ..session.runner import Session

    subject_dir = tmp / "subject"
    write_subject(make_subject(shape=shape, n_volumes=n_subject, motion=True, seed=0),
                  subject_dir)
    baseline = max(window, n_volumes // 3)
    text = _PROTOCOL.format(volumes=n_volumes, baseline=baseline, rest=n_volumes - baseline,
                            roi=subject_dir / "roi-left_insula.nii.gz", window=window,
                            port=_free_port())
    (tmp / "protocol.toml").write_text(text)
    protocol = load_protocol(tmp / "protocol.toml")
    export = tmp / "export"
    export.mkdir()
    rss = {}

    def on_status(status):
        if status.processed == rss_at:
            rss["after_first"] = rss_mib()

    Session.warm_up()
    session = Session(protocol, tmp / "record", on_status=on_status)
    with FeedbackPublisher(protocol.output.zmq_address, session_id=session.session_id,
                           on_sent=session.record_message) as publisher:
        session.publisher = publisher
        detach = attach(session, publisher) if attach is not None else None
        with FolderWatcher(export, gap_timeout=5.0) as watcher:
            player = threading.Thread(target=stream, args=(subject_dir, export), kwargs=dict(
                tr=2.0, speed=2.0 / interval, volumes=n_volumes, manifest=tmp / "m.json"))
            player.start()
            session.run(watcher, idle_timeout=10.0)
            player.join()
        if detach is not None:
            detach()
    session.close()
    rss["end"] = rss_mib()
    manifest = json.loads((tmp / "m.json").read_text())
    t0 = manifest["t0_unix"]
    complete = {}
    for vol in manifest["volumes"]:
        finished = [w["finished"] for w in vol["writes"] if w.get("complete")]
        if finished:
            complete[vol["index"]] = t0 + min(finished)
    record = load_record(tmp / "record")
    published = {m["message"]["volume_index"]: m["message"]["time_published"]
                 for m in record.messages if m["topic"] == "feedback"}
    lat = np.array([published[i] - complete[i] for i in complete if i in published])
    received = {v["index"]: v["times"]["received"] for v in record.volumes}
    ingest = np.array([received[i] - complete[i] for i in complete if i in received])
    process = np.array([published[i] - received[i] for i in complete if i in published])
    return dict(latency=lat, ingest=ingest, process=process, n_sent=len(complete),
                n_published=len(published),
                lost=len(set(complete) - set(published)), voxels=int(session.engine.mask.sum()),
                rss=rss, peak=peak_rss_mib())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench session``."""
    parser.add_argument("--shapes", nargs="+", default=["64x64x36", "104x104x72"])
    parser.add_argument("--volumes", nargs="+", type=int, default=[300, 150],
                        help="volumes per shape")
    parser.add_argument("--intervals", nargs="+", type=float, default=[0.1, 0.5],
                        help="seconds between volumes per shape (TR / speed)")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--long-run", type=int, default=2000,
                        help="volumes of the memory run on the first shape (0 to skip)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print markdown tables."""
    print("# rtfb.bench session: file complete -> feedback message published\n")
    print("| grid | in-mask voxels | volumes | pace (ms) | latency median / p95 (ms) | "
          "of which ingest / processing, medians (ms) | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for text, n_vol, interval in zip(args.shapes, args.volumes, args.intervals, strict=True):
        shape = tuple(int(v) for v in text.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            res = run_session(shape, n_vol, n_vol, args.window, interval, Path(tmp))
        med, p95 = summary_ms(res["latency"])
        ing, _ = summary_ms(res["ingest"])
        proc, _ = summary_ms(res["process"])
        print(f"| {text} | {res['voxels']} | {n_vol} | {interval * 1e3:.0f} | "
              f"{med:.1f} / {p95:.1f} | {ing:.1f} / {proc:.1f} | {res['lost']} |", flush=True)
    if args.long_run:
        shape = tuple(int(v) for v in args.shapes[0].split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            res = run_session(shape, 300, args.long_run, args.window, args.intervals[0],
                              Path(tmp))
        med, p95 = summary_ms(res["latency"])
        print(f"\nlong run: {args.long_run} volumes of {args.shapes[0]} (source looped), "
              f"latency median {med:.1f} ms, p95 {p95:.1f} ms, {res['lost']} lost; RSS "
              f"{res['rss'].get('after_first', float('nan')):.0f} MiB after 300 volumes, "
              f"{res['rss']['end']:.0f} MiB at the end (peak {res['peak']:.0f} MiB)")
    return 0
