"""Figures for the HTML reports (matplotlib Agg canvas, no pyplot state) and block colours."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable

__all__ = ["CONDITION_PALETTE", "condition_colors", "new_figure", "png_uri"]

#: colours of the protocol's conditions (block shading), in order of first appearance:
#: matplotlib's Pastel1 then Pastel2, as hex so that the dashboard's page uses the same ones
CONDITION_PALETTE = ("#fbb4ae", "#b3cde3", "#ccebc5", "#decbe4", "#fed9a6", "#ffffcc",
                     "#e5d8bd", "#fddaec", "#f2f2f2", "#b3e2cd", "#fdcdac", "#cbd5e8",
                     "#f4cae4", "#e6f5c9", "#fff2ae", "#f1e2cc", "#cccccc")


def condition_colors(conditions: Iterable[str]) -> dict[str, str]:
    """Colour (hex) of each condition, in order of first appearance.

    Parameters
    ----------
    conditions : iterable of str
        Condition names, repeats allowed (e.g. one per block).

    Returns
    -------
    dict
        Condition -> ``"#rrggbb"`` from :data:`CONDITION_PALETTE` (cycled).
    """
    colors: dict[str, str] = {}
    for name in conditions:
        if name not in colors:
            colors[name] = CONDITION_PALETTE[len(colors) % len(CONDITION_PALETTE)]
    return colors


def new_figure(width: float, height: float, layout: str | None = "constrained"):
    """A matplotlib Figure (inches, 100 dpi) on an Agg canvas, without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def png_uri(figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (white background)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
