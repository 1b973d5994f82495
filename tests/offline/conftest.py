"""The planted simulator cohort analysed once by ``rtfb analyze`` (shared by several modules)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class AnalyzedCohort:
    """A simulator cohort (BIDS), its ``rtfb analyze`` derivatives and the printed output."""

    bids: Path
    deriv: Path
    stdout: str


@pytest.fixture(scope="session")
def planted_cohort(tmp_path_factory) -> AnalyzedCohort:
    """8 patients + 8 controls, 16x16x10 x 64 volumes, left-insula ALFF slope 6 per VAS point.

    ``rtfb analyze`` runs every stage (maps, group statistics with 500 permutations on
    ALFF, ROI graph on the simulator atlas, group ICA, classification, report) in-process.
    """
    import contextlib
    import io

    from rtfb.cli import main
    from simulator.cohort import write_cohort

    tmp = tmp_path_factory.mktemp("planted_cohort")
    bids = tmp / "bids"
    write_cohort(bids, n_patients=8, n_controls=8, null=False, seed=3, shape=(16, 16, 10),
                 n_volumes=64, tr=2.0, slope=6.0)
    deriv = tmp / "deriv"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["analyze", str(bids), "--out", str(deriv), "--scheduler", "synchronous",
                     "--quiet", "--metrics", "alff", "--permutations", "500"])
    assert code == 0, buffer.getvalue()
    return AnalyzedCohort(bids=bids, deriv=deriv, stdout=buffer.getvalue())
