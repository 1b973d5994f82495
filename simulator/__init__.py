"""Scanner simulator: synthetic subjects with known ground truth.

The simulator stands in for the scanner and must not import ``rtfb`` internals, so that
the ingest path is tested against files written by independent code.

``make_subject`` generates a 4D BOLD run (time last) with planted effects: a
low-frequency oscillation in the left insula (ALFF), a correlated band-limited signal in
a seed and a target region (seed FC), spatially smooth noise in one region (ReHo) and,
optionally, a known rigid head-motion trace. ``write_subject`` saves it as NIfTI files
plus ``truth.json``. Command line: ``python -m simulator subject --out DIR``.
"""

from __future__ import annotations

from .synthetic import SyntheticSubject, make_subject, write_subject

__all__ = ["SyntheticSubject", "make_subject", "write_subject"]
