import numpy as np
import pytest

from rtfb.metrics import degree_centrality, vmhc
from tests.conftest import generate_fake_fmri


def oracle_degree(data, mask, threshold, weighted):
    ts = data[mask]
    r = np.corrcoef(ts)
    np.fill_diagonal(r, 0)
    out = np.zeros(mask.shape)
    vals = np.where(r > threshold, r if weighted else 1.0, 0.0).sum(axis=1)
    out[mask] = vals
    return out


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("threshold", [0.25, -0.1])
def test_degree_matches_corrcoef(rng, weighted, threshold):
    data, mask = generate_fake_fmri((5, 5, 4), 30, rng=rng)
    data[mask] += 3 * rng.normal(size=30)  # shared signal -> many edges
    got = degree_centrality(data, mask, threshold, weighted, block_size=7)
    np.testing.assert_allclose(got, oracle_degree(data, mask, threshold, weighted), rtol=1e-10)


def test_degree_constant_voxel(rng):
    data, mask = generate_fake_fmri((4, 4, 3), 20, rng=rng)
    data[1, 1, 1] = 2.0
    assert degree_centrality(data, mask)[1, 1, 1] == 0


def test_degree_bad_threshold(fake_fmri):
    data, mask = fake_fmri
    with pytest.raises(ValueError, match="threshold must lie in"):
        degree_centrality(data, mask, threshold=1.5)


def _symmetric_affine(shape, voxel=2.0):
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -voxel * (np.array(shape) - 1) / 2
    return affine


def test_vmhc_matches_corrcoef_of_mirror(rng):
    shape = (6, 4, 3)
    data = rng.normal(size=shape + (40,))
    data[4, 1, 2] = 0.7 * data[1, 1, 2] + 0.3 * data[4, 1, 2]  # mirrored pair x=1 <-> x=4
    mask = np.ones(shape, bool)
    out = vmhc(data, mask, affine=_symmetric_affine(shape))
    for x in range(shape[0]):
        for y in range(shape[1]):
            for z in range(shape[2]):
                r = np.corrcoef(data[x, y, z], data[shape[0] - 1 - x, y, z])[0, 1]
                assert out[x, y, z] == pytest.approx(np.arctanh(min(r, 1 - 1e-7)), rel=1e-9)
    assert out[1, 1, 2] > 1.0
    np.testing.assert_allclose(out, out[::-1])


def test_vmhc_mask_needs_both_sides(rng):
    shape = (4, 3, 2)
    data = rng.normal(size=shape + (20,))
    mask = np.ones(shape, bool)
    mask[0, 0, 0] = False
    out = vmhc(data, mask)
    assert out[0, 0, 0] == 0 and out[3, 0, 0] == 0 and out[1, 0, 0] != 0


def test_vmhc_rejects_asymmetric_grid(rng):
    shape = (6, 4, 3)
    data = rng.normal(size=shape + (20,))
    affine = _symmetric_affine(shape)
    affine[0, 3] += 10
    with pytest.raises(ValueError, match="not symmetric about x = 0"):
        vmhc(data, affine=affine)
    oblique = _symmetric_affine(shape)
    oblique[1, 0] = 0.5
    with pytest.raises(ValueError, match="first voxel axis to x alone"):
        vmhc(data, affine=oblique)
