"""Closed-loop sessions: protocol -> virtual participant -> simulator stream -> watcher ->
session -> ZeroMQ -> headless display, and the participant's truth for the predictions."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from rtfb.config import load_protocol
from rtfb.display.headless import HeadlessDisplay
from rtfb.feedback.mapping import FeedbackMapper
from rtfb.feedback.publisher import FeedbackPublisher
from rtfb.ingest import FolderWatcher
from rtfb.metrics import alff, psc, seed_fc
from rtfb.session.record_reader import load_record
from rtfb.session.runner import Session
from simulator import stream, write_subject
from simulator.participant import ParticipantModel, make_participant
from tests.session._protocols import free_port

SHAPE = (24, 24, 16)


def blocks_toml(blocks) -> str:
    out = []
    for cond, n, fb in blocks:
        out.append(f'[[blocks]]\ncondition = "{cond}"\nvolumes = {n}\n'
                   f'feedback = {"true" if fb else "false"}\n')
    return "\n".join(out)


PREPROCESS = """glm = "cumulative"
drift = "legendre"
drift_order = 2
motion_regressors = false"""


def write_protocol(folder: Path, *, metric: str, blocks, feedback: str, extra: str = "",
                   participant_feedback: bool = True, name="closed_loop",
                   preprocess: str = PREPROCESS) -> Path:
    text = f"""
[session]
name = "{name}"
tr = 2.0
participant_feedback = {"true" if participant_feedback else "false"}

{blocks_toml(blocks)}
[preprocess]
{preprocess}
fd_threshold = 2.0

[rois.insula]
simulator_roi = "left_insula"
[rois.seed]
simulator_roi = "seed"
[rois.target]
simulator_roi = "target"

[metric]
{metric}

[feedback]
{feedback}
{extra}
[output]
zmq_address = "tcp://127.0.0.1:{free_port()}"
"""
    path = folder / "protocol.toml"
    path.write_text(text)
    return path


def run_loop(folder: Path, protocol_path: Path, model: str = "responder", *, run: int = 1,
             seed: int = 0, speed: float = 60.0, max_motion: float = 1.0,
             model_kwargs=None, session_kwargs=None) -> dict:
    """One closed-loop session; returns the record, the truth and the display's messages."""
    protocol = load_protocol(protocol_path)
    subject = make_participant(protocol_path, ParticipantModel(kind=model, run=run,
                                                                **(model_kwargs or {})),
                               shape=SHAPE, motion=True, seed=seed,
                               max_translation=max_motion, max_rotation=max_motion)
    subj_dir = folder / "subject"
    write_subject(subject, subj_dir)
    export = folder / "export"
    export.mkdir()
    session = Session(protocol, folder / "record", source_info={"kind": "simulate"},
                      simulator_dir=subj_dir, **(session_kwargs or {}))
    with FeedbackPublisher(protocol.output.zmq_address, session_id=session.session_id,
                           on_sent=session.record_message) as publisher:
        session.publisher = publisher
        display = HeadlessDisplay(publisher.endpoint)
        display.start()
        time.sleep(0.2)
        with FolderWatcher(export, gap_timeout=2.0) as watcher:
            player = threading.Thread(target=stream, args=(subj_dir, export), kwargs=dict(
                speed=speed, manifest=folder / "m.json", log=lambda _m: None))
            player.start()
            session.run(watcher, idle_timeout=10.0)
            player.join()
        time.sleep(0.3)
        display.stop()
    session.close()
    return dict(record=load_record(folder / "record"), subject=subject, protocol=protocol,
                display=display, truth=json.loads((subj_dir / "truth.json").read_text()))


def declared_clean(protocol, x: np.ndarray, t: int, n: int) -> np.ndarray:
    """The last ``n`` samples up to volume ``t`` of the series ``x`` (voxels x time), cleaned
    by the protocol's declared drift model as the session's cumulative GLM does.

    The least-squares fit of polynomials of degree <= ``drift_order`` in time to volumes
    0..t (numpy only: ``np.vander`` + ``np.linalg.lstsq``; the same space as the Legendre
    basis), residuals plus the series' value at the reference volume 0. ``glm = "none"``:
    ``x`` as it is. Other nuisance models are not needed by these tests and raise.
    """
    pp = protocol.preprocess
    x = np.asarray(x, dtype=np.float64)
    if pp.glm == "none":
        return x[:, t - n + 1:t + 1]
    if (pp.glm != "cumulative" or pp.drift not in ("legendre", "polynomial")
            or pp.motion_regressors or pp.reference_volume != 0):
        raise NotImplementedError(f"no oracle for the nuisance model {pp}")
    design = np.vander(np.arange(t + 1) / protocol.session.volumes, pp.drift_order + 1)
    coef, *_ = np.linalg.lstsq(design, x[:, :t + 1].T, rcond=None)
    resid = x[:, :t + 1] - (design @ coef).T
    return resid[:, t - n + 1:] + x[:, :1]


