"""Report content about the feedback's validity: per-block summary, metric units and baseline,
ROI placement over the mean EPI, and a latency histogram that stays readable with outliers.

Used by :mod:`rtfb.session.report`; everything here reads only the session record (the
protocol copy is parsed with :mod:`tomllib`, so a record whose ROI files moved still reports).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

UNITS = {"alff": "signal units", "falff": "ratio", "reho": "Kendall's W",
         "seed_fc": "Fisher z", "roi_fc": "Fisher z", "psc": "%"}


def recorded_protocol(session_dir: Path) -> dict:
    """The protocol copy's tables (empty when absent or unreadable)."""
    try:
        return tomllib.loads((Path(session_dir) / "protocol.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def metric_label(protocol: dict, name: str) -> str:
    """Axis label of a recorded metric: name, ROI(s) and unit, one per line."""
    metric = protocol.get("metric", {})
    kind = metric.get("kind")
    base = name
    for suffix_kind in UNITS:
        if name == suffix_kind or name.startswith(suffix_kind + "_"):
            base = suffix_kind
            break
    unit = UNITS.get(base, "")
    where = ""
    if name == kind:
        if kind in ("seed_fc", "roi_fc"):
            where = f"{metric.get('seed')} → {metric.get('target')}"
        elif metric.get("subtract_roi"):
            where = f"{metric.get('roi')} − {metric.get('subtract_roi')}"
        else:
            where = str(metric.get("roi", ""))
    elif name == "roi_mean":
        where, unit = str(metric.get("roi", "")), "signal units"
    elif base != name:
        where = name[len(base) + 1:]
    label = name if not where else f"{name}\n{where}"
    return f"{label}\n({unit})" if unit else label


def baseline_condition(protocol: dict) -> str | None:
    """Condition of the feedback baseline block (``block:<condition>``), if any."""
    value = protocol.get("feedback", {}).get("baseline", "none")
    if isinstance(value, str) and value.startswith("block:"):
        return value.split(":", 1)[1]
    return None


def _first_block_volumes(volumes, condition) -> list[dict]:
    """Volumes of the first block with this condition."""
    out, index = [], None
    for v in volumes:
        block = v.get("block") or {}
        if block.get("condition") != condition:
            if out:
                break
            continue
        if index is None:
            index = block.get("index")
        if block.get("index") == index:
            out.append(v)
    return out


def _number(x: Any) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def baseline_value(volumes, protocol: dict, name: str) -> float:
    """Mean of a metric over the baseline block (NaN without one)."""
    cond = baseline_condition(protocol)
    if cond is None:
        return math.nan
    values = [_number((v.get("metrics") or {}).get(name))
              for v in _first_block_volumes(volumes, cond)]
    values = [x for x in values if not math.isnan(x)]
    return float(np.mean(values)) if values else math.nan


def block_rows(volumes, protocol: dict, targets: dict[int, float]) -> list[dict]:
    """One row per block: mean feedback shown, time above target, metric vs baseline.

    Parameters
    ----------
    volumes : list of dict
        The record's volume lines.
    protocol : dict
        The protocol copy's tables.
    targets : dict of int to float
        Target line per volume index (from the volume lines or the messages).
    """
    kind = protocol.get("metric", {}).get("kind")
    base = baseline_value(volumes, protocol, kind) if kind else math.nan
    rows: list[dict] = []
    for v in volumes:
        block = v.get("block") or {}
        key = (block.get("index"), block.get("condition"))
        if not rows or rows[-1]["key"] != key:
            rows.append({"key": key, "condition": block.get("condition"), "first": v["index"],
                         "last": v["index"], "shown": [], "above": [], "metric": []})
        row = rows[-1]
        row["last"] = v["index"]
        shown = _number(v.get("feedback"))
        if not math.isnan(shown):
            row["shown"].append(shown)
            target = targets.get(v["index"])
            if target is not None:
                row["above"].append(shown >= target)
        if kind:
            row["metric"].append(_number((v.get("metrics") or {}).get(kind)))
    out = []
    for row in rows:
        metric = [x for x in row["metric"] if not math.isnan(x)]
        mean_metric = float(np.mean(metric)) if metric else math.nan
        change = math.nan
        if metric and not math.isnan(base):
            change = mean_metric - base
        out.append({
            "condition": row["condition"], "volumes": f"{row['first']}–{row['last']}",
            "mean_feedback": float(np.mean(row["shown"])) if row["shown"] else math.nan,
            "n_shown": len(row["shown"]),
            "time_above_target": (float(np.mean(row["above"])) if row["above"] else math.nan),
            "metric_mean": mean_metric, "metric_change": change,
            "metric_change_percent": (100 * change / abs(base) if base and not math.isnan(base)
                                      and not math.isnan(change) else math.nan),
        })
    return out


def latency_bins(latency: np.ndarray, median: float) -> tuple[np.ndarray, bool]:
    """Histogram bins; log-spaced (and a log axis) when a few volumes are far slower."""
    latency = latency[np.isfinite(latency)]
    top = float(latency.max()) if latency.size else 1.0
    positive = latency[latency > 0]
    if positive.size and median > 0 and top > 10 * median:
        low = float(positive.min())
        return np.logspace(np.log10(low), np.log10(top), 40), True
    return np.asarray(min(50, max(5, int(np.sqrt(max(latency.size, 1))) * 2))), False


def roi_overlay(session_dir: Path, background, new_figure, png_uri) -> str | None:
    """PNG data URI of the recorded ROIs drawn over the mean EPI (None without ROIs).

    ``new_figure(width, height, layout=None)`` and ``png_uri(figure)`` are the report's
    figure helpers.
    """
    import nibabel as nib
    from nilearn.plotting import plot_roi

    folder = Path(session_dir) / "rois"
    files = sorted(folder.glob("roi-*.nii.gz"))
    if not files or background is None:
        return None
    labels = None
    names = []
    for k, path in enumerate(files, start=1):
        img = nib.load(path)
        data = np.asanyarray(img.dataobj) > 0
        if labels is None:
            labels = np.zeros(data.shape, dtype=np.int16)
            affine = img.affine
        labels[data & (labels == 0)] = k
        names.append(path.name.removeprefix("roi-").removesuffix(".nii.gz"))
    centre = np.argwhere(labels > 0).mean(axis=0) if (labels > 0).any() else None
    cut = None
    if centre is not None:
        cut = tuple((affine @ np.append(centre, 1.0))[:3])
    figure = new_figure(9, 3.2, layout=None)
    plot_roi(nib.Nifti1Image(labels, affine), bg_img=background, figure=figure,
             display_mode="ortho", cut_coords=cut, draw_cross=False, black_bg=False,
             cmap="tab10", alpha=0.6, title="ROIs: " + ", ".join(
                 f"{k} = {n}" for k, n in enumerate(names, start=1)))
    return png_uri(figure)
