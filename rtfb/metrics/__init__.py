"""Metric kernels: one module per metric, each with a batch function and, where the
real-time path needs it, a sliding-window state whose values equal the batch function
on the last ``window`` volumes.

Arrays have time on the last axis (nibabel's 4D convention); computations are float64.
"""

from .alff import SlidingALFF, alff, band_bins, falff, malff, zalff
from .centrality import degree_centralities, degree_centrality
from .psc import SlidingPSC, psc
from .reho import SlidingReHo, neighbor_offsets, reho
from .seed_fc import SlidingSeedFC, fisher_z, seed_fc
from .vmhc import vmhc

__all__ = [
    "SlidingALFF",
    "SlidingPSC",
    "SlidingReHo",
    "SlidingSeedFC",
    "alff",
    "band_bins",
    "degree_centralities",
    "degree_centrality",
    "falff",
    "fisher_z",
    "malff",
    "neighbor_offsets",
    "psc",
    "reho",
    "seed_fc",
    "vmhc",
    "zalff",
]
