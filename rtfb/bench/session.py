"""Whole session latency: file complete in the export folder -> feedback delivered to a subscriber.

The simulator streams a synthetic subject (with motion) into an export folder at a fixed
pace, in its own process (it plays the scanner, another machine); a session with whole-brain
sliding ALFF and ReHo maps (plus the ROI value fed back) runs on it with a real ZeroMQ
publisher and a connected subscriber. The file-complete times come from the simulator's
manifest (when the last chunk was written), the delivery times from the subscriber's clock
when the message arrived. Warm-up volumes (window not full) and window-full volumes are
reported apart, on a quiet machine and with a CPU hog (a busy process per core) alongside.
Memory: resident size after the first 300 volumes and at the end (long run).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ._timing import peak_rss_mib, rss_mib

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
write_maps_every = {maps_every}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Subscriber:
    """A display stand-in: receive every feedback message, note when it arrived."""

    def __init__(self, endpoint: str):
        import zmq

        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.connect(endpoint)
        self._sock.subscribe(b"feedback")
        self.received: dict[int, tuple[float, dict]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Subscriber:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(100):
                frames = self._sock.recv_multipart()
                now = time.time()
                msg = json.loads(frames[1])
                self.received.setdefault(msg["volume_index"], (now, msg))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)
        self._ctx.term()


def _hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run_session(shape, n_subject: int, n_volumes: int, window: int, interval: float,
                tmp: Path, hog: bool = False, rss_at: int = 300, attach=None,
                maps_every: int = 0) -> dict:
    """Stream and process one session; returns latencies (s) and memory figures.

    Whole-brain ALFF and ReHo maps are written at the two block ends and, with
    ``maps_every``, every that many volumes (``output.write_maps_every``); the result
    says how many were written and skipped, and how long after the volume's feedback
    reached the subscriber its maps were saved.

    ``attach(session, publisher)`` (optional) runs once the publisher is up and returns a
    ``detach()`` called after the session (e.g. the dashboard, ``rtfb.bench.dashboard``).
    """
    from simulator import make_subject, write_subject

    from ..config import load_protocol
    from ..feedback.publisher import FeedbackPublisher
    from ..ingest import FolderWatcher
    from ..session.runner import Session

    subject_dir = tmp / "subject"
    write_subject(make_subject(shape=shape, n_volumes=n_subject, motion=True, seed=0),
                  subject_dir)
    baseline = max(window, n_volumes // 3)
    text = _PROTOCOL.format(volumes=n_volumes, baseline=baseline, rest=n_volumes - baseline,
                            roi=subject_dir / "roi-left_insula.nii.gz", window=window,
                            port=_free_port(), maps_every=maps_every)
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
    hogs = _hogs(os.cpu_count() or 2) if hog else []
    try:
        with FeedbackPublisher(protocol.output.zmq_address, session_id=session.session_id,
                               on_sent=session.record_message) as publisher:
            session.publisher = publisher
            sub = _Subscriber(publisher.endpoint).start()
            detach = attach(session, publisher) if attach is not None else None
            time.sleep(0.5)  # connected and subscribed before the first volume
            with FolderWatcher(export, gap_timeout=5.0, tr=interval) as watcher:
                player = subprocess.Popen(
                    [sys.executable, "-m", "simulator", "stream", str(subject_dir), "--to",
                     str(export), "--tr", "2.0", "--speed", str(2.0 / interval), "--volumes",
                     str(n_volumes), "--manifest", str(tmp / "m.json")],
                    stdout=subprocess.DEVNULL)
                session.run(watcher, idle_timeout=60.0)  # from the start: the
                player.wait(60)                          # simulator needs a few s to start
            time.sleep(0.3)
            sub.stop()
            if detach is not None:
                detach()
        session.close()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    rss["end"] = rss_mib()
    manifest = json.loads((tmp / "m.json").read_text())
    t0 = manifest["t0_unix"]
    complete = {}
    for vol in manifest["volumes"]:
        finished = [w["finished"] for w in vol["writes"] if w.get("complete")]
        if finished:
            complete[vol["index"]] = t0 + min(finished)
    delivered = {i: t for i, (t, _) in sub.received.items()}
    shown_stale = [i for i, (t, m) in sub.received.items()
                   if m["value"] is not None and i in complete
                   and t - complete[i] > session.max_delay]
    idx = np.array(sorted(set(complete) & set(delivered)))
    lat = np.array([delivered[i] - complete[i] for i in idx])
    full = idx >= window - 1
    stale = sum("stale" in m["flags"] for _, m in sub.received.values())
    saved = {}  # volume index -> when its last map was saved
    for path in (tmp / "record" / "maps").glob("*_vol-*.nii.gz"):
        i = int(path.name.rsplit("_vol-", 1)[1].split(".")[0])
        saved[i] = max(saved.get(i, 0.0), path.stat().st_mtime)
    map_delay = np.array([saved[i] - delivered[i] for i in sorted(saved) if i in delivered])
    events = (tmp / "record" / "events.jsonl").read_text()
    return dict(warmup=lat[~full], full=lat[full], n_sent=len(complete),
                maps_written=len(saved), maps_skipped=events.count('"maps_skipped"'),
                map_delay=map_delay,
                n_delivered=len(delivered), lost=len(set(complete) - set(delivered)),
                voxels=int(session.engine.mask.sum()), stale=stale,
                shown_stale=len(shown_stale), max_delay=session.max_delay, rss=rss,
                peak=peak_rss_mib())


def _stats(seconds) -> str:
    if len(seconds) == 0:
        return "- / - / -"
    ms = np.asarray(seconds) * 1e3
    return f"{np.median(ms):.1f} / {np.percentile(ms, 95):.1f} / {np.percentile(ms, 99):.1f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench session``."""
    parser.add_argument("--shapes", nargs="+", default=["64x64x36"])
    parser.add_argument("--volumes", nargs="+", type=int, default=[200],
                        help="volumes per shape")
    parser.add_argument("--intervals", nargs="+", type=float, default=[0.25],
                        help="seconds between volumes per shape (TR / speed; TR is 2 s)")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--maps-every", type=int, default=16,
                        help="also write the whole-brain maps every N volumes (0: at the "
                             "two block ends only)")
    parser.add_argument("--conditions", nargs="+", default=["quiet", "hog"],
                        choices=["quiet", "hog"],
                        help="quiet machine, and/or one busy process per core alongside")
    parser.add_argument("--long-run", type=int, default=0,
                        help="volumes of a memory run on the first shape (0: skip)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print markdown tables."""
    print("# rtfb.bench session: file complete -> feedback delivered to a subscriber\n")
    print("| grid | in-mask voxels | volumes | pace (ms) | condition | warm-up median / p95 / "
          "p99 (ms) | window full median / p95 / p99 (ms) | stale | stale shown as fresh "
          "| lost | maps written / skipped | maps saved after feedback, median / max (ms) |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for text, n_vol, interval in zip(args.shapes, args.volumes, args.intervals, strict=True):
        shape = tuple(int(v) for v in text.split("x"))
        for condition in args.conditions:
            with tempfile.TemporaryDirectory() as tmp:
                res = run_session(shape, n_vol, n_vol, args.window, interval, Path(tmp),
                                  hog=condition == "hog", maps_every=args.maps_every)
            delay = res["map_delay"] * 1e3
            delay = (f"{np.median(delay):.0f} / {delay.max():.0f}" if delay.size
                     else "- / -")
            print(f"| {text} | {res['voxels']} | {n_vol} | {interval * 1e3:.0f} | "
                  f"{condition} | {_stats(res['warmup'])} | {_stats(res['full'])} | "
                  f"{res['stale']} | {res['shown_stale']} | {res['lost']} | "
                  f"{res['maps_written']} / {res['maps_skipped']} | {delay} |", flush=True)
    if args.long_run:
        shape = tuple(int(v) for v in args.shapes[0].split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            res = run_session(shape, 300, args.long_run, args.window, args.intervals[0],
                              Path(tmp))
        lat = np.concatenate([res["warmup"], res["full"]])
        print(f"\nlong run: {args.long_run} volumes of {args.shapes[0]} (source looped), "
              f"latency median / p95 / p99 {_stats(lat)} ms, {res['lost']} lost; RSS "
              f"{res['rss'].get('after_first', float('nan')):.0f} MiB after 300 volumes, "
              f"{res['rss']['end']:.0f} MiB at the end (peak {res['peak']:.0f} MiB)")
    return 0
