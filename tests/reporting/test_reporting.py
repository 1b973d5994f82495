"""Shared report helpers: one module below the session report, offline report and dashboard."""

import ast
from pathlib import Path

import numpy as np
import pytest

import rtfb
from rtfb.reporting import (
    CONDITION_PALETTE,
    condition_colors,
    esc,
    fmt_sig,
    img,
    new_figure,
    png_uri,
    section,
)

RTFB = Path(rtfb.__file__).parent


def test_palette_is_matplotlibs_pastel1_then_pastel2():
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    cmaps = matplotlib.colormaps
    expected = [to_hex(c) for c in cmaps["Pastel1"].colors + cmaps["Pastel2"].colors]
    assert list(CONDITION_PALETTE) == expected


def test_condition_colors_in_order_of_appearance():
    colors = condition_colors(["baseline", "regulate", "rest", "regulate", "baseline"])
    assert list(colors) == ["baseline", "regulate", "rest"]
    assert list(colors.values()) == list(CONDITION_PALETTE[:3])
    many = condition_colors(f"c{i}" for i in range(20))
    assert many["c17"] == CONDITION_PALETTE[0]


def test_html_helpers_escape():
    assert esc('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"
    assert esc(None) == ""
    assert img("data:,", 'a"b') == '<img src="data:," alt="a&quot;b">'
    assert section("s", "<T>", ["<p>x</p>"]).startswith('<section id="s">\n<h2>&lt;T&gt;</h2>')
    assert [fmt_sig(v) for v in (None, np.nan, np.inf, 3, np.int64(7), 0.000123456, True)] \
        == ["n/a", "n/a", "n/a", "3", "7", "0.000123", "n/a"]
    assert fmt_sig(1234.5678, 5) == "1234.6"


def test_png_uri_is_a_png():
    import base64

    figure = new_figure(2, 1)
    figure.add_subplot().plot([0, 1])
    uri = png_uri(figure)
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            out.append("." * node.level + (node.module or ""))
            out.extend(f"{'.' * node.level}{node.module or ''}:{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


def test_no_package_imports_another_packages_report_privates():
    for path in sorted((RTFB / "offline").glob("*.py")) + sorted((RTFB / "dashboard").glob("*.py")):
        names = _imports(path)
        assert not [n for n in names if "session.report" in n], path
        assert not [n for n in names if n.startswith("..session")], path
    for path in (RTFB / "reporting").glob("*.py"):  # below everything: no rtfb imports
        assert not [n for n in _imports(path) if n.startswith("..") or n.startswith("rtfb")]
