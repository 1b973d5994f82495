"""HTML report of a recorded session (``rtfb report SESSION_DIR``).

:func:`write_report` reads a session record (``docs/session_record.md``) and writes one
self-contained HTML file: a summary table, plots embedded as base64 PNG (matplotlib, Agg
canvas, no pyplot state), and a table of the session's events. It works on partial records
(a session killed mid-run), on warm-up ``null`` values and without motion parameters
(realignment off); a missing record file raises :class:`FileNotFoundError` naming it.

matplotlib (and, for monitoring maps, ``nilearn.plotting``) is imported only when a report
is written.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..reporting import REPORT_CSS as _CSS
from ..reporting import esc as _esc
from ..reporting import img as _img
from ..reporting import new_figure as _new_figure
from ..reporting import note as _note
from ..reporting import png_uri as _png_uri
from ..reporting import section as _section
from . import report_blocks
from .record_reader import SessionRecord, load_record
from .report_plots import (
    Series,
    background_image,
    block_colors,
    event_indices,
    feedback_targets,
    find_fd_threshold,
    fmt,
    fmt_time,
    int_or_none,
    metric_names,
    num,
    plot_feedback,
    plot_latency,
    plot_map,
    plot_metrics,
    plot_motion,
)

__all__ = ["build_report_html", "write_report"]

#: Event kinds listed in the events table (``block`` events are shown in the plots instead).
TABLE_EVENT_KINDS = ("start", "resume", "display", "warning", "error", "missing", "late", "mark",
                     "feedback_pause", "feedback_resume", "stop", "end")
_MAX_EVENT_ROWS = 500


# --------------------------------------------------------------------------- HTML


def _summary_rows(record: SessionRecord, stats: dict[str, Any]) -> list[tuple[str, str]]:
    session = record.session
    source = session.get("source")
    source_kind = source.get("kind") if isinstance(source, dict) else source
    shape = session.get("shape")
    missing_list = ", ".join(str(i) for i in stats["missing_indices"][:30])
    if len(stats["missing_indices"]) > 30:
        missing_list += ", …"
    return [
        ("Session id", _esc(session.get("session_id"))),
        ("Protocol", _esc(session.get("protocol_name"))),
        ("Started", _esc(session.get("started"))),
        ("rtfb version (recorded)", _esc(session.get("rtfb_version"))),
        ("Source", _esc(source_kind)),
        ("TR", _esc(fmt(session.get("tr"), "s", 3))),
        ("Volume shape", _esc("x".join(str(s) for s in shape) if isinstance(shape, list)
                              else shape)),
        ("Volumes expected", _esc(session.get("n_expected", "n/a"))),
        ("Volumes received", str(len(record.inputs))),
        ("Volumes processed", str(len(record.volumes))),
        ("Missing volumes", f'{stats["n_missing"]}'
                            + (f" (indices {_esc(missing_list)})" if missing_list else "")),
        ("Late volumes", str(stats["n_late"])),
        ("Censored volumes", str(stats["n_censored"])
         + (f" ({100 * stats['n_censored'] / len(record.volumes):.1f}% of processed)"
            if record.volumes else "")),
        ("Latency median", _esc(fmt(stats["latency_median"], "ms"))),
        ("Latency p95", _esc(fmt(stats["latency_p95"], "ms"))),
        ("Warnings / errors", f'{stats["n_warning"]} / {stats["n_error"]}'),
    ]


def _block_table(rows: list[dict], protocol: dict) -> list[str]:
    kind = protocol.get("metric", {}).get("kind") or "metric"
    unit = report_blocks.UNITS.get(kind, "")
    out = ["<table>", f"<tr><th>block</th><th>volumes</th><th>mean feedback shown</th>"
                      f"<th>time above target</th><th>mean {_esc(kind)} ({_esc(unit)})</th>"
                      f"<th>vs baseline</th></tr>"]
    for r in rows:
        pct = r["metric_change_percent"]
        change = fmt(r["metric_change"], digits=3)
        if not math.isnan(pct):
            change += f" ({pct:+.1f} %)"
        out.append(f"<tr><td>{_esc(r['condition'])}</td><td>{_esc(r['volumes'])}</td>"
                   f"<td>{fmt(r['mean_feedback'], digits=2)} (n = {r['n_shown']})</td>"
                   f"<td>{fmt(100 * r['time_above_target'], '%', digits=0)}</td>"
                   f"<td>{fmt(r['metric_mean'], digits=3)}</td><td>{change}</td></tr>")
    out.append("</table>")
    out.append(_note("Mean of the values shown to the participant, fraction of them at or "
                     "above the target line, and the fed-back metric's block mean minus its "
                     "mean over the baseline block."))
    return out


def _events_table(events: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in events if e.get("kind") in TABLE_EVENT_KINDS]
    if not rows:
        return [_note("No events recorded.")]
    body = ['<table class="events">',
            "<tr><th>time</th><th>kind</th><th>volume</th><th>message</th></tr>"]
    for event in rows[:_MAX_EVENT_ROWS]:
        kind = str(event.get("kind"))
        index = event.get("index")
        body.append(f'<tr class="{_esc(kind)}"><td>{_esc(fmt_time(event.get("time")))}</td>'
                    f"<td>{_esc(kind)}</td><td>{_esc('' if index is None else index)}</td>"
                    f"<td>{_esc(event.get('message'))}</td></tr>")
    body.append("</table>")
    if len(rows) > _MAX_EVENT_ROWS:
        body.append(_note(f"{len(rows) - _MAX_EVENT_ROWS} more events not shown "
                          "(see events.jsonl)."))
    return body


def build_report_html(record: SessionRecord, *, fd_threshold: float | None = None,
                      max_maps: int = 24) -> str:
    """HTML text of the report of ``record`` (see :func:`write_report`)."""
    volumes = record.volumes
    series = Series(volumes)
    events = record.events

    latency = np.array([num(v.get("latency_ms")) for v in volumes], dtype=float)
    latency = latency[np.isfinite(latency)]
    n_missing, missing_indices = event_indices(events, "missing")
    n_late, _ = event_indices(events, "late")
    censored = series.censored()
    stats = {
        "n_missing": n_missing,
        "missing_indices": missing_indices,
        "n_late": n_late,
        "n_censored": int(censored.size),
        "latency_median": float(np.median(latency)) if latency.size else math.nan,
        "latency_p95": float(np.percentile(latency, 95)) if latency.size else math.nan,
        "n_warning": sum(e.get("kind") == "warning" for e in events),
        "n_error": sum(e.get("kind") == "error" for e in events),
    }
    session = record.session
    tr = num(session.get("tr"))
    tr = None if math.isnan(tr) else tr
    title = f"rtfb session report — {session.get('session_id') or record.path.name}"

    sections = []
    summary = ['<table class="summary">']
    summary += [f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>"
                for k, v in _summary_rows(record, stats)]
    summary.append("</table>")
    kinds = {e.get("kind") for e in events}
    if "end" not in kinds:
        summary.append('<p class="alert">No "end" event: the session did not finish cleanly '
                       "(killed or still running); this record may be partial.</p>")
    sections.append(_section("summary", "Summary", summary))

    runs = series.block_runs()
    colors = block_colors(runs) if len(series) else {}
    if len(series):
        # no target line when no block shows feedback (monitoring protocols)
        shows_feedback = any(not isinstance(v.get("block"), dict)
                             or v["block"].get("feedback") is not False for v in volumes)
        targets = feedback_targets(record.messages) if shows_feedback else []
        marks = [(int(e["index"]), str(e.get("message", ""))) for e in events
                 if e.get("kind") == "mark" and int_or_none(e.get("index")) is not None]
        uri = plot_feedback(series, runs, colors, targets, missing_indices, tr, marks)
        body = [_img(uri, "feedback value over time"),
                _note("Feedback value shown to the participant per volume (gaps: warm-up or "
                      "no value); shaded: protocol blocks; red lines: missing volumes; "
                      "labelled lines: events marked by the operator.")]
    else:
        body = [_note("No volume was processed.")]
    sections.append(_section("feedback", "Feedback", body))

    protocol = report_blocks.recorded_protocol(record.path)
    if len(series):
        targets = {v["index"]: v["target"] for v in volumes
                   if isinstance(v.get("target"), (int, float))}
        for index, target in feedback_targets(record.messages):
            if index is not None:
                targets.setdefault(index, target)
        rows = report_blocks.block_rows(volumes, protocol, targets)
        sections.append(_section("blocks", "Per block", _block_table(rows, protocol)))

    names = metric_names(volumes)
    if len(series) and names:
        labels = {n: report_blocks.metric_label(protocol, n) for n in names}
        baselines = {n: report_blocks.baseline_value(volumes, protocol, n) for n in names}
        body = [_img(plot_metrics(series, names, runs, colors, labels, baselines),
                     "ROI metrics over time"),
                _note("Metric values per volume, labelled with their ROI and unit (NaN/null "
                      "during warm-up not drawn); dotted: mean over the baseline block.")]
    else:
        body = [_note("No metric values recorded.")]
    sections.append(_section("metrics", "ROI metrics", body))

    has_motion = any(isinstance(v.get("motion"), (list, tuple))
                     and any(not math.isnan(num(x)) for x in v["motion"]) for v in volumes)
    has_fd = any(not math.isnan(num(v.get("fd"))) for v in volumes)
    if has_motion or has_fd:
        threshold = fd_threshold if fd_threshold is not None else find_fd_threshold(record)
        body = [_img(plot_motion(series, has_motion, has_fd, censored, threshold),
                     "motion parameters and framewise displacement")]
        if threshold is None:
            body.append(_note("The FD censoring threshold is not recorded in session.json or "
                              "protocol.toml."))
    else:
        body = [_note("No motion parameters recorded (realignment off).")]
        if censored.size:
            body.append(_note(f"{censored.size} volume(s) flagged censored."))
    sections.append(_section("motion", "Motion", body))

    if latency.size:
        body = [_img(plot_latency(latency, stats["latency_median"], stats["latency_p95"]),
                     "latency histogram"),
                _note(f"{latency.size} volumes, file complete → message published.")]
    else:
        body = [_note("No latency recorded.")]
    sections.append(_section("latency", "Latency", body))

    sections.append(_section("events", "Events", _events_table(events)))

    if (record.path / "rois").is_dir() and record.inputs:
        try:
            uri = report_blocks.roi_overlay(record.path, background_image(record),
                                            _new_figure, _png_uri)
        except Exception as err:  # a damaged ROI file must not stop the report
            uri, note = None, f"Could not draw the ROIs: {err}"
        else:
            note = "ROIs as used by the session over the mean of the recorded input volumes."
        body = [_img(uri, "ROIs over the mean EPI")] if uri else []
        sections.append(_section("rois", "ROI placement", body + [_note(note)]))

    map_files = record.map_files()
    if map_files:
        body = []
        background = background_image(record)
        if background is None:
            body.append(_note("No recorded input volume: maps are shown without anatomy."))
        else:
            body.append(_note(f"Background: mean of the {len(record.inputs)} recorded input "
                              "volumes."))
        for path in map_files[:max_maps]:
            try:
                body.append(_img(plot_map(path, background), f"map {path.name}"))
            except Exception as err:  # a map cut by a crash must not stop the report
                body.append(_note(f"Could not plot {path.name}: {err}"))
        if len(map_files) > max_maps:
            body.append(_note(f"{len(map_files) - max_maps} more maps in maps/ not shown."))
        sections.append(_section("maps", "Maps", body))

    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(title)}</h1>",
        *sections,
        f"<footer>Generated by rtfb {_esc(__version__)} on {_esc(generated)} from "
        f"{_esc(record.path)}.</footer>",
        "</body>",
        "</html>",
        "",
    ])


def write_report(session_dir: str | Path, out: str | Path | None = None, *,
                 fd_threshold: float | None = None, max_maps: int = 24) -> Path:
    """Write the HTML report of a recorded session.

    Parameters
    ----------
    session_dir : str | pathlib.Path
        Session folder written by ``rtfb run`` (``docs/session_record.md``).
    out : str | pathlib.Path | None
        Output file; default ``SESSION_DIR/report.html``.
    fd_threshold : float | None
        FD censoring threshold (mm) to draw; default: the one found in ``session.json`` or
        ``protocol.toml`` (none drawn when not found).
    max_maps : int
        Most maps from ``maps/`` to plot.

    Returns
    -------
    pathlib.Path
        The report file (written atomically).

    Raises
    ------
    FileNotFoundError
        If the folder or a record file is missing (the message names it; ``inputs.bin`` is
        needed only when ``maps/`` holds maps).
    ValueError
        If a record file does not follow the format (the message names it).
    """
    session_dir = Path(session_dir)
    record = load_record(session_dir)
    text = build_report_html(record, fd_threshold=fd_threshold, max_maps=max_maps)
    out = session_dir / "report.html" if out is None else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out.parent)
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would (mkstemp makes it 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
