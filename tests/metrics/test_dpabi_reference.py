"""``convention="dpabi"`` against DPABI's own outputs on a small real run.

``../shared/data/dpabi-reference/real.npz`` holds maps that DPABI's Matlab kernels
(``y_alff_falff``, ``y_reho``, ``y_DegreeCentrality``, ``y_VMHC``, ``y_SCA``, with
``detrend`` + ``y_IdealFilter`` for the filtered ones) computed in float64 from nipy's
``functional.nii.gz`` (17 x 21 x 3 voxels, 20 volumes, TR 2 s, band 0.01-0.08 Hz).
Measured maximum errors (abs / rel) are in each test's name and tolerance.
"""

from pathlib import Path

import numpy as np
import pytest

from rtfb import metrics
from rtfb.preprocess import bandpass

REAL = Path(__file__).parents[2].parent / "shared" / "data" / "dpabi-reference" / "real.npz"


@pytest.fixture(scope="module")
def ref():
    if not REAL.is_file():
        pytest.skip(f"DPABI reference data not found at {REAL} (see shared/data/README.md)")
    with np.load(REAL) as d:
        out = {k: d[k] for k in d.files}
    out["bold"] = out["bold"].astype(np.float64)
    out["tr"] = float(out["tr"])
    out["band"] = tuple(float(b) for b in out["band"])
    return out


@pytest.fixture(scope="module")
def filtered(ref):
    return bandpass(ref["bold"], ref["tr"], ref["band"], convention="dpabi", mask=ref["mask"])


def _close(got, expected, atol, rtol=0.0):
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    # the reference is not trivial: values spread and zeros where DPABI writes zeros
    assert np.ptp(expected) > 0
    np.testing.assert_array_equal(got == 0, expected == 0)


def _in_mask(values, mask):
    out = np.zeros(mask.shape)
    out[mask] = values
    return out


def test_alff_falff_match_dpabi_1e12(ref):
    mask, bold = ref["mask"], ref["bold"]
    a = _in_mask(metrics.alff(bold[mask], ref["tr"], ref["band"], convention="dpabi"), mask)
    f = _in_mask(metrics.falff(bold[mask], ref["tr"], ref["band"], convention="dpabi"), mask)
    # measured: ALFF 7.3e-13 abs (values up to 81, rel 1.2e-13); fALFF 1.6e-14 abs
    _close(a, ref["ref_ALFF"], atol=2e-12, rtol=1e-12)
    _close(f, ref["ref_fALFF"], atol=1e-13, rtol=1e-12)
    # the rtfb convention (no padding: 20 bins, not 32) is a different map
    a_rtfb = _in_mask(metrics.alff(bold[mask], ref["tr"], ref["band"]), mask)
    assert np.abs(a_rtfb - ref["ref_ALFF"]).max() > 1e-3 * np.abs(ref["ref_ALFF"]).max()


def test_malff_zalff_match_dparsf_ddof1_1e12(ref):
    mask = ref["mask"]
    for name in ("ALFF", "fALFF"):
        m = ref[f"ref_{name}"]
        # measured: 5e-14 (m), 1.8e-13 (z) absolute
        _close(metrics.malff(m, mask, convention="dpabi"), ref[f"ref_m{name}"], atol=1e-12)
        _close(metrics.zalff(m, mask, convention="dpabi"), ref[f"ref_z{name}"], atol=1e-12)
    # rtfb's ddof 0 differs by the factor sqrt((N - 1) / N)
    n = mask.sum()
    z0 = metrics.zalff(ref["ref_ALFF"], mask)
    np.testing.assert_allclose(z0 * np.sqrt((n - 1) / n), ref["ref_zALFF"], atol=1e-12)


@pytest.mark.parametrize("neighborhood", [7, 19, 27])
def test_reho_matches_dpabi_3e16(ref, neighborhood):
    got = metrics.reho(ref["bold"], ref["mask"], neighborhood, convention="dpabi")
    _close(got, ref[f"ref_ReHo{neighborhood}"], atol=3e-16)  # measured 5.6e-17
    # rtfb also computes the face voxels (here the slices z = 0 and z = 2)
    rtfb = metrics.reho(ref["bold"], ref["mask"], neighborhood)
    assert (rtfb[:, :, 0][ref["mask"][:, :, 0]] > 0).all()
    np.testing.assert_array_equal(rtfb[1:-1, 1:-1, 1:-1], got[1:-1, 1:-1, 1:-1])


