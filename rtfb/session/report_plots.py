"""Values and plots of the session report (:mod:`rtfb.session.report`).

Reading the per-volume series of a record (:class:`Series`), finding thresholds and
targets in the record, and drawing each plot on a matplotlib figure (Agg canvas, no pyplot
state) returned as a PNG data URI.
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..reporting import condition_colors
from ..reporting import new_figure as _new_figure
from ..reporting import png_uri as _png_uri
from . import report_blocks
from .record_reader import SessionRecord

_MOTION_LABELS = ("tx", "ty", "tz", "rx", "ry", "rz")
_FD_KEY = re.compile(r"^(fd_?(threshold|thresh|max|limit|cutoff)|(censor|max)_?fd"
                     r"|censor(ing)?_?threshold)$")
_FD_TABLE = re.compile(r"(fd|censor|motion)")


# --------------------------------------------------------------------------- values
def num(value: Any) -> float:
    """``value`` as float, NaN for ``None``, booleans, non-numbers and non-finite values."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def int_or_none(value: Any) -> int | None:
    """``value`` as int, or None unless it is an integer (booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    """A number for a table cell (``-`` for missing values), with its unit."""
    number = num(value)
    if math.isnan(number):
        return "n/a"
    return f"{number:.{digits}f}{(' ' + unit) if unit else ''}"


def fmt_time(value: Any) -> str:
    """An epoch time (or an already formatted one) as local date and time."""
    if isinstance(value, str):
        return value
    number = num(value)
    if math.isnan(number):
        return ""
    try:
        moment = _dt.datetime.fromtimestamp(number, tz=_dt.timezone.utc).astimezone()
    except (OverflowError, OSError, ValueError):
        return f"{number:.3f}"
    return moment.isoformat(timespec="milliseconds")


class Series:
    """Per-volume values laid out on the full index range (NaN where nothing was recorded)."""

    def __init__(self, volumes: Sequence[dict[str, Any]]):
        self.by_index: dict[int, dict[str, Any]] = {}
        for volume in volumes:
            index = int_or_none(volume.get("index"))
            if index is not None:
                self.by_index[index] = volume  # a re-processed index: the last one wins
        if self.by_index:
            self.x = np.arange(min(self.by_index), max(self.by_index) + 1)
        else:
            self.x = np.arange(0)

    def __len__(self) -> int:
        return len(self.by_index)

    def values(self, getter) -> np.ndarray:
        """``getter(volume)`` per volume index (NaN where missing or not a number)."""
        out = np.full(self.x.size, np.nan)
        start = self.x[0] if self.x.size else 0
        for index, volume in self.by_index.items():
            out[index - start] = num(getter(volume))
        return out

    def censored(self) -> np.ndarray:
        """Indices of the censored volumes."""
        return np.array(sorted(i for i, v in self.by_index.items() if v.get("censored") is True),
                        dtype=int)

    def block_runs(self) -> list[tuple[int, int, str]]:
        """``(first index, last index, condition)`` of each run of consecutive volumes.

        Volumes without a block are left out (not shaded).
        """
        runs: list[tuple[int, int, str]] = []
        current: tuple[Any, str] | None = None
        for index in sorted(self.by_index):
            block = self.by_index[index].get("block")
            if not isinstance(block, dict):
                current = None
                continue
            key = (block.get("index"), str(block.get("condition") or block.get("cue") or "block"))
            if current == key and runs and runs[-1][1] == index - 1:
                runs[-1] = (runs[-1][0], index, runs[-1][2])
            else:
                runs.append((index, index, key[1]))
            current = key
        return runs


def _get_motion(volume: dict[str, Any], k: int) -> Any:
    motion = volume.get("motion")
    if isinstance(motion, (list, tuple)) and len(motion) == 6:
        return motion[k]
    return None


def metric_names(volumes: Sequence[dict[str, Any]]) -> list[str]:
    """Metric names of the volumes' ``metrics``, in first-seen order."""
    names: dict[str, None] = {}
    for volume in volumes:
        metrics = volume.get("metrics")
        if isinstance(metrics, dict):
            for name, value in metrics.items():
                if value is None or (isinstance(value, numbers.Real)
                                     and not isinstance(value, bool)):
                    names.setdefault(str(name), None)
    return list(names)


