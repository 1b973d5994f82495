import numpy as np
import pytest
from scipy import ndimage

from rtfb.ingest import Volume
from rtfb.preprocess.design import drift_regressors
from rtfb.preprocess.fd import framewise_displacement
from rtfb.preprocess.pipeline import Preprocessor
from rtfb.preprocess.realign import Realigner
from simulator import make_subject


@pytest.fixture(scope="module")
def subject():
    return make_subject(shape=(24, 24, 16), n_volumes=40, motion=True, seed=4, motion_step=0.3)


def _volumes(subject):
    return [Volume(subject.data[..., t], subject.affine, index=t)
            for t in range(subject.data.shape[-1])]


def test_glm_output_equals_lstsq_on_realigned_data(subject):
    vols = _volumes(subject)
    n_vol = len(vols)
    pre = Preprocessor(glm="cumulative", drift="legendre", drift_order=2, n_expected=n_vol,
                       mask=subject.mask).fit(vols[0])
    outputs, motion, fds = [], [], []
    for vol in vols:
        res = pre.transform(vol)
        outputs.append(res.data.copy())
        motion.append(res.motion)
        fds.append(res.fd)
    # independent: realign with a fresh Realigner, build the design, lstsq at every step
    realigner = Realigner().fit(vols[0].data, subject.affine)
    y, params = [], []
    for v in vols:
        realigned, p = realigner.transform(v.data)
        y.append(realigned[subject.mask])
        params.append(p.copy())
    y, params = np.array(y), np.array(params)
    np.testing.assert_allclose(np.array(motion), params, atol=1e-6)
    design = np.column_stack([drift_regressors(n_vol, "legendre", order=2), params])
    offset = vols[0].data[subject.mask]
    for t in range(n_vol):
        beta = np.linalg.lstsq(design[:t + 1], y[:t + 1], rcond=None)[0]
        expected = y[t] - design[t] @ beta + offset
        np.testing.assert_allclose(outputs[t] - offset, expected - offset, rtol=1e-6,
                                   atol=1e-6 * np.abs(y).max())
    np.testing.assert_allclose(fds, framewise_displacement(np.array(motion)), atol=1e-12)


def test_motion_flag_and_no_drop(subject):
    vols = _volumes(subject)
    pre = Preprocessor(glm="none", fd_threshold=0.05, mask=subject.mask).fit(vols[0])
    results = [pre.transform(v) for v in vols]
    assert len(results) == len(vols)
    censored = [r.censored for r in results]
    assert any(censored) and not all(censored)
    assert all(("motion" in r.flags) == r.censored for r in results)


def test_smoothing_without_glm_equals_scipy(subject):
    vols = _volumes(subject)
    pre = Preprocessor(realign=False, glm="none", smoothing_fwhm=6.0,
                       mask=subject.mask).fit(vols[0])
    res = pre.transform(vols[5])
    sigma = 6.0 / (2 * np.sqrt(2 * np.log(2))) / 3.0  # 3 mm voxels
    expected = ndimage.gaussian_filter(vols[5].data.astype(float), sigma, mode="reflect")
    np.testing.assert_allclose(res.data, expected[subject.mask], rtol=1e-5)


def test_plain_passthrough(subject):
    vols = _volumes(subject)
    pre = Preprocessor(realign=False, glm="none", mask=subject.mask).fit(vols[0])
    np.testing.assert_array_equal(pre.transform(vols[3]).data, vols[3].data[subject.mask])


def test_default_mask_from_reference(subject):
    pre = Preprocessor(glm="none").fit(_volumes(subject)[0])
    overlap = (pre.mask_ & subject.mask).sum() / subject.mask.sum()
    assert overlap > 0.9


def test_bad_input(subject):
    vols = _volumes(subject)
    with pytest.raises(RuntimeError, match="not fitted"):
        Preprocessor().transform(vols[0])
    pre = Preprocessor(mask=subject.mask, glm="sliding", window=10).fit(vols[0])
    with pytest.raises(ValueError, match=r"Volume 7 \(''\) has shape \(24, 24, 15\)"):
        pre.transform(Volume(vols[7].data[..., :15], subject.affine, index=7))
    shifted = subject.affine.copy()
    shifted[0, 3] += 5
    with pytest.raises(ValueError, match="another affine"):
        pre.transform(Volume(vols[7].data, shifted, index=7))
    bad = vols[7].data.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="Volume 7 .* NaN"):
        pre.transform(Volume(bad, subject.affine, index=7))
    assert pre.transform(vols[7]).index == 7  # still works after rejected volumes
    with pytest.raises(ValueError, match="'glm' parameter: 'batch'"):
        Preprocessor(glm="batch").fit(vols[0])
    with pytest.raises(ValueError, match="window must be >= 2"):
        Preprocessor(glm="sliding", window=1, mask=subject.mask).fit(vols[0])
    with pytest.raises(TypeError, match="reference must be a Volume"):
        Preprocessor().fit(vols[0].data)


def test_run_residuals_equal_whole_run_lstsq(subject):
    vols = _volumes(subject)
    n_vol = len(vols)
    pre = Preprocessor(glm="cumulative", n_expected=n_vol, mask=subject.mask).fit(vols[0])
    raw, motion = [], []
    for vol in vols:
        res = pre.transform(vol)
        raw.append(res.uncleaned.copy())
        motion.append(res.motion)
    raw = np.array(raw)
    design = np.column_stack([drift_regressors(n_vol, "legendre", order=2), np.array(motion)])
    beta = np.linalg.lstsq(design, raw, rcond=None)[0]
    expected = raw - design @ beta + vols[0].data[subject.mask]
    np.testing.assert_allclose(pre.run_residuals(raw), expected, rtol=1e-9,
                               atol=1e-7 * np.abs(raw).max())
    with pytest.raises(ValueError, match="uncleaned must have 2 dimensions"):
        pre.run_residuals(raw[0])
