"""Shared, seeded fixtures (in the spirit of nilearn's ``generate_fake_fmri``)."""

from __future__ import annotations

import numpy as np
import pytest


def generate_fake_fmri(shape=(7, 6, 5), n_volumes=40, rng=None, ties=False):
    """Random 4D data (time last) with an ellipsoid mask and a few constant voxels.

    Returns
    -------
    data : ndarray, shape shape + (n_volumes,)
    mask : ndarray of bool, shape shape
    """
    rng = np.random.default_rng(0) if rng is None else rng
    if ties:
        data = rng.integers(0, 5, size=shape + (n_volumes,)).astype(float)
    else:
        drift = np.linspace(0, 1, n_volumes) * rng.normal(0, 5, size=shape)[..., None]
        data = 1000 + rng.normal(0, 10, size=shape + (n_volumes,)) + drift
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
    mask = (grid**2).sum(-1) <= 1.2
    return data, mask


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.fixture
def fake_fmri(rng):
    return generate_fake_fmri(rng=rng)


@pytest.fixture(autouse=True, scope="session")
def _private_key_dir(tmp_path_factory):
    """Key files of sessions and displays (``RTFB_KEY_DIR``) go to a temporary folder."""
    import os

    os.environ["RTFB_KEY_DIR"] = str(tmp_path_factory.mktemp("rtfb-keys"))
