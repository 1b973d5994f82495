"""The ``rtfb`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import rtfb
from rtfb.cli import main

DEMO = ["demo", "--shape", "16", "16", "10", "--volumes", "80", "--window", "32"]


def test_demo_prints_summary(capsys):
    assert main(DEMO) == 0
    out = capsys.readouterr().out
    for word in ("ALFF/fALFF", "ReHo", "seed FC", "PSC", "all together", "median", "p95",
                 "left insula", "homogeneous", "target", "planted", "0.04 Hz"):
        assert word in out, word
    assert "80/80" in out


def test_demo_recovers_planted_effects(capsys):
    main(DEMO)
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│|").split("│")]
        if len(cells) == 5 and cells[0] in ("ALFF", "fALFF", "ReHo (W)", "seed FC (z)"):
            rows[cells[0]] = float(cells[2]), float(cells[3])
    assert len(rows) == 4, out
    for inside, outside in rows.values():
        assert inside > outside + 0.1


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert rtfb.__version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--window", "100", "--volumes", "80"], "--volumes"),
    (["--window", "5"], "window"),  # too short for the 0.01-0.08 Hz band
])
def test_demo_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--shape", "16", "16", "10", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "rtfb", "--version"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0
    assert rtfb.__version__ in proc.stdout
