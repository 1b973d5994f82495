"""Small protocols and synthetic subjects for session tests."""

from __future__ import annotations

import socket
from pathlib import Path

from simulator import make_subject, write_subject


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alff_protocol(folder: Path, subject_dir: Path, *, volumes=60, window=20, port=None) -> Path:
    """ALFF down-regulation on the synthetic subject's left insula (native ROI file)."""
    port = port or free_port()
    third = volumes // 3
    text = f"""
[session]
name = "test_alff"
tr = 2.0
volumes = {volumes}
participant_feedback = true

[[blocks]]
condition = "baseline"
volumes = {third}
cue = "Rest"
feedback = false

[[blocks]]
condition = "regulate"
volumes = {third}
cue = "Lower the bar"
feedback = true

[[blocks]]
condition = "rest"
volumes = {volumes - 2 * third}
cue = "Rest"
feedback = false

[preprocess]
realign = true
glm = "cumulative"
fd_threshold = 0.5

[rois.left_insula]
file = "{subject_dir / 'roi-left_insula.nii.gz'}"
space = "native"

[metric]
kind = "alff"
roi = "left_insula"
window = {window}
band = [0.01, 0.25]

[feedback]
baseline = "block:baseline"
direction = "down"
change = "relative"
scale = 0.2
clip = [0.0, 1.0]
smoothing = 1.0
target = 0.75

[output]
zmq_address = "tcp://127.0.0.1:{port}"
"""
    path = folder / "protocol.toml"
    path.write_text(text)
    return path


def subject(folder: Path, volumes=60, shape=(20, 20, 12), seed=0) -> Path:
    out = folder / "subject"
    write_subject(make_subject(shape=shape, n_volumes=volumes, motion=True, seed=seed), out)
    return out