def _find_number(obj: Any, key: str, depth: int = 3) -> float | None:
    """First finite number found under ``key`` in nested dicts (breadth first)."""
    level = [obj]
    for _ in range(depth):
        nested = []
        for item in level:
            if not isinstance(item, dict):
                continue
            if key in item:
                value = item[key]
                if isinstance(value, dict):
                    value = value.get("value")
                number = num(value)
                if not math.isnan(number):
                    return number
            nested.extend(v for v in item.values() if isinstance(v, dict))
        level = nested
    return None


def feedback_targets(messages: Sequence[dict[str, Any]]) -> list[tuple[int | None, float]]:
    """``(volume index, target)`` of every message that carries a feedback target."""
    points = []
    for entry in messages:
        message = entry.get("message") if isinstance(entry, dict) else None
        if not isinstance(message, dict):
            continue
        target = _find_number(message, "target")
        if target is not None:
            index = int_or_none(message.get("index", message.get("volume_index")))
            points.append((index, target))
    return points


def _fd_threshold_from(obj: Any, in_fd_table: bool = False, depth: int = 0) -> float | None:
    if not isinstance(obj, dict) or depth > 4:
        return None
    for key, value in obj.items():
        name = str(key).lower()
        if _FD_KEY.match(name) or (in_fd_table and name in ("threshold", "fd")):
            number = num(value)
            if not math.isnan(number):
                return number
    for key, value in obj.items():
        if isinstance(value, dict):
            found = _fd_threshold_from(value, bool(_FD_TABLE.search(str(key).lower())),
                                       depth + 1)
            if found is not None:
                return found
    return None


def find_fd_threshold(record: SessionRecord) -> float | None:
    """The FD censoring threshold from ``session.json`` or ``protocol.toml``, if recorded."""
    found = _fd_threshold_from(record.session)
    if found is not None:
        return found
    protocol = record.path / "protocol.toml"
    if not protocol.is_file():
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            return None
    try:
        config = tomllib.loads(protocol.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return _fd_threshold_from(config)


def event_indices(events: Sequence[dict[str, Any]], kind: str) -> tuple[int, list[int]]:
    """Number of ``kind`` events (distinct volume indices when given) and those indices."""
    indices: set[int] = set()
    without_index = 0
    for event in events:
        if event.get("kind") != kind:
            continue
        index = int_or_none(event.get("index"))
        if index is None:
            without_index += 1
        else:
            indices.add(index)
    return len(indices) + without_index, sorted(indices)


# --------------------------------------------------------------------------- plotting
def block_colors(runs: Sequence[tuple[int, int, str]]) -> dict[str, Any]:
    """Colour of each block condition (the shared report palette)."""
    return condition_colors(condition for _, _, condition in runs)


def _shade_blocks(ax, runs, colors, *, label: bool) -> None:
    from matplotlib.transforms import blended_transform_factory

    if not runs:
        return
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    lo, hi = runs[0][0], runs[-1][1]
    span = max(hi - lo + 1, 1)
    for first, last, condition in runs:
        ax.axvspan(first - 0.5, last + 0.5, color=colors[condition], alpha=0.6, lw=0, zorder=0)
        if label and (last - first + 1) / span >= 0.04:
            ax.text((first + last) / 2, 0.97, condition, transform=transform, ha="center",
                    va="top", fontsize=8, color="0.25", clip_on=True)


def _headroom(ax, runs) -> None:
    """Room above the data for the block labels."""
    if runs:
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + 0.15 * (high - low))


def _block_legend_handles(colors):
    from matplotlib.patches import Patch

    return [Patch(facecolor=c, alpha=0.6, label=f"block: {name}") for name, c in colors.items()]


