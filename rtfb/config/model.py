"""The protocol's typed model: frozen dataclasses, one per table of a protocol file.

Build them through the loaders of :mod:`rtfb.config.protocol` (constructing or
``dataclasses.replace``-ing them directly skips the validation).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Block",
    "FeedbackConfig",
    "FrozenMap",
    "MetricConfig",
    "MniSphere",
    "OutputConfig",
    "PreprocessConfig",
    "Protocol",
    "RoiConfig",
    "SessionConfig",
]


class FrozenMap(Mapping):
    """A read-only, hashable, picklable mapping (the ``rois`` of a :class:`Protocol`)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None):
        self._data = dict(data or {})

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __reduce__(self):
        return type(self), (self._data,)


@dataclass(frozen=True)
class SessionConfig:
    """``[session]``: identity and timing of the run.

    Attributes
    ----------
    name : str
        Protocol name (``[a-z0-9_]+``), used in session folder names.
    tr : float
        Repetition time in seconds.
    volumes : int
        Planned number of volumes (the sum of the blocks when not written).
    description : str
        Free text.
    participant_feedback : bool
        Whether the participant sees feedback (``False``: monitoring, operator view only).
    """

    name: str
    tr: float
    volumes: int
    description: str = ""
    participant_feedback: bool = True


@dataclass(frozen=True)
class Block:
    """One ``[[blocks]]`` entry, with its position in the run.

    Attributes
    ----------
    index : int
        0-based position in ``Protocol.blocks``.
    condition : str
        Label (``rest``, ``regulate``, ``baseline``, ``needling``, ...).
    volumes : int
        Duration in volumes.
    start : int
        0-based index of its first volume; the block covers ``start .. stop - 1``.
    cue : str
        Text shown to the participant during the block.
    feedback : bool
        Whether the feedback display (thermometer) is shown during the block.
    """

    index: int
    condition: str
    volumes: int
    start: int
    cue: str = ""
    feedback: bool = False

    @property
    def stop(self) -> int:
        """0-based index one past its last volume."""
        return self.start + self.volumes

    def contains(self, volume_index: int) -> bool:
        """Whether the 0-based volume index lies in the block."""
        return self.start <= volume_index < self.stop


@dataclass(frozen=True)
class PreprocessConfig:
    """``[preprocess]``: per-volume cleaning (see ``rtfb.preprocess``).

    ``drift`` is ``"none"`` and ``motion_regressors`` ``False`` when ``glm == "none"``;
    ``glm_window`` is set (default: the metric window) exactly when ``glm == "sliding"``;
    ``brain_mask`` is ``"auto"`` or an absolute :class:`~pathlib.Path`.
    """

    realign: bool = True
    reference_volume: int = 0
    interpolation: str = "linear"
    smoothing_fwhm: float = 0.0
    drift: str = "legendre"
    drift_order: int = 2
    drift_cutoff: float = 128.0
    motion_regressors: bool = True
    glm: str = "cumulative"
    glm_window: int | None = None
    fd_threshold: float = 0.5
    brain_mask: str | Path = "auto"


@dataclass(frozen=True)
class MniSphere:
    """A sphere in MNI space: ``center`` (x, y, z) and ``radius``, in mm."""

    center: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class RoiConfig:
    """One ``[rois.<name>]`` entry.

    At most one of ``file`` and ``mni_sphere`` is set (the ROI used with a scanner);
    ``simulator_roi`` may be given with either (it then replaces it in ``--simulate``
    sessions only), or alone (a protocol for the simulator only).

    Attributes
    ----------
    name : str
        ROI name (the table key).
    file : pathlib.Path | None
        Absolute path of a NIfTI mask (resampled to the functional grid).
    space : {"mni", "native"} | None
        Space of ``file``: MNI (brought to the session with the registration to MNI) or the
        scanner's native world coordinates.
    mni_sphere : MniSphere | None
        Sphere in MNI mm (brought to the session with the registration to MNI).
    simulator_roi : str | None
        Name of the synthetic subject's ground-truth ROI used instead with ``--simulate``.
    """

    name: str
    file: Path | None = None
    space: str | None = None
    mni_sphere: MniSphere | None = None
    simulator_roi: str | None = None

    @property
    def kind(self) -> str:
        """``"file"``, ``"mni_sphere"`` or ``"simulator"`` (simulator-only ROI)."""
        if self.file is not None:
            return "file"
        if self.mni_sphere is not None:
            return "mni_sphere"
        return "simulator"


