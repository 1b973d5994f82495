"""Normalisation benchmark (``python -m rtfb.bench normalise``) runs and reports its numbers."""

import re

import pytest

pytest.importorskip("dipy")

from rtfb.bench.__main__ import main  # noqa: E402


@pytest.mark.slow  # three registrations (~5 s idle, 14 s on the loaded 2-core machine)
def test_normalise_bench_runs_small(capsys):
    assert main(["normalise", "--resolution", "8", "--voxel", "9", "--volumes", "5"]) == 0
    out = capsys.readouterr().out
    error = re.search(r"affine \(known affine\): [\d.]+ s, error median ([\d.]+) mm", out)
    assert error and float(error.group(1)) < 8  # within a template voxel
    dice = [float(d) for d in re.findall(r"mask Dice ([\d.]+)", out)]
    assert len(dice) == 2 and min(dice) > 0.9
    assert "warp_series: 5 volumes" in out
