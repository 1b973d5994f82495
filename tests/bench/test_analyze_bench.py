"""Offline cohort benchmark (``python -m rtfb.bench analyze``) on a tiny cohort."""

import re

from rtfb.bench.__main__ import main


def test_analyze_bench_runs_small(capsys):
    assert main(["analyze", "--subjects", "2", "--shape", "16x16x10", "--volumes", "24",
                 "--workers", "1", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "analysis median of 2" in out
    row = re.search(r"^\| 1 \| [\d.]+ \| [\d.]+ \| ([\d.]+) \(([\d.]+)-([\d.]+)\) \| [\d.]+ \| "
                    r"1\.00x \| yes \|$", out, re.M)
    assert row, out
    median, low, high = map(float, row.groups())
    assert low <= median <= high
