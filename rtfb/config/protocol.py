"""Session protocols: TOML files -> validated, frozen dataclasses.

A protocol says what a session does: its timing (TR, number of volumes, blocks and their
cues), the preprocessing, the regions of interest, the metric fed back and how it is scaled
to the display. :func:`load_protocol` reads a file, :func:`parse_protocol` a mapping (e.g.
the result of ``tomllib.loads``). Both validate every key, fill in the defaults, resolve
relative file paths against the protocol's folder, check the fields against each other,
and return a :class:`Protocol`. Any problem raises :class:`~rtfb.exceptions.ProtocolError`
(a ``ValueError``) naming the file, the dotted key and what was expected.

The keys, their defaults and the shipped protocols are documented in ``docs/protocols.md``.
The frozen dataclasses they return are in :mod:`rtfb.config.model`; build them through the
loaders (constructing or ``dataclasses.replace``-ing them directly skips the validation).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..exceptions import ProtocolError
from ._validate import REQUIRED, Section, describe
from .model import (
    Block,
    FeedbackConfig,
    FrozenMap,
    MetricConfig,
    MniSphere,
    OutputConfig,
    PreprocessConfig,
    Protocol,
    RoiConfig,
    SessionConfig,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_protocol", "loads_protocol", "parse_protocol"]

NAME_PATTERN = r"[a-z0-9_]+"
CONDITION_PATTERN = r"[A-Za-z0-9_-]+"
METRIC_KINDS = ("psc", "alff", "falff", "reho", "seed_fc", "roi_fc")
MAP_KINDS = ("alff", "falff", "reho")
MIN_WINDOW = {"psc": 1, "alff": 3, "falff": 3, "reho": 2, "seed_fc": 3, "roi_fc": 3}
SCHEDULES = ("continuous", "intermittent")
DRIFT_KINDS = ("legendre", "polynomial", "cosine", "none")
GLM_MODES = ("cumulative", "sliding", "none")
ZMQ_SCHEMES = ("tcp", "ipc", "inproc")

_TOP_KEYS = ("session", "blocks", "preprocess", "rois", "metric", "feedback", "output")
_SESSION_KEYS = ("name", "description", "tr", "volumes", "participant_feedback")
_BLOCK_KEYS = ("condition", "volumes", "cue", "feedback")
_PREPROCESS_KEYS = ("realign", "reference_volume", "interpolation", "smoothing_fwhm", "drift",
                    "drift_order", "drift_cutoff", "motion_regressors", "glm", "glm_window",
                    "fd_threshold", "brain_mask")
_ROI_KEYS = ("file", "space", "mni_sphere", "simulator_roi")
_SPHERE_KEYS = ("center", "radius")
_METRIC_KEYS = ("kind", "roi", "seed", "target", "window", "band", "convention", "neighborhood",
                "whole_brain", "maps", "subtract_roi")
_FEEDBACK_KEYS = ("baseline", "direction", "change", "scale", "clip", "smoothing", "target",
                  "schedule", "every", "sham", "shaping", "shaping_step", "shaping_success",
                  "shaping_from", "max_delay")
_OUTPUT_KEYS = ("zmq_address", "write_maps_every")



# --------------------------------------------------------------------------------- loaders


def load_protocol(path: str | os.PathLike,
                  base_dir: str | os.PathLike | None = None) -> Protocol:
    """Read and validate a protocol file.

    Parameters
    ----------
    path : str | os.PathLike
        TOML file.
    base_dir : str | os.PathLike | None
        Folder against which relative file paths inside the protocol are resolved;
        default: the file's folder. (A copy of a protocol, e.g. in a session record,
        is loaded with the original protocol's folder.)

    Returns
    -------
    Protocol

    Raises
    ------
    ProtocolError
        If the file cannot be read, is not valid TOML, or any key is invalid.
    """
    source = os.fspath(path)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise ProtocolError(source, None, "protocol file not found.") from err
    except OSError as err:
        raise ProtocolError(source, None, f"cannot read the protocol file: {err}.") from err
    base = path.resolve().parent if base_dir is None else base_dir
    protocol = loads_protocol(raw, source=source, base_dir=base)
    return replace(protocol, path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest())


def loads_protocol(text: str | bytes, source: str = "<string>",
                   base_dir: str | os.PathLike | None = None) -> Protocol:
    """Validate a protocol given as TOML text (see :func:`parse_protocol`)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(source, None, f"not UTF-8 text ({err}).") from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProtocolError(source, None, f"invalid TOML: {err}.") from err
    except RecursionError:
        raise ProtocolError(source, None, "invalid TOML: arrays or tables nested too "
                            "deeply.") from None
    return parse_protocol(data, source=source, base_dir=base_dir)


