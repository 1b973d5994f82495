"""Synthetic BOLD subjects with planted, known effects (the ground truth of the tests and demo).

Signal model of voxel ``v`` at volume ``t`` (before motion)::

    y(v, t) = b(v)                               baseline ~ ``baseline`` inside the brain
            + b(v) (d1(v) u_t + d2(v) (u_t^2 - mean))   slow drift, u_t in [-1, 1]
            + a sin(2 pi f t TR + phi)           only in ``left_insula`` (ALFF effect)
            + A s_seed(t) / A s_target(t)        only in ``seed`` / ``target`` (FC effect)
            + sigma sqrt(h) g(v, t)              only in ``homogeneous`` (ReHo effect)

``d1, d2 ~ N(0, drift_fraction)`` per voxel; ``s_seed`` and ``s_target`` are unit-variance
band-limited random signals whose sample correlation over the run is exactly
``fc_correlation``; ``g`` is white noise smoothed in space (Gaussian, ``reho_smoothing``
voxels) and rescaled to unit variance. With ``motion=True`` every volume is then moved
rigidly (cubic spline). Finally white Gaussian noise is added: ``sigma`` everywhere,
``sigma sqrt(1 - h)`` in ``homogeneous`` (so the total noise variance, hence ALFF, is the
same there as elsewhere, but neighbouring voxels are correlated).

The mask and ROIs are defined in the reference (volume 0, unmoved) space. Nothing here
imports ``rtfb``: the simulator plays the scanner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["SyntheticSubject", "make_subject", "rigid_matrix", "write_subject"]

MOTION_PARAMS = ("tx", "ty", "tz", "rx", "ry", "rz")
MOTION_CONVENTION = (
    "Parameters (tx, ty, tz) in mm and (rx, ry, rz) in degrees of volume t relative to "
    "volume 0 (all zero). World coordinates are RAS+ mm with the origin at the grid centre. "
    "A point of the head at p in volume 0 is at R p + t in volume t, with "
    "R = Rx(rx) @ Ry(ry) @ Rz(rz) (right-handed rotations about the x, y and z axes, "
    "applied to column vectors) and t = (tx, ty, tz); see simulator.synthetic.rigid_matrix."
)

# ROI centres in units of the brain ellipsoid's semi-axes (x: left->right, y: posterior->
# anterior, z: inferior->superior), relative to the grid centre; the right insula is the
# exact mirror image of the left one across the midline (axis 0).
_ROI_CENTRES = {
    "left_insula": (-0.55, 0.10, 0.0),
    "seed": (0.0, -0.50, 0.25),  # posterior-cingulate-like
    "target": (0.0, 0.55, 0.10),  # medial-prefrontal-like
    "homogeneous": (0.45, -0.45, -0.25),
}
_BRAIN_SEMI_AXES = 0.42  # fraction of the grid size along each axis
_TEXTURE_CONTRAST = 0.10  # relative spatial variation of the baseline
_MIN_SIZE = 8


@dataclass
class SyntheticSubject:
    """A synthetic BOLD run with its brain mask, ROIs and ground truth.

    Attributes
    ----------
    data : numpy.ndarray of float32, shape (X, Y, Z, T)
        BOLD series, time last.
    affine : numpy.ndarray, shape (4, 4)
        Voxel to RAS+ mm; the grid centre is the world origin.
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Ellipsoid brain mask (reference space).
    rois : dict of str to numpy.ndarray of bool
        ``left_insula``, ``right_insula``, ``seed``, ``target`` and ``homogeneous``;
        disjoint and inside ``mask``.
    truth : dict
        JSON-serialisable ground truth (see :func:`make_subject`).
    series : dict of str to numpy.ndarray
        Ground-truth voxel series (n_voxels, T) of the ``left_insula``, ``seed`` and
        ``target`` ROIs: baseline + planted signals + thermal noise, without drift and
        motion (what a perfect preprocessing would recover).
    """

    data: np.ndarray
    affine: np.ndarray
    mask: np.ndarray
    rois: dict[str, np.ndarray] = field(default_factory=dict)
    truth: dict = field(default_factory=dict)
    series: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def tr(self) -> float:
        """Repetition time in seconds."""
        return float(self.truth["tr"])


def rigid_matrix(params: Sequence[float]) -> np.ndarray:
    """4x4 rigid transform (world mm) of one set of motion parameters.

    Parameters
    ----------
    params : sequence of 6 float
        ``tx, ty, tz`` (mm), ``rx, ry, rz`` (degrees).

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        ``[[R, t], [0, 1]]`` with ``R = Rx @ Ry @ Rz``; maps a point's position in the
        reference volume to its position in the moved volume.
    """
    tx, ty, tz, rx, ry, rz = (float(p) for p in params)
    cx, cy, cz = np.cos(np.deg2rad([rx, ry, rz]))
    sx, sy, sz = np.sin(np.deg2rad([rx, ry, rz]))
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rot_x @ rot_y @ rot_z
    out[:3, 3] = (tx, ty, tz)
    return out


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as err:
        raise ValueError(f"shape must be 3 integers, got {shape!r}.") from err
    if len(shape) != 3 or min(shape) < _MIN_SIZE:
        raise ValueError(f"shape must be 3 integers >= {_MIN_SIZE}, got {shape!r}.")
    return shape


def _check_positive(value, name: str) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


def _blob(shape, centre, radius) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
    return dist2 <= radius**2


def _make_rois(shape, mask, radius) -> dict[str, np.ndarray]:
    centre = (np.asarray(shape) - 1) / 2.0
    semi = _BRAIN_SEMI_AXES * np.asarray(shape)
    rois = {}
    for name, frac in _ROI_CENTRES.items():
        r = 1.5 * radius if name == "homogeneous" else radius
        rois[name] = _blob(shape, centre + np.asarray(frac) * semi, r) & mask
    rois["right_insula"] = rois["left_insula"][::-1].copy()  # mask is symmetric too
    names = list(rois)
    for i, name in enumerate(names):
        if not rois[name].any():
            raise ValueError(f"shape {shape} is too small: ROI {name!r} is empty.")
        for other in names[i + 1:]:
            if (rois[name] & rois[other]).any():
                raise ValueError(f"shape {shape} is too small: ROIs {name!r} and "
                                 f"{other!r} overlap.")
    order = ("left_insula", "right_insula", "seed", "target", "homogeneous")
    return {name: rois[name] for name in order}


def _smooth_field(rng, shape, sigma) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / f.std()


def _band_limited(rng, n_signals, n_volumes, tr, band) -> np.ndarray:
    """Orthonormal-by-rows (unit sample variance, mean 0) signals limited to ``band`` Hz."""
    freqs = np.fft.rfftfreq(n_volumes, d=tr)
    keep = (freqs >= band[0]) & (freqs <= band[1])
    if keep.sum() < n_signals:
        raise ValueError(
            f"{n_volumes} volumes at tr={tr} s give {int(keep.sum())} frequency bins in "
            f"fc_band={tuple(band)}; at least {n_signals} are needed: use more volumes."
        )
    spec = np.fft.rfft(rng.standard_normal((n_signals, n_volumes)), axis=-1)
    spec[:, ~keep] = 0.0
    sig = np.fft.irfft(spec, n=n_volumes, axis=-1)
    q, _ = np.linalg.qr(sig.T)  # columns: orthonormal, still band-limited and zero-mean
    return q.T * np.sqrt(n_volumes)


def _motion_trace(rng, n_volumes, max_translation, max_rotation, step=0.08) -> np.ndarray:
    """Smooth random walk (n_volumes, 6), zero at volume 0, within the bounds."""
    steps = rng.standard_normal((n_volumes, 6)) * step
    steps[0] = 0.0
    walk = ndimage.gaussian_filter1d(np.cumsum(steps, axis=0), 2.0, axis=0, mode="nearest")
    walk -= walk[0]
    bounds = np.array([max_translation] * 3 + [max_rotation] * 3)
    peak = np.abs(walk).max(axis=0)
    scale = np.where(peak > bounds, bounds / np.maximum(peak, 1e-12), 1.0)
    return walk * scale * (1 - 1e-9)  # strictly inside the bounds after rounding


def _apply_motion(data, params, zooms) -> None:
    """Move each volume in place by ``rigid_matrix(params[t])`` about the grid centre."""
    centre = (np.asarray(data.shape[:3]) - 1) / 2.0
    scale = np.diag(zooms)
    inv_scale = np.diag(1.0 / np.asarray(zooms))
    for t in range(1, data.shape[-1]):
        if not np.any(params[t]):
            continue
        m = rigid_matrix(params[t])
        rot_t, trans = m[:3, :3].T, m[:3, 3]
        # output voxel o is the moved position of the input voxel i:
        # i = S^-1 R^T (S (o - c) - t) + c
        matrix = inv_scale @ rot_t @ scale
        offset = centre - matrix @ centre - inv_scale @ rot_t @ trans
        vol = np.ascontiguousarray(data[..., t])
        data[..., t] = ndimage.affine_transform(vol, matrix, offset=offset, order=3,
                                                mode="constant", cval=0.0)


def make_subject(
    shape: Sequence[int] = (64, 64, 36),
    n_volumes: int = 200,
    tr: float = 2.0,
    voxel_size: float | Sequence[float] = 3.0,
    seed: int = 0,
    motion: bool = False,
    *,
    baseline: float = 1000.0,
    noise_sigma: float = 8.0,
    drift_fraction: float = 0.005,
    alff_frequency: float = 0.04,
    alff_amplitude: float = 25.0,
    fc_correlation: float = 0.6,
    fc_amplitude: float = 8.0,
    fc_band: tuple[float, float] = (0.01, 0.08),
    reho_fraction: float = 0.8,
    reho_smoothing: float = 1.5,
    max_translation: float = 3.0,
    max_rotation: float = 3.0,
    motion_step: float = 0.08,
    alff_scale=None,
    fc_z_shift=None,
    psc_change=None,
    signal_margin: int = 0,
) -> SyntheticSubject:
    """Generate a synthetic BOLD run with planted ALFF, seed-FC and ReHo effects.

    Parameters
    ----------
    shape : sequence of 3 int
        Grid size (each >= 8).
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time in seconds.
    voxel_size : float | sequence of 3 float
        Voxel size in mm.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed gives identical output.
    motion : bool
        Move the head rigidly (smooth random walk, volume 0 is the reference).
    baseline : float
        Mean intensity inside the brain (spatial variation of about 10 %).
    noise_sigma : float
        Standard deviation of the white noise.
    drift_fraction : float
        Standard deviation, relative to the baseline, of the per-voxel linear and
        quadratic drift coefficients (over the run, time scaled to [-1, 1]).
    alff_frequency, alff_amplitude : float
        Frequency (Hz) and amplitude of the sinusoid added to the left insula.
    fc_correlation : float
        Correlation (in [-1, 1]) of the band-limited signals added to ``seed`` and
        ``target``, exact over the whole run.
    fc_amplitude : float
        Standard deviation of those signals.
    fc_band : tuple of float
        Their frequency band in Hz.
    reho_fraction : float
        Fraction (in [0, 1)) of the noise variance that is spatially smooth in the
        ``homogeneous`` ROI.
    reho_smoothing : float
        Gaussian sigma (voxels) of that smooth noise.
    max_translation, max_rotation : float
        Bounds of the motion trace (mm, degrees).
    motion_step : float
        Standard deviation of the random walk's steps per volume (mm, degrees) before
        smoothing; larger values reach the bounds sooner.
    alff_scale : array-like, shape (n_volumes,) | None
        Per-volume factor on the left-insula sinusoid's amplitude (a virtual participant
        lowering its insula ALFF; see :mod:`simulator.participant`).
    fc_z_shift : array-like, shape (n_volumes,) | None
        Per-volume Fisher z added to ``fc_correlation``: the shared part of the seed and
        target signals is weighted ``sqrt(|rho_t|)``, their own parts ``sqrt(1 - |rho_t|)``
        with ``rho_t = tanh(arctanh(fc_correlation) + shift_t)``.
    psc_change : array-like, shape (n_volumes,) | None
        Per-volume percent signal change added to the left insula (of its baseline).
    signal_margin : int
        The ALFF, PSC and FC signals are planted in their ROI grown by this many voxels
        (within the mask), so that the ROI's own voxels keep the whole signal when head
        motion and realignment blur its edges (0: exactly in the ROI).

    Returns
    -------
    SyntheticSubject
        ``truth`` holds the parameters above, ROI sizes and, per effect, the values
        expected from the model: ``fc.expected_roi_correlation`` (seed ROI mean vs
        target ROI mean), ``fc.expected_voxel_correlation`` (seed ROI mean vs one target
        voxel), ``reho.neighbour_correlation`` (face neighbours), and with ``motion`` the
        parameters of every volume (``motion.parameters``, shape (T, 6)).
    """
    shape = _check_shape(shape)
    n_volumes = int(n_volumes)
    if n_volumes < 8:
        raise ValueError(f"n_volumes must be >= 8, got {n_volumes}.")
    tr = _check_positive(tr, "tr")
    zooms = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,)).copy()
    if not (np.isfinite(zooms).all() and (zooms > 0).all()):
        raise ValueError(f"voxel_size must be > 0, got {voxel_size!r}.")
    if not -1.0 <= fc_correlation <= 1.0:
        raise ValueError(f"fc_correlation must lie in [-1, 1], got {fc_correlation!r}.")
    if not 0.0 <= reho_fraction < 1.0:
        raise ValueError(f"reho_fraction must lie in [0, 1), got {reho_fraction!r}.")
    if not 0 < alff_frequency < 0.5 / tr:
        raise ValueError(f"alff_frequency must lie in (0, {0.5 / tr}) Hz (Nyquist), "
                         f"got {alff_frequency!r}.")
    rng = np.random.default_rng(seed)

    # geometry
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -zooms * (np.asarray(shape) - 1) / 2.0
    centre = (np.asarray(shape) - 1) / 2.0
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    semi = _BRAIN_SEMI_AXES * np.asarray(shape)
    rnorm2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi, strict=True))
    mask = rnorm2 <= 1.0
    radius = max(1.5, min(shape) / 12.0)
    rois = _make_rois(shape, mask, radius)

    # baseline: textured brain with a soft edge
    texture = _smooth_field(rng, shape, 2.0)
    soft = ndimage.gaussian_filter(mask.astype(np.float64), 0.6)
    base = (baseline * soft * (1.0 + _TEXTURE_CONTRAST * texture)).astype(np.float32)

    # slow drift, per voxel
    u = np.linspace(-1.0, 1.0, n_volumes)
    quad = u**2 - (u**2).mean()
    coef = rng.normal(0.0, drift_fraction, size=(2, *shape)) * base
    data = np.empty((*shape, n_volumes), dtype=np.float32)
    data[:] = base[..., None]
    data += coef[0, ..., None].astype(np.float32) * u.astype(np.float32)
    data += coef[1, ..., None].astype(np.float32) * quad.astype(np.float32)

    # ALFF: sinusoid in the left insula
    phase = float(rng.uniform(0, 2 * np.pi))
    times = np.arange(n_volumes) * tr
    margin = int(signal_margin)
    if margin < 0:
        raise ValueError(f"signal_margin must be >= 0 voxels, got {signal_margin!r}.")

    def region(name):
        if not margin:
            return rois[name]
        return ndimage.binary_dilation(rois[name], iterations=margin) & mask

    sinus = alff_amplitude * np.sin(2 * np.pi * alff_frequency * times + phase)
    if alff_scale is not None:
        sinus = sinus * _per_volume(alff_scale, n_volumes, "alff_scale")
    data[region("left_insula")] += sinus.astype(np.float32)
    if psc_change is not None:
        change = _per_volume(psc_change, n_volumes, "psc_change") / 100.0
        data[region("left_insula")] += (base[region("left_insula")][:, None]
                                        * change.astype(np.float32))

    # seed FC: band-limited signals with an exact sample correlation
    shared, own_seed, own_target = _band_limited(rng, 3, n_volumes, tr, fc_band)
    rho = float(fc_correlation)
    w_shared, w_own = np.sqrt(abs(rho)), np.sqrt(1.0 - abs(rho))
    if fc_z_shift is not None:
        rho_t = np.tanh(np.arctanh(np.clip(rho, -0.999999, 0.999999))
                        + _per_volume(fc_z_shift, n_volumes, "fc_z_shift"))
        w_shared, w_own = np.sqrt(np.abs(rho_t)), np.sqrt(1.0 - np.abs(rho_t))
    seed_signal = fc_amplitude * (w_shared * shared + w_own * own_seed)
    target_signal = fc_amplitude * (np.sign(rho) * w_shared * shared + w_own * own_target)
    data[region("seed")] += seed_signal.astype(np.float32)
    data[region("target")] += target_signal.astype(np.float32)

    # ReHo: spatially smooth noise in the homogeneous region (bounding box, padded)
    homo = rois["homogeneous"]
    pad = int(np.ceil(4 * reho_smoothing)) + 1
    idx = np.argwhere(homo)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box_shape = tuple(int(h - low) + 2 * pad for low, h in zip(lo, hi, strict=True))
    smooth = ndimage.gaussian_filter(
        rng.standard_normal((*box_shape, n_volumes)).astype(np.float32),
        (reho_smoothing,) * 3 + (0,), mode="wrap",
    )
    kernel = ndimage.gaussian_filter1d(np.eye(1, 4 * pad + 1, 2 * pad)[0], reho_smoothing)
    smooth /= np.float32(np.sqrt((kernel**2).sum()) ** 3)  # unit variance
    inner = smooth[pad:-pad, pad:-pad, pad:-pad]
    box = tuple(slice(int(low), int(h)) for low, h in zip(lo, hi, strict=True))
    sel = homo[box]
    data[box][sel] += np.float32(noise_sigma * np.sqrt(reho_fraction)) * inner[sel]
    neighbour_corr = float((kernel[1:] * kernel[:-1]).sum() / (kernel**2).sum())

    # rigid motion, then thermal noise; the truth series lack drift and motion
    tracked = ("left_insula", "seed", "target")
    series = {name: (data[rois[name]] - np.outer(coef[0][rois[name]], u)
                     - np.outer(coef[1][rois[name]], quad)).astype(np.float32)
              for name in tracked}
    params = None
    if motion:
        params = _motion_trace(rng, n_volumes, float(max_translation), float(max_rotation),
                               _check_positive(motion_step, "motion_step"))
        _apply_motion(data, params, zooms)
    noise_scale = np.full(shape, noise_sigma, dtype=np.float32)
    noise_scale[homo] *= np.float32(np.sqrt(1.0 - reho_fraction))
    for t in range(n_volumes):  # one volume at a time: bounded temporary memory
        noise = noise_scale * rng.standard_normal(shape, dtype=np.float32)
        data[..., t] += noise
        for name in tracked:
            series[name][:, t] += noise[rois[name]]

    # expected values from the model (drift variance of a voxel at the nominal baseline)
    drift_var = (baseline * drift_fraction) ** 2 * (np.var(u) + np.var(quad))
    noise_var = noise_sigma**2 + drift_var
    n_seed, n_target = int(rois["seed"].sum()), int(rois["target"].sum())
    sig_var = fc_amplitude**2
    expected_roi = expected_voxel = 0.0  # no planted signal: no correlation
    if sig_var > 0:
        expected_roi = rho * sig_var / np.sqrt(
            (sig_var + noise_var / n_seed) * (sig_var + noise_var / n_target))
        expected_voxel = rho * sig_var / np.sqrt(
            (sig_var + noise_var / n_seed) * (sig_var + noise_var))

    truth = {
        "shape": list(shape),
        "n_volumes": n_volumes,
        "tr": tr,
        "voxel_size": zooms.tolist(),
        "seed": int(seed),
        "signal_margin_voxels": margin,
        "baseline": float(baseline),
        "noise_sigma": float(noise_sigma),
        "drift_fraction": float(drift_fraction),
        "roi_voxels": {name: int(roi.sum()) for name, roi in rois.items()},
        "mask_voxels": int(mask.sum()),
        "alff": {
            "roi": "left_insula",
            "control_roi": "right_insula",
            "frequency_hz": float(alff_frequency),
            "amplitude": float(alff_amplitude),
            "phase_rad": phase,
        },
        "fc": {
            "seed_roi": "seed",
            "target_roi": "target",
            "correlation": rho,
            "amplitude": float(fc_amplitude),
            "band_hz": [float(b) for b in fc_band],
            "expected_roi_correlation": float(expected_roi),
            "expected_voxel_correlation": float(expected_voxel),
        },
        "reho": {
            "roi": "homogeneous",
            "smooth_fraction": float(reho_fraction),
            "smoothing_sigma_voxels": float(reho_smoothing),
            "neighbour_correlation": float(reho_fraction * neighbour_corr),
        },
        "motion": None,
    }
    if params is not None:
        truth["motion"] = {
            "order": list(MOTION_PARAMS),
            "units": ["mm"] * 3 + ["deg"] * 3,
            "convention": MOTION_CONVENTION,
            "reference_volume": 0,
            "max_translation_mm": float(max_translation),
            "max_rotation_deg": float(max_rotation),
            "step_sd": float(motion_step),
            "parameters": params.tolist(),
        }
    return SyntheticSubject(data=data, affine=affine, mask=mask, rois=rois, truth=truth,
                            series=series)


def _per_volume(values, n_volumes: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n_volumes,) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be {n_volumes} finite values (one per volume), got "
                         f"shape {arr.shape}.")
    return arr


def write_subject(subject: SyntheticSubject, out_dir: str | Path) -> dict[str, Path]:
    """Write a subject as NIfTI files and ``truth.json``.

    Parameters
    ----------
    subject : SyntheticSubject
        Output of :func:`make_subject`.
    out_dir : str | pathlib.Path
        Folder (created if needed).

    Returns
    -------
    dict of str to pathlib.Path
        ``bold``, ``mask``, ``roi-<name>`` and ``truth`` paths: ``bold.nii.gz`` (4D
        float32, TR in ``pixdim[4]``, units mm and s), ``mask.nii.gz`` and
        ``roi-<name>.nii.gz`` (uint8), ``truth.json``.
    """
    import json

    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    zooms = tuple(float(z) for z in np.sqrt((subject.affine[:3, :3] ** 2).sum(axis=0)))

    def _save(array, name, dtype, extra_zoom=()):
        img = nib.Nifti1Image(np.asarray(array, dtype=dtype), subject.affine)
        img.set_qform(subject.affine, code=1)
        img.set_sform(subject.affine, code=1)
        img.header.set_data_dtype(dtype)
        img.header.set_zooms(zooms + tuple(extra_zoom))
        img.header.set_xyzt_units("mm", "sec")
        path = out / name
        nib.save(img, path)
        return path

    written = {"bold": _save(subject.data, "bold.nii.gz", np.float32, (subject.tr,))}
    written["mask"] = _save(subject.mask, "mask.nii.gz", np.uint8)
    for name, roi in subject.rois.items():
        written[f"roi-{name}"] = _save(roi, f"roi-{name}.nii.gz", np.uint8)
    if subject.series:
        np.savez_compressed(out / "truth_series.npz", **subject.series)
        written["truth_series"] = out / "truth_series.npz"
    truth_path = out / "truth.json"
    truth_path.write_text(json.dumps(subject.truth, indent=2) + "\n")
    written["truth"] = truth_path
    return written
