"""Fabricate session record folders that follow docs/session_record.md (format version 1)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from rtfb.preprocess.fd import framewise_displacement

SHAPE = (8, 8, 6)
AFFINE = np.diag([3.0, 3.0, 3.5, 1.0])
AFFINE[:3, 3] = [-12.0, -12.0, -10.5]
N_EXPECTED = 60
MISSING = 17
LATE = 33
WARMUP = 10
FD_THRESHOLD = 0.5
TARGET = 0.5
PROTOCOL_TOML = f"""name = "insula_alff_down"

[preprocess]
realign = true
fd_threshold = {FD_THRESHOLD}
"""


def _line(obj) -> str:
    return json.dumps(obj, allow_nan=False) + "\n"


def _block(i: int) -> dict:
    # rest 0-9, down 10-29, rest 30-39, down 40-59
    number = 0 if i < 10 else 1 if i < 30 else 2 if i < 40 else 3
    condition = "rest" if number % 2 == 0 else "down"
    return {"index": number, "condition": condition, "cue": condition.upper(),
            "feedback": condition == "down"}


def write_fake_session(root: Path, *, n_volumes: int = N_EXPECTED, motion: bool = True,
                       maps: bool = False, ended: bool = True, cut_last_line: bool = False,
                       protocol_name: str = "insula_alff_down", seed: int = 0) -> dict:
    """Write a session folder under ``root``; return what was written (for the checks).

    Volume ``MISSING`` is never received (a ``missing`` event), ``LATE`` arrives late, the
    first ``WARMUP`` volumes have ``null`` feedback and metrics, and two motion spikes make
    a few volumes exceed the FD threshold.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / f"sub-anon_ses-20260101T120000_task-{protocol_name}"
    folder.mkdir(parents=True)
    t0 = 1_767_268_800.0
    tr = 2.0
    (folder / "protocol.toml").write_text(PROTOCOL_TOML, encoding="utf-8")
    session = {
        "format_version": 1, "session_id": "sub-anon_ses-20260101T120000",
        "rtfb_version": "0.1.0.dev0", "protocol_name": protocol_name,
        "protocol_sha256": hashlib.sha256(PROTOCOL_TOML.encode()).hexdigest(),
        "source": {"kind": "simulate", "subject": "fake"},
        "started": "2026-01-01T12:00:00+00:00", "shape": list(SHAPE),
        "affine": AFFINE.tolist(), "tr": tr, "n_expected": N_EXPECTED,
        "zmq_address": "tcp://127.0.0.1:5556",
    }
    (folder / "session.json").write_text(json.dumps(session), encoding="utf-8")

    indices = [i for i in range(n_volumes) if i != MISSING]
    params = np.cumsum(rng.normal(0, 0.01, size=(N_EXPECTED, 6)), axis=0)
    params[25:, 0] += 0.8  # spikes: FD > threshold at 25 and 45
    params[45:, 4] += 1.0
    fd_all = framewise_displacement(params)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in SHAPE],
                                indexing="ij"), -1)
    brain = 1000.0 * np.exp(-(grid**2).sum(-1) / 8.0)

    inputs, volumes, events, messages, arrays = [], [], [], [], []
    events.append({"time": t0, "kind": "start", "message": "session started"})
    offset = 0
    with open(folder / "inputs.bin", "wb") as binary:
        for i in indices:
            data = (brain + rng.normal(0, 5, size=SHAPE)).astype(np.float32)
            raw = data.tobytes(order="C")
            binary.write(raw)
            arrays.append(data)
            received = t0 + i * tr + (3.0 if i == LATE else 0.1)
            inputs.append({
                "index": i, "source": f"vol{i:05d}.nii", "sha256": hashlib.sha256(raw).hexdigest(),
                "offset": offset, "nbytes": len(raw), "shape": list(SHAPE),
                "affine": AFFINE.tolist(), "acquisition_time": t0 + i * tr, "tr": tr,
                "time_received": received, "late": i == LATE,
            })
            offset += len(raw)
            block = _block(i)
            if i == 0 or _block(i - 1)["index"] != block["index"]:
                events.append({"time": received, "kind": "block", "index": i,
                               "message": f"block {block['index']} ({block['condition']})"})
            if i == LATE:
                events.append({"time": received, "kind": "late", "index": i,
                               "message": "volume 33 arrived 2.9 s after its TR"})
            if i == MISSING + 1:
                events.append({"time": received, "kind": "missing", "index": MISSING,
                               "message": "volume 17 never arrived"})
            warm = i < WARMUP
            feedback = None if warm else round(float(np.sin(i / 5.0) * 0.4 + 0.5), 4)
            metrics = ({"alff": None, "psc": None} if warm else
                       {"alff": round(float(1.0 + 0.1 * np.cos(i / 4)), 4),
                        "psc": round(float(0.3 * np.sin(i / 3)), 4)})
            latency = 10.0 + (i % 7)
            fd = float(fd_all[i]) if motion else None
            volumes.append({
                "index": i, "block": block,
                "motion": [float(p) for p in params[i]] if motion else None,
                "fd": fd, "censored": bool(motion and fd > FD_THRESHOLD),
                "metrics": metrics, "feedback": feedback,
                "flags": ["warmup"] if warm else [],
                "times": {"received": received, "processed": received + 0.008,
                          "published": received + latency / 1000},
                "latency_ms": latency,
            })
            messages.append({"topic": "feedback", "message": {
                "schema_version": 1, "type": "feedback", "session_id": session["session_id"],
                "volume_index": i,
                "value": feedback, "target": TARGET, "raw": metrics,
                "block": block, "fd": fd}})
    events.append({"time": t0 + 20 * tr, "kind": "warning", "index": 20,
                   "message": "queue <backlog> of 2 volumes"})
    if ended:
        events.append({"time": t0 + n_volumes * tr, "kind": "end", "message": "session ended"})

    for name, rows in (("inputs", inputs), ("volumes", volumes), ("events", events),
                       ("messages", messages)):
        text = "".join(_line(r) for r in rows)
        if cut_last_line:
            text += _line({"index": 999, "kind": "cut"})[:17]  # no final newline
        (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")

    if maps:
        (folder / "maps").mkdir()
        stat = np.where(brain > 400, brain / brain.max() * 3.0, 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(stat, AFFINE), folder / "maps" / "alff_needle_vol-00059.nii.gz")

    return {"dir": folder, "session": session, "indices": indices, "arrays": arrays,
            "volumes": volumes, "events": events, "inputs": inputs, "messages": messages}