def _add_time_axis(ax, tr: float | None) -> None:
    if tr is None or not tr > 0:
        return
    top = ax.secondary_xaxis("top", functions=(lambda i: i * tr, lambda s: s / tr))
    top.set_xlabel("time = index × TR (s)", fontsize=9)


def plot_feedback(series: Series, runs, colors, targets, missing: list[int],
                   tr: float | None, marks: Sequence[tuple[int, str]] = ()) -> str:
    """Feedback shown per volume with blocks, target, missing volumes and marks (PNG URI)."""
    figure = _new_figure(10, 3.4)
    ax = figure.add_subplot()
    _shade_blocks(ax, runs, colors, label=True)
    feedback = series.values(lambda v: v.get("feedback"))
    ax.plot(series.x, feedback, color="C0", lw=1.5, marker=".", ms=3, label="feedback")
    if targets:
        values = {t for _, t in targets}
        indexed = sorted((i, t) for i, t in targets if i is not None)
        if len(values) == 1 or not indexed:
            value = targets[-1][1]
            ax.axhline(value, color="C3", ls="--", lw=1.2, label=f"target ({value:g})")
        else:
            xs = [i for i, _ in indexed] + [series.x[-1] + 0.5]
            ys = [t for _, t in indexed] + [indexed[-1][1]]
            ax.step(xs, ys, where="post", color="C3", ls="--", lw=1.2, label="target")
    for k, index in enumerate(missing):
        ax.axvline(index, color="red", lw=0.8, alpha=0.7,
                   label="missing volume" if k == 0 else None)
    for k, (index, label) in enumerate(marks):  # operator marks (dashboard)
        ax.axvline(index, color="C9", lw=1.4, label="operator mark" if k == 0 else None)
        ax.text(index, 0.02, f" {label}", transform=ax.get_xaxis_transform(), rotation=90,
                fontsize=7, color="C9", va="bottom", clip_on=True)
    if np.all(np.isnan(feedback)):
        ax.text(0.5, 0.5, "no feedback value recorded (warm-up or no feedback)",
                transform=ax.transAxes, ha="center", va="center", color="0.4")
    _headroom(ax, runs)
    ax.set_xlabel("volume index")
    ax.set_ylabel("feedback value")
    ax.set_xlim(series.x[0] - 0.5, series.x[-1] + 0.5)
    ax.grid(alpha=0.3)
    _add_time_axis(ax, tr)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _block_legend_handles(colors), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png_uri(figure)


