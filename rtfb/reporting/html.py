"""HTML building blocks of the self-contained reports (escaped text, images, sections)."""

from __future__ import annotations

import html
import numbers
from typing import Any

__all__ = ["REPORT_CSS", "esc", "fmt_sig", "img", "note", "section"]

#: style sheet of the HTML reports (session and offline)
REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
table.summary th { width: 16em; }
tr.error td { background: #fde2e2; }
tr.warning td { background: #fff3d6; }
tr.missing td, tr.late td { background: #eef3fb; }
img { max-width: 100%; height: auto; display: block; margin: 0.4em 0; }
p.note { color: #666; font-style: italic; }
p.alert { color: #a40000; font-weight: 600; }
footer { margin-top: 2em; color: #888; font-size: 0.8em; }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value`` (``None`` -> empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def img(uri: str, alt: str) -> str:
    """An ``<img>`` of a data URI with escaped alternative text."""
    return f'<img src="{uri}" alt="{esc(alt)}">'


def note(text: str) -> str:
    """A grey italic note paragraph."""
    return f'<p class="note">{esc(text)}</p>'


def section(section_id: str, title: str, body: list[str]) -> str:
    """A ``<section>`` with an ``<h2>`` title and the given HTML parts."""
    return (f'<section id="{section_id}">\n<h2>{esc(title)}</h2>\n' + "\n".join(body)
            + "\n</section>")


def fmt_sig(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; integers as is; "n/a" for None/NaN/inf."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return "n/a"
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return "n/a"
    return f"{value:.{digits}g}"