def parse_protocol(mapping: Mapping[str, Any], source: str = "<string>",
                   base_dir: str | os.PathLike | None = None) -> Protocol:
    """Validate a protocol given as a mapping (e.g. ``tomllib.load``'s result).

    Parameters
    ----------
    mapping : Mapping
        The protocol's tables.
    source : str
        Name used in error messages (the file name).
    base_dir : str | os.PathLike | None
        Folder against which relative file paths are resolved (default: the current
        working directory).

    Returns
    -------
    Protocol

    Raises
    ------
    ProtocolError
        On the first invalid key.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    top = Section(mapping, "", source, _TOP_KEYS)
    session_sec = top.table("session", _SESSION_KEYS, required=True)
    session = _parse_session(session_sec)
    blocks = _parse_blocks(top, session_sec, session)
    session = replace(session, volumes=blocks[-1].stop)
    rois = _parse_rois(top, base)
    metric = _parse_metric(top, session, rois)
    preprocess = _parse_preprocess(top, session, metric, base)
    feedback = _parse_feedback(top, session, blocks, metric, base)
    output = _parse_output(top, metric)
    return Protocol(session=session, blocks=blocks, preprocess=preprocess, rois=rois,
                    metric=metric, feedback=feedback, output=output, source=source)


# ------------------------------------------------------------------------------- sections


def _parse_session(sec: Section) -> SessionConfig:
    volumes = sec.integer("volumes", None, ge=1)
    return SessionConfig(
        name=sec.string("name", pattern=NAME_PATTERN, what="a name"),
        description=sec.string("description", ""),
        tr=sec.number("tr", gt=0, unit="seconds"),
        volumes=volumes if volumes is not None else 0,  # set from the blocks if absent
        participant_feedback=sec.boolean("participant_feedback", True),
    )


def _parse_blocks(top: Section, session_sec: Section,
                  session: SessionConfig) -> tuple[Block, ...]:
    if not top.has("blocks"):
        if not session_sec.has("volumes"):
            raise session_sec.error("volumes", "required key is missing; expected an integer >= 1 "
                                    "(required when there are no [[blocks]]).")
        return (Block(index=0, condition="run", volumes=session.volumes, start=0,
                      feedback=session.participant_feedback),)
    raw = top.data["blocks"]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise top.error("blocks", f"expected a non-empty array of tables ([[blocks]]), got "
                        f"{describe(raw)}.")
    blocks = []
    start = 0
    for i, item in enumerate(raw):
        sec = Section(item, f"blocks[{i}]", top.source, _BLOCK_KEYS)
        block = Block(
            index=i,
            condition=sec.string("condition", pattern=CONDITION_PATTERN, what="a label"),
            volumes=sec.integer("volumes", ge=1),
            start=start,
            cue=sec.string("cue", ""),
            feedback=sec.boolean("feedback", False),
        )
        if block.feedback and not session.participant_feedback:
            raise sec.error("feedback", "true, but session.participant_feedback is false "
                            "(a monitoring protocol shows no feedback to the participant).")
        blocks.append(block)
        start = block.stop
    if session_sec.has("volumes") and start != session.volumes:
        listing = " + ".join(str(b.volumes) for b in blocks)
        raise top.error("blocks", f"the blocks last {listing} = {start} volumes, but "
                        f"session.volumes = {session.volumes}; they must be equal (or leave "
                        f"session.volumes out).")
    if session.participant_feedback and not any(b.feedback for b in blocks):
        raise top.error("blocks", "no block has feedback = true, but "
                        "session.participant_feedback is true.")
    return tuple(blocks)


def _parse_rois(top: Section, base: Path) -> FrozenMap:
    sec = top.table("rois", None)
    if sec is None:
        return FrozenMap()
    rois = {}
    for name, value in sec.data.items():
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise sec.error(str(name), f"ROI names must match {NAME_PATTERN}, got {name!r}.")
        roi = Section(value, sec.key(name), top.source, _ROI_KEYS)
        definitions = [k for k in ("file", "mni_sphere") if roi.has(k)]
        if len(definitions) > 1:
            raise roi.error(None, "has two definitions (file and mni_sphere); give one.")
        if not definitions and not roi.has("simulator_roi"):
            raise roi.error(None, "has no definition: give file, mni_sphere or "
                            "simulator_roi.")
        roi.forbid_unless("space", roi.has("file"), "file is given")
        path = space = sphere = None
        if roi.has("file"):
            path = _resolve_file(roi, "file", base)
            space = roi.string("space", choices=("mni", "native"))
        if roi.has("mni_sphere"):
            sub = roi.table("mni_sphere", _SPHERE_KEYS)
            sphere = MniSphere(
                center=sub.numbers("center", length=3, what="MNI coordinates in mm"),
                radius=sub.number("radius", gt=0, unit="mm"))
        rois[name] = RoiConfig(
            name=name, file=path, space=space, mni_sphere=sphere,
            simulator_roi=roi.string("simulator_roi", None, pattern=NAME_PATTERN,
                                     what="a simulator ROI name"))
    return FrozenMap(rois)


def _parse_metric(top: Section, session: SessionConfig,
                  rois: Mapping[str, RoiConfig]) -> MetricConfig:
    sec = top.table("metric", _METRIC_KEYS, required=True)
    kind = sec.string("kind", choices=METRIC_KINDS)
    whole_brain = sec.boolean("whole_brain", False)
    maps = sec.strings("maps", (), choices=MAP_KINDS)
    if maps and not whole_brain:
        raise sec.error("maps", "maps are computed only with whole_brain = true.")
    if whole_brain and not maps:
        raise sec.error("maps", 'whole_brain = true needs at least one map, e.g. ["alff"].')
    used = {kind, *maps}
    fc = kind in ("seed_fc", "roi_fc")
    sec.forbid_unless("roi", not fc, f"kind is not {kind!r} (use seed and target)")
    for name in ("seed", "target"):
        sec.forbid_unless(name, fc, "kind = 'seed_fc' or 'roi_fc'")
    sec.forbid_unless("subtract_roi", not fc, "kind is psc, alff, falff or reho")
    sec.forbid_unless("band", bool(used & {"alff", "falff"}),
                      "kind or maps include 'alff' or 'falff'")
    sec.forbid_unless("convention", bool(used & {"alff", "falff"}),
                      "kind or maps include 'alff' or 'falff'")
    sec.forbid_unless("neighborhood", "reho" in used, "kind or maps include 'reho'")
    convention = sec.string("convention", "rtfb", choices=("rtfb", "dpabi"))

    roi_names = ("seed", "target") if fc else (
        ("roi", "subtract_roi") if sec.has("subtract_roi") else ("roi",))
    names = {}
    for key in roi_names:
        name = sec.string(key, what="an ROI name")
        if name not in rois:
            defined = ", ".join(rois) or "none"
            raise sec.error(key, f"ROI {name!r} is not defined in [rois] (defined: "
                            f"{defined}).")
        names[key] = name
    if fc and names["seed"] == names["target"]:
        raise sec.error("target", f"must differ from the seed ({names['seed']!r}).")
    if names.get("subtract_roi") is not None and names["subtract_roi"] == names["roi"]:
        raise sec.error("subtract_roi", f"must differ from roi ({names['roi']!r}).")

    minimum = max(MIN_WINDOW[k] for k in used)
    window = sec.integer("window", 64, ge=minimum, unit="volumes")
    if window > session.volumes:
        raise sec.error("window", f"{window} volumes is longer than the run "
                        f"(session.volumes = {session.volumes}): the metric would never be "
                        f"computed.")
    band = sec.numbers("band", (0.01, 0.08), length=2, what="(low, high) in Hz", ge=0)
    if used & {"alff", "falff"}:
        low, high = band
        if not low < high:
            raise sec.error("band", f"expected low < high, got {list(band)}.")
        nyquist = 0.5 / session.tr
        if high > nyquist:
            raise sec.error("band", f"the upper edge {high:g} Hz is above the Nyquist "
                            f"frequency {nyquist:g} Hz of tr = {session.tr:g} s.")
        from ..metrics import band_bins  # numba import: only when needed
        from ..preprocess.bandpass import dpabi_band_indices

        try:
            if convention == "dpabi":
                dpabi_band_indices(window, session.tr, band)
            else:
                band_bins(window, session.tr, band)
        except ValueError as err:
            raise sec.error("window", f"too short for the band: {err}") from err
    neighborhood = sec.integer("neighborhood", 27)
    if neighborhood not in (7, 19, 27):
        raise sec.error("neighborhood", f"expected one of 7, 19, 27, got {neighborhood}.")
    return MetricConfig(kind=kind, window=window, roi=names.get("roi"), seed=names.get("seed"),
                        target=names.get("target"), band=band, convention=convention,
                        neighborhood=neighborhood, whole_brain=whole_brain, maps=maps,
                        subtract_roi=names.get("subtract_roi"))


def _parse_preprocess(top: Section, session: SessionConfig, metric: MetricConfig,
                      base: Path) -> PreprocessConfig:
    sec = top.table("preprocess", _PREPROCESS_KEYS)
    if sec is None:
        sec = Section({}, "preprocess", top.source, _PREPROCESS_KEYS)
    realign = sec.boolean("realign", True)
    sec.forbid_unless("interpolation", realign, "realign = true")
    sec.forbid_unless("fd_threshold", realign, "realign = true (FD needs motion estimates)")
    reference = sec.integer("reference_volume", 0, ge=0)
    if reference >= session.volumes:
        raise sec.error("reference_volume", f"expected an index < session.volumes = "
                        f"{session.volumes} (0 = first volume), got {reference}.")
    glm = sec.string("glm", "cumulative", choices=GLM_MODES)
    for name in ("drift", "motion_regressors"):
        sec.forbid_unless(name, glm != "none", "glm is not 'none'")
    drift = sec.string("drift", "legendre" if glm != "none" else "none", choices=DRIFT_KINDS)
    sec.forbid_unless("drift_order", drift in ("legendre", "polynomial"),
                      "drift is 'legendre' or 'polynomial'")
    sec.forbid_unless("drift_cutoff", drift == "cosine", "drift = 'cosine'")
    motion = sec.boolean("motion_regressors", realign and glm != "none")
    if motion and not realign:
        raise sec.error("motion_regressors", "true, but realign = false: there are no motion "
                        "parameters.")
    if glm != "none" and drift == "none" and not motion:
        raise sec.error("glm", f"{glm!r} needs regressors, but drift = 'none' and "
                        f"motion_regressors = false (set glm = 'none').")
    if glm != "none" and drift != "none" and session.volumes < 2:
        raise sec.error("drift", "a drift model needs session.volumes >= 2.")
    sec.forbid_unless("glm_window", glm == "sliding", "glm = 'sliding'")
    glm_window = sec.integer("glm_window", metric.window, ge=2, unit="volumes")
    if glm == "sliding" and glm_window > session.volumes:
        raise sec.error("glm_window", f"{glm_window} volumes is longer than the run "
                        f"(session.volumes = {session.volumes}).")
    brain_mask: str | Path = "auto"
    if sec.has("brain_mask"):
        value = sec.data["brain_mask"]
        if value != "auto":
            brain_mask = _resolve_file(sec, "brain_mask", base,
                                       expected='"auto" or the path of a NIfTI mask')
    return PreprocessConfig(
        realign=realign,
        reference_volume=reference,
        interpolation=sec.string("interpolation", "linear", choices=("linear", "cubic")),
        smoothing_fwhm=sec.number("smoothing_fwhm", 0.0, ge=0, unit="mm, 0 = none"),
        drift=drift,
        drift_order=sec.integer("drift_order", 2, ge=0),
        drift_cutoff=sec.number("drift_cutoff", 128.0, gt=0, unit="seconds"),
        motion_regressors=motion,
        glm=glm,
        glm_window=glm_window if glm == "sliding" else None,
        fd_threshold=sec.number("fd_threshold", 0.5, gt=0, unit="mm"),
        brain_mask=brain_mask,
    )


def _parse_feedback(top: Section, session: SessionConfig, blocks: tuple[Block, ...],
                    metric: MetricConfig, base: Path | None = None) -> FeedbackConfig:
    sec = top.table("feedback", _FEEDBACK_KEYS)
    if sec is None:
        if session.participant_feedback:
            raise top.error("feedback", "required table [feedback] is missing "
                            "(session.participant_feedback is true).")
        sec = Section({}, "feedback", top.source, _FEEDBACK_KEYS)
    # the direction matters to the participant: no default when they see the bar
    direction = sec.string("direction", REQUIRED if session.participant_feedback else "up",
                           choices=("up", "down"))
    baseline, baseline_block = _parse_baseline(sec, "baseline", blocks)
    if baseline_block is not None:
        block = blocks[baseline_block]
        first_fb = next((b for b in blocks if b.feedback), None)
        if first_fb is not None and block.stop > first_fb.start:
            raise sec.error("baseline", f"the baseline block (blocks[{block.index}], "
                            f"{block.condition!r}) must end before the first feedback block "
                            f"(blocks[{first_fb.index}], which starts at volume "
                            f"{first_fb.start}).")
        if block.stop < metric.window:
            raise sec.error("baseline", f"the baseline block (blocks[{block.index}], "
                            f"{block.condition!r}) ends at volume {block.stop}, before the "
                            f"first full metric window (metric.window = {metric.window}): "
                            f"the baseline would have no metric value.")
        if metric.maps and block.volumes < metric.window:
            raise top.error("metric.window", f"{metric.window} volumes does not fit in the "
                            f"baseline block (blocks[{block.index}], {block.condition!r}, "
                            f"{block.volumes} volumes) of feedback.baseline: the baseline "
                            f"maps would include other blocks.")
    default_change = ("relative" if baseline_block is not None and metric.subtract_roi is None
                      and metric.kind in ("alff", "falff", "reho") else "difference")
    change = sec.string("change", default_change, choices=("relative", "difference"))
    if change == "relative" and baseline_block is None:
        raise sec.error("change", "'relative' needs a baseline block (baseline = "
                        "\"block:<condition>\").")
    clip = sec.numbers("clip", (0.0, 1.0), length=2, what="display range [low, high]",
                       ge=0, le=1)
    if not clip[0] < clip[1]:
        raise sec.error("clip", f"expected low < high, got {list(clip)}.")
    target = sec.number("target", 0.75, ge=0, le=1)
    if not clip[0] <= target <= clip[1]:
        raise sec.error("target", f"{target:g} lies outside clip = {list(clip)}.")
    schedule = sec.string("schedule", "continuous", choices=SCHEDULES)
    sec.forbid_unless("every", schedule == "intermittent", "schedule = 'intermittent'")
    every = sec.integer("every", 0, ge=0, unit="volumes, 0 = once at the end of each "
                                                "feedback block")
    longest = max((b.volumes for b in blocks if b.feedback), default=0)
    if every > longest:
        raise sec.error("every", f"{every} volumes is longer than every feedback block "
                        f"(longest: {longest}): the bar would never be shown.")
    sham = None
    if sec.has("sham"):
        if not session.participant_feedback:
            raise sec.error("sham", "a monitoring protocol (participant_feedback = false) "
                            "shows nothing to sham.")
        sham = _resolve_record(sec, "sham", base)
    shaping = sec.boolean("shaping", False)
    for name in ("shaping_step", "shaping_success", "shaping_from"):
        sec.forbid_unless(name, shaping, "shaping = true")
    if shaping and sham is not None:
        raise sec.error("shaping", "true together with sham: a sham series does not depend "
                        "on performance; use one of them.")
    shaping_from = _resolve_record(sec, "shaping_from", base) if sec.has("shaping_from") \
        else None
    return FeedbackConfig(
        direction=direction, baseline=baseline, baseline_block=baseline_block, change=change,
        scale=sec.number("scale", 1.0, gt=0), clip=clip,
        smoothing=sec.number("smoothing", 1.0, gt=0, le=1), target=target,
        schedule=schedule, every=every, sham=sham, shaping=shaping,
        shaping_step=sec.number("shaping_step", 0.05, gt=0, le=0.5),
        shaping_success=sec.number("shaping_success", 0.5, gt=0, le=1),
        shaping_from=shaping_from,
        max_delay=sec.number("max_delay", None, gt=0, unit="seconds"))


def _parse_output(top: Section, metric: MetricConfig) -> OutputConfig:
    sec = top.table("output", _OUTPUT_KEYS)
    if sec is None:
        return OutputConfig()
    address = sec.string("zmq_address", "tcp://127.0.0.1:5556",
                         what="a ZeroMQ address (tcp://host:port, ipc://path, inproc://name)")
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ZMQ_SCHEMES or not rest:
        raise sec.error("zmq_address", f"expected a ZeroMQ address tcp://host:port, "
                        f"ipc://path or inproc://name, got {address!r}.")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise sec.error("zmq_address", f"expected tcp://host:port with a port in "
                            f"1..65535, got {address!r}.")
    sec.forbid_unless("write_maps_every", metric.whole_brain, "metric.whole_brain = true")
    return OutputConfig(zmq_address=address,
                        write_maps_every=sec.integer("write_maps_every", 0, ge=0,
                                                     unit="volumes, 0 = at block ends"))


# -------------------------------------------------------------------------------- helpers


def _parse_baseline(sec: Section, name: str,
                    blocks: tuple[Block, ...]) -> tuple[str, int | None]:
    """Read ``"none"`` or ``"block:<condition>"``; return it and the block index."""
    expected = '"none" or "block:<condition>"'
    value = sec.string(name, "none", what=expected)
    if value == "none":
        return value, None
    prefix, _, condition = value.partition(":")
    if prefix != "block" or not condition:
        raise sec.error(name, f"expected {expected}, got {value!r}.")
    for block in blocks:
        if block.condition == condition:
            return value, block.index
    conditions = ", ".join(dict.fromkeys(repr(b.condition) for b in blocks))
    raise sec.error(name, f"no block has condition {condition!r} (conditions: {conditions}).")


def _resolve_record(sec: Section, name: str, base: Path) -> Path:
    """A recorded session folder (relative paths against the protocol's folder)."""
    value = sec.data[name]
    if not isinstance(value, str) or not value:
        raise sec.error(name, f"expected the path of a recorded session folder, got "
                        f"{describe(value)}.")
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not (path / "volumes.jsonl").is_file():
        raise sec.error(name, f"not a recorded session folder (no volumes.jsonl): {path}.")
    return path


def _resolve_file(sec: Section, name: str, base: Path,
                  expected: str = "the path of a NIfTI file") -> Path:
    value = sec.data[name]
    if not isinstance(value, str) or not value:
        raise sec.error(name, f"expected {expected}, got {describe(value)}.")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    path = path.resolve()
    if not path.is_file():
        relative = "" if Path(value).expanduser().is_absolute() else (
            f" ({value!r} relative to the protocol's folder {base})")
        raise sec.error(name, f"file not found: {path}{relative}.")
    return path