@dataclass(frozen=True)
class MetricConfig:
    """``[metric]``: the metric computed every TR (see ``rtfb.metrics``).

    Attributes
    ----------
    kind : {"psc", "alff", "falff", "reho", "seed_fc", "roi_fc"}
        Metric fed back (``roi_fc``: Fisher z between the seed ROI's and the target ROI's
        mean series).
    window : int
        Sliding window in volumes.
    roi : str | None
        ROI whose value is fed back (all kinds but ``seed_fc``).
    seed, target : str | None
        ``seed_fc`` only: seed ROI and target ROI.
    band : tuple of 2 float
        ALFF / fALFF band in Hz (inclusive).
    convention : {"rtfb", "dpabi"}
        ALFF / fALFF definition (``rtfb.metrics.alff``); both are exact incrementally.
    neighborhood : {7, 19, 27}
        ReHo neighbourhood.
    whole_brain : bool
        Also compute the whole-brain ``maps`` every TR (monitoring).
    maps : tuple of str
        Whole-brain maps among ``"alff"``, ``"falff"``, ``"reho"``; with a feedback
        baseline block, change maps are relative to the maps at the end of that block.
    subtract_roi : str | None
        ROI whose metric value is subtracted from ``roi``'s (ROI difference feedback, e.g.
        left insula minus anterior cingulate); kinds psc, alff, falff, reho.
    """

    kind: str
    window: int = 64
    roi: str | None = None
    seed: str | None = None
    target: str | None = None
    band: tuple[float, float] = (0.01, 0.08)
    convention: str = "rtfb"
    neighborhood: int = 27
    whole_brain: bool = False
    maps: tuple[str, ...] = ()
    subtract_roi: str | None = None

    @property
    def rois(self) -> tuple[str, ...]:
        """Names of the ROIs the metric reads (roi and subtract_roi, or seed and target)."""
        if self.kind in ("seed_fc", "roi_fc"):
            return (self.seed, self.target)
        return (self.roi,) if self.subtract_roi is None else (self.roi, self.subtract_roi)


@dataclass(frozen=True)
class FeedbackConfig:
    """``[feedback]``: metric value -> display value in [0, 1] (contract in the docs).

    Attributes
    ----------
    direction : {"up", "down"}
        Which change of the metric moves the bar up.
    baseline : str
        ``"block:<condition>"`` (mean metric over the first block of that condition) or
        ``"none"`` (baseline 0).
    baseline_block : int | None
        Index in ``Protocol.blocks`` of the baseline block.
    change : {"relative", "difference"}
        ``(m - b) / |b|`` or ``m - b``.
    scale : float
        Change that moves the bar from the middle (0.5) to the top (1.0).
    clip : tuple of 2 float
        Display range, within [0, 1].
    smoothing : float
        Weight of the new value in the exponential smoothing, in (0, 1] (1 = none).
    target : float
        Target line position in [0, 1] (the starting one with ``shaping``).
    schedule : {"continuous", "intermittent"}
        When the bar is shown during feedback blocks (see ``rtfb.session.schedules``).
    every : int
        ``intermittent``: show every ``every``-th volume of a feedback block; 0 = once, at
        its last volume.
    sham : pathlib.Path | None
        Session folder whose shown feedback series the participant sees instead (sham).
    shaping : bool
        Adapt the target after each feedback block.
    shaping_step, shaping_success : float
        Target change per block; fraction of the block's shown values at or above the
        target that makes it harder.
    shaping_from : pathlib.Path | None
        Previous session of the same participant: start from the target it ended with.
    max_delay : float | None
        Seconds after its file was complete within which a feedback value may still be shown
        (older values are published flagged ``stale``, with no value); None: half a TR.
    """

    direction: str
    baseline: str = "none"
    baseline_block: int | None = None
    change: str = "difference"
    scale: float = 1.0
    clip: tuple[float, float] = (0.0, 1.0)
    smoothing: float = 1.0
    target: float = 0.75
    schedule: str = "continuous"
    every: int = 0
    sham: Path | None = None
    shaping: bool = False
    shaping_step: float = 0.05
    shaping_success: float = 0.5
    shaping_from: Path | None = None
    max_delay: float | None = None


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where messages and maps go."""

    zmq_address: str = "tcp://127.0.0.1:5556"
    write_maps_every: int = 0


@dataclass(frozen=True)
class Protocol:
    """A validated session protocol.

    Attributes
    ----------
    session : SessionConfig
    blocks : tuple of Block
        In order, covering volumes ``0 .. session.volumes - 1`` exactly.
    preprocess : PreprocessConfig
    rois : Mapping[str, RoiConfig]
        Read-only, in file order.
    metric : MetricConfig
    feedback : FeedbackConfig
        Always present: a protocol without participant feedback may leave ``[feedback]``
        out (defaults; the value then only drives the operator view), or use it for the
        operator view and for the baseline of change maps.
    output : OutputConfig
    source : str
        File name given to the loader (``"<string>"`` for a mapping).
    path : pathlib.Path | None
        Absolute path of the file.
    sha256 : str | None
        SHA-256 of the file's bytes.
    """

    session: SessionConfig
    blocks: tuple[Block, ...]
    preprocess: PreprocessConfig
    rois: Mapping[str, RoiConfig]
    metric: MetricConfig
    feedback: FeedbackConfig
    output: OutputConfig
    source: str = "<string>"
    path: Path | None = None
    sha256: str | None = field(default=None, compare=False)

    @property
    def n_volumes(self) -> int:
        """Planned number of volumes (``session.volumes``)."""
        return self.session.volumes

    def block_at(self, volume_index: int) -> Block | None:
        """Block of a 0-based volume index; ``None`` past the planned end of the run."""
        if volume_index < 0:
            raise ValueError(f"volume_index must be >= 0, got {volume_index}.")
        starts = [b.start for b in self.blocks]
        block = self.blocks[bisect.bisect_right(starts, volume_index) - 1]
        return block if block.contains(volume_index) else None

    @property
    def baseline_block(self) -> Block | None:
        """The feedback baseline block, if any."""
        if self.feedback.baseline_block is None:
            return None
        return self.blocks[self.feedback.baseline_block]