def plot_metrics(series: Series, names: list[str], runs, colors, labels=None,
                  baselines=None) -> str:
    """ROI metrics per volume, with their units and baselines (PNG data URI)."""
    figure = _new_figure(10, 0.6 + 1.7 * len(names))
    axes = figure.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for k, (ax, name) in enumerate(zip(axes, names, strict=True)):
        _shade_blocks(ax, runs, colors, label=k == 0)
        values = series.values(lambda v, n=name: (v.get("metrics") or {}).get(n)
                               if isinstance(v.get("metrics"), dict) else None)
        ax.plot(series.x, values, color=f"C{k % 10}", lw=1.3, label=name)
        base = (baselines or {}).get(name, math.nan)
        if not math.isnan(base):
            ax.axhline(base, color="k", ls=":", lw=1.2, label=f"baseline ({base:.3g})")
            ax.legend(loc="upper right", fontsize=8, frameon=False)
        if np.all(np.isnan(values)):
            ax.text(0.5, 0.5, "no value yet (warm-up)", transform=ax.transAxes, ha="center",
                    va="center", color="0.4")
        if k == 0:
            _headroom(ax, runs)
        ax.set_ylabel((labels or {}).get(name, name), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_xlim(series.x[0] - 0.5, series.x[-1] + 0.5)
    axes[-1].set_xlabel("volume index")
    return _png_uri(figure)


def plot_motion(series: Series, has_motion: bool, has_fd: bool, censored: np.ndarray,
                 threshold: float | None) -> str:
    """Motion parameters and FD with its threshold and censored volumes (PNG URI)."""
    rows = 2 * has_motion + has_fd
    figure = _new_figure(10, 0.6 + 2.0 * rows)
    axes = list(figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])
    panels = []
    if has_motion:
        panels.append((axes.pop(0), range(3), "translation (mm)"))
        panels.append((axes.pop(0), range(3, 6), "rotation (deg)"))
    for ax, ks, ylabel in panels:
        for k in ks:
            ax.plot(series.x, series.values(lambda v, k=k: _get_motion(v, k)), lw=1.2,
                    label=_MOTION_LABELS[k])
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    all_axes = [p[0] for p in panels]
    if has_fd:
        ax = axes.pop(0)
        all_axes.append(ax)
        fd = series.values(lambda v: v.get("fd"))
        ax.plot(series.x, fd, color="k", lw=1.2, label="FD")
        if threshold is not None:
            ax.axhline(threshold, color="C3", ls="--", lw=1.2,
                       label=f"threshold ({threshold:g} mm)")
        if censored.size:
            start = series.x[0]
            ax.plot(censored, fd[censored - start], ls="none", marker="o", mfc="none",
                    mec="C3", ms=6, label=f"censored ({censored.size})")
        ax.set_ylabel("FD (mm)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for ax in all_axes:
        for index in censored:
            ax.axvspan(index - 0.5, index + 0.5, color="C3", alpha=0.15, lw=0, zorder=0)
        ax.grid(alpha=0.3)
    all_axes[0].set_xlim(series.x[0] - 0.5, series.x[-1] + 0.5)
    all_axes[-1].set_xlabel("volume index (censored volumes shaded red)")
    return _png_uri(figure)


def plot_latency(latency: np.ndarray, median: float, p95: float) -> str:
    """Latency histogram (readable with one slow volume), as a PNG data URI."""
    figure = _new_figure(7, 3.0)
    ax = figure.add_subplot()
    bins, log = report_blocks.latency_bins(latency, median)
    ax.hist(latency, bins=bins, color="C0", alpha=0.8)
    if log:  # one slow volume (e.g. the first) must not squeeze every other bar
        ax.set_xscale("log")
        ax.set_title(f"log axis: slowest volume {latency.max():.0f} ms", fontsize=9)
    ax.axvline(median, color="k", lw=1.5, label=f"median {median:.1f} ms")
    ax.axvline(p95, color="C3", ls="--", lw=1.5, label=f"p95 {p95:.1f} ms")
    ax.set_xlabel("latency file complete → published (ms)")
    ax.set_ylabel("volumes")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _png_uri(figure)


def background_image(record: SessionRecord):
    """Mean of the recorded input volumes as a NIfTI image (None without inputs)."""
    import nibabel as nib

    mean = record.mean_input()
    if mean is None or mean.ndim != 3:
        return None
    affine = record.session.get("affine")
    if affine is None and record.inputs:
        affine = record.inputs[0].get("affine")
    try:
        affine = np.asarray(affine, dtype=float).reshape(4, 4)
    except (TypeError, ValueError):
        affine = np.eye(4)
    return nib.Nifti1Image(mean, affine)


def plot_map(path: Path, background) -> str:
    """A whole-brain map over the background image, as a PNG data URI."""
    import nibabel as nib
    from nilearn.plotting import plot_stat_map

    img = nib.load(path)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    while data.ndim > 3:  # a 4D map: its last volume
        data = data[..., -1]
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    stat = nib.Nifti1Image(data, img.affine)
    figure = _new_figure(9, 3.0, layout=None)  # nilearn places its own axes
    plot_stat_map(stat, bg_img=background, figure=figure, display_mode="ortho",
                  draw_cross=False, black_bg=False, colorbar=True,
                  title=path.name.removesuffix(".gz").removesuffix(".nii"))
    return _png_uri(figure)