def truth_metric(loop: dict) -> np.ndarray:
    """The protocol's metric on the participant's true ROI series, at every volume.

    True series: no drift, no motion, thermal noise included (``SyntheticSubject.series``),
    cleaned by the protocol's declared drift model (:func:`declared_clean`); NaN in
    warm-up. This is what a preprocessing without realignment error recovers.

    Why the declared drift model belongs to the truth: fitted on the volumes so far, it also
    removes the part of the true signal that looks like a low-order polynomial over them
    (below ~0.02 Hz over 60 volumes). Over the 60-volume baseline of these tests this
    changes the seed-FC baseline of one run by a random amount, sd 8.8 % over 12 seeds
    (mean +0.2 % +- 2.5 %: no bias), so a 5 % comparison with the undrifted series on one
    run would test chance, not bias. The planted drift lies in the model's span and is
    removed exactly, so measured minus truth is what realignment leaves.
    """
    protocol, series = loop["protocol"], loop["subject"].series
    m = protocol.metric
    names = {r: protocol.rois[r].simulator_roi for r in protocol.rois}
    n = protocol.session.volumes
    out = np.full(n, np.nan)
    w = m.window

    def window(roi, t, size):
        return declared_clean(protocol, series[names[roi]], t, size)

    for t in range(n):
        if m.kind == "psc":
            if t < w:
                continue
            values = []
            for roi in m.rois:
                x = window(roi, t, w + 1).mean(axis=0)
                values.append(psc(x, slice(0, w))[-1])
            out[t] = values[0] - (values[1] if len(values) > 1 else 0.0)
            continue
        if t < w - 1:
            continue
        if m.kind == "alff":
            out[t] = alff(window(m.roi, t, w), 2.0, m.band).mean()
        elif m.kind in ("seed_fc", "roi_fc"):
            seed = window(m.seed, t, w).mean(axis=0)
            target = window(m.target, t, w)
            if m.kind == "roi_fc":
                target = target.mean(axis=0)
            out[t] = np.mean(seed_fc(seed, target))
    return out


def predicted_bar(loop: dict, metric: np.ndarray) -> np.ndarray:
    """The bar the mapping gives for a metric series (baseline: its baseline-block mean)."""
    fb = loop["protocol"].feedback
    block = loop["protocol"].baseline_block
    mapper = FeedbackMapper(direction=fb.direction, scale=fb.scale, clip=tuple(fb.clip),
                            smoothing=fb.smoothing, target=fb.target, change=fb.change)
    base = metric[block.start:block.stop]
    mapper.set_baseline(base[np.isfinite(base)])
    return np.array([np.nan if not np.isfinite(v) else mapper.transform(v) for v in metric])


def recorded(loop: dict, key: str) -> np.ndarray:
    vals = []
    for v in loop["record"].volumes:
        x = v["metrics"].get(key) if key != "feedback_value" else v["feedback_value"]
        vals.append(np.nan if x is None else x)
    return np.array(vals, dtype=float)


def block_contrasts(protocol, series: np.ndarray, active="regulate",
                    baseline_level: float | None = None) -> list[tuple]:
    """(mean over the second half of each active block, mean over the second half of the
    block before it); the feedback baseline block counts as ``baseline_level`` when given
    (the bar is 0.5 there by definition of the mapping)."""
    out = []
    blocks = protocol.blocks
    for i, b in enumerate(blocks):
        if b.condition != active or i == 0:
            continue
        prev = blocks[i - 1]
        half = series[b.start + b.volumes // 2:b.stop]
        if baseline_level is not None and prev.index == protocol.feedback.baseline_block:
            before = baseline_level
        else:
            before = float(np.nanmean(series[prev.start + prev.volumes // 2:prev.stop]))
        out.append((float(np.nanmean(half)), before))
    return out