def test_bandpass_matches_dpabi_ideal_filter_5e12(ref, filtered):
    got = filtered[ref["mask"]]
    expected = ref["ref_Filtered"]
    # measured: 1.9e-12 absolute on values up to 216
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-12)
    # the first n samples of the padded inverse FFT are not exactly zero-mean (as DPABI)
    assert np.abs(expected.mean(axis=1)).max() > 1e-3
    assert (filtered[~ref["mask"]] == 0).all()


def test_filtered_reho_matches_dpabi_3e16(ref, filtered):
    got = metrics.reho(filtered, ref["mask"], 27, convention="dpabi")
    _close(got, ref["ref_ReHo27_filtered"], atol=3e-16)  # measured 5.6e-17
    # the DPARSF chain (float32 files between stages) gives the same ranks here
    _close(got, ref["ref_ReHo27_dparsf_chain"], atol=3e-16)


def test_degree_centrality_matches_dpabi_exact_counts(ref, filtered):
    mask = ref["mask"]
    b, w = metrics.degree_centralities(ref["bold"], mask, 0.25, convention="dpabi")
    np.testing.assert_array_equal(b, ref["ref_DCbinary"])  # measured: identical
    np.testing.assert_allclose(w, ref["ref_DCweighted"], rtol=1e-14, atol=1e-12)  # 1.4e-13
    bf, wf = metrics.degree_centralities(filtered, mask, 0.25, convention="dpabi")
    np.testing.assert_array_equal(bf, ref["ref_DCbinary_filtered"])
    np.testing.assert_allclose(wf, ref["ref_DCweighted_filtered"], rtol=1e-13, atol=1e-11)
    # DPARSF's chain writes the filtered series as float32 between stages
    bc, wc = metrics.degree_centralities(filtered.astype(np.float32), mask, 0.25,
                                         convention="dpabi")
    np.testing.assert_array_equal(bc, ref["ref_DCbinary_dparsf_chain"])
    np.testing.assert_allclose(wc, ref["ref_DCweighted_dparsf_chain"], rtol=1e-6, atol=1e-5)
    # the single-map function returns the same maps
    single = metrics.degree_centrality(filtered, mask, 0.25, weighted=True, convention="dpabi")
    np.testing.assert_array_equal(single, wf)


def test_vmhc_matches_dpabi_zvmhc_1e13(ref):
    mask, affine = ref["mask"], ref["affine"]
    z = metrics.vmhc(ref["bold"], mask, affine, convention="dpabi")
    _close(z, ref["ref_zVMHC"], atol=1e-13)  # measured 2.0e-15
    np.testing.assert_allclose(np.tanh(z), ref["ref_VMHC_r"], atol=1e-14)
    union = mask | mask[::-1]
    zf = metrics.vmhc(bandpass(ref["bold"], ref["tr"], ref["band"], mask=union), mask, affine,
                      convention="dpabi")
    _close(zf, ref["ref_zVMHC_filtered"], atol=1e-12)  # measured 4.9e-14
    np.testing.assert_allclose(np.tanh(zf), ref["ref_VMHC_r_filtered"], atol=1e-12)
    assert (z[ref["bold"].shape[0] // 2] == 0).all()


def test_seed_fc_matches_dpabi_zfc_1e12(ref, filtered):
    mask, seed = ref["mask"], ref["seed"]
    s = ref["bold"][seed].mean(axis=0)
    np.testing.assert_array_equal(s, ref["ref_SeedSeries"])
    z = _in_mask(metrics.seed_fc(s, ref["bold"][mask], convention="dpabi"), mask)
    _close(z, ref["ref_zFC"], atol=1e-13)  # measured 6.7e-16
    sf = filtered[seed].mean(axis=0)
    np.testing.assert_allclose(sf, ref["ref_SeedSeries_filtered"], atol=1e-12)  # 1.4e-13
    zf = _in_mask(metrics.seed_fc(sf, filtered[mask], convention="dpabi"), mask)
    _close(zf, ref["ref_zFC_filtered"], atol=1e-12)  # measured 6.3e-14
