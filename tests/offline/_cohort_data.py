"""Tiny simulator cohorts shared by the offline-analysis tests (kept small: 2 shared cores)."""

from __future__ import annotations

from pathlib import Path

SHAPE = (16, 16, 10)
N_VOLUMES = 60


def write_tiny_cohort(root: Path, n_patients: int = 2, n_controls: int = 2) -> Path:
    """Write a ``simulator.cohort`` dataset of 16x16x10 x 60 volumes and return its root."""
    from simulator.cohort import write_cohort

    write_cohort(root, n_patients, n_controls, seed=3, shape=SHAPE, n_volumes=N_VOLUMES)
    return root
