"""Scanner simulator: synthetic subjects with known ground truth.

The simulator stands in for the scanner and must not import ``rtfb`` internals, so that
the ingest path is tested against files written by independent code.

``make_subject`` generates a 4D BOLD run (time last) with planted effects: a
low-frequency oscillation in the left insula (ALFF), a correlated band-limited signal in
a seed and a target region (seed FC), spatially smooth noise in one region (ReHo) and,
optionally, a known rigid head-motion trace. ``write_subject`` saves it as NIfTI files
plus ``truth.json``. ``write_cohort`` writes a BIDS dataset of patients and controls
with a planted group effect (left-insula ALFF growing with the VAS pain score) and its
ground truth. ``stream`` plays a run (NIfTI or recorded DICOM) in real time on a
drift-corrected TR clock (``TRClock``) into an export folder or a TCP receiver, with
optional injected faults and a manifest of what was done.

Command line: ``python -m simulator subject|cohort|stream ...`` (``--help`` for each).
"""

from __future__ import annotations

from .clock import TimingReport, TRClock
from .cohort import write_cohort
from .stream import stream
from .synthetic import SyntheticSubject, make_subject, write_subject

__all__ = ["SyntheticSubject", "TRClock", "TimingReport", "make_subject", "stream",
           "write_cohort", "write_subject"]
