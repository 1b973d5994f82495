"""Spatial normalisation of a run to a template with dipy (affine, then SyN).

Each run's mean EPI (the temporal mean of its volumes) is registered to a template:

1. centres of mass, then translation, rigid and affine
   (:class:`dipy.align.imaffine.AffineRegistration`, Mattes mutual information,
   :class:`~dipy.align.imaffine.MutualInformationMetric`, 32 bins, a Gaussian pyramid);
2. symmetric diffeomorphic registration
   (:class:`dipy.align.imwarp.SymmetricDiffeomorphicRegistration`, local cross-correlation
   :class:`~dipy.align.imwarp.CCMetric`) starting from that affine.

The template is the MNI152 2009a symmetric T1 template shipped with nilearn
(:func:`nilearn.datasets.load_mni152_template`, offline) resampled to ``resolution`` mm, or
any image given as a file (e.g. the simulator cohort's ``derivatives/truth/template.nii.gz``);
its grid is the grid of the normalised maps.

:class:`Registration` holds the result; :meth:`Registration.warp` resamples an image of the
run onto the template grid and :meth:`Registration.warp_series` the in-mask voxels of a whole
series (one composite sampling of the run's grid, then linear interpolation per volume).
:meth:`Registration.save` / :func:`load_registration` cache it as ``.npz`` + ``.json``.
With a T1 image, the T1 is registered to the template and the mean EPI rigidly to the T1
(:func:`through_rigid` composes the two). Bringing a whole run to the template grid with
its files and cache: :mod:`rtfb.offline.template_space`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["MNI_SPACE", "Registration", "Template", "load_registration", "load_template",
           "mean_epi", "register", "through_rigid", "warped_dice"]

#: Space label (templateflow) of nilearn's MNI152 template.
MNI_SPACE = "MNI152NLin2009aSym"
_MNI_DESCRIPTION = ("ICBM 2009a nonlinear symmetric MNI152 T1 template (skull-stripped, "
                    "nilearn.datasets.load_mni152_template)")
_MIN_LEVEL_SIZE = 6  # voxels: coarsest pyramid level's smallest dimension


@dataclass(frozen=True)
class Template:
    """A registration target and the grid of the normalised maps.

    Attributes
    ----------
    space : str
        BIDS ``space-`` label (``MNI152NLin2009aSym`` or the file's stem, alphanumerics).
    image : numpy.ndarray, shape (X, Y, Z)
        Template intensities.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-world affine.
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Brain mask of the template (MNI: nilearn's; a file: voxels above 20 % of its 98th
        percentile), for quality checks.
    description : str
        What the template is, for sidecars and the report.
    resolution : int | None
        Voxel size in mm (MNI) or None (a file, its own grid).
    source : str
        ``"mni"`` or the file path.
    """

    space: str
    image: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    description: str
    resolution: int | None
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return tuple(int(n) for n in self.image.shape)

    def as_dict(self) -> dict:
        """JSON-friendly description (no arrays)."""
        return {"Space": self.space, "Source": self.source, "Description": self.description,
                "ResolutionMM": self.resolution, "Shape": list(self.shape),
                "Affine": np.asarray(self.affine).tolist()}


def load_template(spec: str, resolution: int = 4) -> Template:
    """The template named by ``spec``.

    Parameters
    ----------
    spec : str
        ``"mni"`` (nilearn's MNI152 template) or the path of a 3D NIfTI image.
    resolution : int
        Voxel size in mm of the MNI template (ignored for a file).

    Returns
    -------
    Template

    Raises
    ------
    ValueError
        An unreadable or non-3D file, or a resolution that is not a whole number >= 1 mm
        (the message names it).
    """
    import nibabel as nib

    if spec == "mni":
        if float(resolution) != int(resolution) or int(resolution) < 1:
            raise ValueError(f"template resolution must be a whole number of mm >= 1, got "
                             f"{resolution!r}.")
        resolution = int(resolution)
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

        img = load_mni152_template(resolution=resolution)
        mask = np.asarray(load_mni152_brain_mask(resolution=resolution).dataobj) > 0
        return Template(MNI_SPACE, np.asarray(img.dataobj, dtype=np.float64),
                        np.asarray(img.affine, dtype=float), mask,
                        f"{_MNI_DESCRIPTION} at {resolution:g} mm", resolution, "mni")
    path = Path(spec)
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - any nibabel failure
        raise ValueError(f"{path}: unreadable template image ({err}); expected 'mni' or a 3D "
                         "NIfTI file.") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or not np.isfinite(data).all() or not (data > 0).any():
        raise ValueError(f"{path}: a template must be a finite 3D image with positive values, "
                         f"got shape {data.shape}.")
    label = re.sub(r"[^A-Za-z0-9]", "", path.name.split(".")[0]) or "template"
    mask = data > 0.2 * np.percentile(data[data > 0], 98)
    return Template(label, data, np.asarray(img.affine, dtype=float), mask,
                    f"template image {path}", None, str(path.resolve()))


def mean_epi(bold_path) -> tuple[np.ndarray, np.ndarray]:
    """Temporal mean of a 4D run and its affine (the image registered to the template)."""
    import nibabel as nib

    img = nib.load(bold_path)
    total = np.zeros(img.shape[:3])
    for t in range(img.shape[3]):  # one volume at a time: bounded memory
        total += np.asarray(img.dataobj[..., t], dtype=np.float64)
    return total / img.shape[3], np.asarray(img.affine, dtype=float)


def _pyramid(shape, factors=(4, 2, 1), sigmas=(3.0, 1.0, 0.0)):
    """Pyramid levels whose coarsest image keeps >= 6 voxels along every axis."""
    keep = [i for i, f in enumerate(factors) if min(shape) / f >= _MIN_LEVEL_SIZE or f == 1]
    return [factors[i] for i in keep], [sigmas[i] for i in keep]


@dataclass
class Registration:
    """Affine (+ SyN) registration of a run's grid to a template grid.

    Attributes
    ----------
    affine : numpy.ndarray, shape (4, 4)
        Template world -> world of ``moving_affine`` (mm): the point of the run matched to
        template point ``x`` is ``affine @ x`` before the nonlinear displacement (dipy's
        ``AffineMap``); see :func:`through_rigid` for a run registered through its T1.
    mapping : dipy.align.imwarp.DiffeomorphicMap | None
        The SyN map (None: affine only).
    template_shape, template_affine, moving_shape, moving_affine
        The two grids.
    info : dict
        Steps, parameters, timings and quality numbers (JSON-friendly).
    """

    affine: np.ndarray
    mapping: object | None
    template_shape: tuple[int, int, int]
    template_affine: np.ndarray
    moving_shape: tuple[int, int, int]
    moving_affine: np.ndarray
    info: dict = field(default_factory=dict)

    def warp(self, image: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """Resample a 3D image of the run onto the template grid.

        Parameters
        ----------
        image : numpy.ndarray, shape ``moving_shape``
            Image on the run's grid.
        interpolation : {"linear", "nearest"}
            dipy's interpolation.

        Returns
        -------
        numpy.ndarray, shape ``template_shape``
            0 where the template point falls outside the run's field of view.
        """
        image = np.asarray(image, dtype=np.float64)
        if image.shape != tuple(self.moving_shape):
            raise ValueError(f"image shape {image.shape} is not the run's grid "
                             f"{tuple(self.moving_shape)}.")
        if self.mapping is not None:
            warped = self.mapping.transform(
                image, interpolation=interpolation,
                image_world2grid=np.linalg.inv(self.moving_affine),
                out_shape=self.template_shape, out_grid2world=self.template_affine)
            return np.asarray(warped, dtype=np.float64)
        from dipy.align.imaffine import AffineMap

        amap = AffineMap(self.affine, domain_grid_shape=self.template_shape,
                         domain_grid2world=self.template_affine,
                         codomain_grid_shape=self.moving_shape,
                         codomain_grid2world=self.moving_affine)
        return np.asarray(amap.transform(image, interpolation=interpolation),
                          dtype=np.float64)

    def sampling_coordinates(self, where: np.ndarray) -> np.ndarray:
        """Run-grid voxel coordinates (3, n) of the template voxels ``where`` (bool mask).

        The warp of the run's index images (linear interpolation of a linear function is
        exact), so it composes the affine and the displacement exactly as :meth:`warp`.
        """
        idx = np.indices(self.moving_shape, dtype=np.float64)
        return np.stack([self.warp(idx[a])[where] for a in range(3)])

    def warp_series(self, data: np.ndarray, mask: np.ndarray,
                    where: np.ndarray) -> np.ndarray:
        """Resample the in-mask series of a run onto the template voxels ``where``.

        Parameters
        ----------
        data : numpy.ndarray, shape (n_voxels, n_volumes)
            Series of the voxels of ``mask`` (C order) on the run's grid.
        mask : numpy.ndarray of bool, shape ``moving_shape``
            The run's brain mask (rows of ``data``).
        where : numpy.ndarray of bool, shape ``template_shape``
            Template voxels to fill.

        Returns
        -------
        numpy.ndarray, shape (where.sum(), n_volumes)
            Trilinear interpolation of every volume at the warped positions.
        """
        from scipy.ndimage import map_coordinates

        coords = self.sampling_coordinates(where)
        volume = np.zeros(self.moving_shape)
        out = np.empty((int(where.sum()), data.shape[1]))
        for t in range(data.shape[1]):
            volume[mask] = data[:, t]
            out[:, t] = map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)
        return out

    def save(self, path) -> tuple[Path, Path]:
        """Write ``path`` (``.npz``: matrices and SyN fields) and the ``.json`` beside it."""
        path = Path(path)
        arrays = {"affine": self.affine, "template_shape": np.asarray(self.template_shape),
                  "template_affine": self.template_affine,
                  "moving_shape": np.asarray(self.moving_shape),
                  "moving_affine": self.moving_affine}
        m = self.mapping
        if m is not None:
            arrays.update(forward=np.asarray(m.forward, np.float32),
                          backward=np.asarray(m.backward, np.float32),
                          disp_grid2world=m.disp_grid2world,
                          domain_shape=np.asarray(m.domain_shape),
                          domain_grid2world=m.domain_grid2world,
                          codomain_shape=np.asarray(m.codomain_shape),
                          codomain_grid2world=m.codomain_grid2world,
                          prealign=np.eye(4) if m.prealign is None else m.prealign,
                          is_inverse=np.asarray(bool(m.is_inverse)))
        tmp = path.with_name(f".tmp-{path.name}")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        tmp.replace(path)
        sidecar = path.with_suffix(".json")
        sidecar.write_text(json.dumps(self.info, indent=2) + "\n")
        return path, sidecar


def load_registration(path) -> Registration:
    """Read a :class:`Registration` written by :meth:`Registration.save`."""
    from dipy.align.imwarp import DiffeomorphicMap

    path = Path(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    mapping = None
    t_shape = tuple(int(n) for n in arrays["template_shape"])
    m_shape = tuple(int(n) for n in arrays["moving_shape"])
    if "forward" in arrays:
        mapping = DiffeomorphicMap(3, arrays["forward"].shape[:3],
                                   disp_grid2world=arrays["disp_grid2world"],
                                   domain_shape=arrays["domain_shape"],
                                   domain_grid2world=arrays["domain_grid2world"],
                                   codomain_shape=arrays["codomain_shape"],
                                   codomain_grid2world=arrays["codomain_grid2world"],
                                   prealign=arrays["prealign"])
        mapping.forward = arrays["forward"].astype(np.float32)
        mapping.backward = arrays["backward"].astype(np.float32)
        mapping.is_inverse = bool(arrays["is_inverse"])
    info = json.loads(path.with_suffix(".json").read_text())
    return Registration(arrays["affine"], mapping, t_shape, arrays["template_affine"],
                        m_shape, arrays["moving_affine"], info)


def warped_dice(reg: Registration, moving_mask: np.ndarray, template_mask: np.ndarray) -> float:
    """Dice overlap of a run's brain mask warped to the template and the template's mask."""
    warped = reg.warp(np.asarray(moving_mask, float)) > 0.5
    template_mask = np.asarray(template_mask, bool)
    denom = warped.sum() + template_mask.sum()
    return float(2 * (warped & template_mask).sum() / denom) if denom else 0.0


def register(moving: np.ndarray, moving_affine: np.ndarray, template: Template, *,
             nonlinear: bool = True, affine_iters: tuple[int, ...] = (200, 100, 20),
             syn_iters: tuple[int, ...] = (30, 15, 5), cc_radius: int | None = None,
             rigid_only: bool = False) -> Registration:
    """Register an image (a mean EPI, a T1) to a template: affine by MI, then SyN by CC.

    Parameters
    ----------
    moving : numpy.ndarray, shape (X, Y, Z)
        Image to normalise.
    moving_affine : numpy.ndarray, shape (4, 4)
        Its voxel-to-world affine (any orientation: RAS, LAS, oblique).
    template : Template
        Target (:func:`load_template`).
    nonlinear : bool
        Follow the affine with SyN.
    affine_iters, syn_iters : tuple of int
        Iterations per pyramid level, coarse to fine (levels whose coarsest image would have
        fewer than 6 voxels along an axis are dropped).
    cc_radius : int | None
        Window radius (voxels) of the CC metric; default 4, or 2 on grids under 32 voxels.
    rigid_only : bool
        Stop after the rigid stage (a mean EPI to the same subject's T1; no SyN).

    Returns
    -------
    Registration
        ``info`` holds the steps, their parameters and seconds.
    """
    import dipy.align.imaffine  # noqa: F401 - configures dipy's logger, then quieten it

    dipy_log = logging.getLogger("dipy")
    level = dipy_log.level
    dipy_log.setLevel(logging.WARNING)  # dipy logs every pyramid level at INFO
    try:
        return _register(moving, moving_affine, template, nonlinear and not rigid_only,
                         affine_iters, syn_iters, cc_radius, rigid_only)
    finally:
        dipy_log.setLevel(level)


def _register(moving, moving_affine, template, nonlinear, affine_iters, syn_iters, cc_radius,
              rigid_only) -> Registration:
    from dipy.align.imaffine import (
        AffineRegistration,
        MutualInformationMetric,
        transform_centers_of_mass,
    )
    from dipy.align.transforms import (
        AffineTransform3D,
        RigidTransform3D,
        TranslationTransform3D,
    )

    moving = np.asarray(moving, dtype=np.float64)
    if moving.ndim != 3:
        raise ValueError(f"the moving image must be 3D, got shape {moving.shape}.")
    static, static_affine = template.image, template.affine
    moving_affine = np.asarray(moving_affine, dtype=float)
    info: dict = {"Template": template.as_dict(), "Method": "dipy", "Steps": []}

    started = time.perf_counter()
    smallest = tuple(min(a, b) for a, b in zip(static.shape, moving.shape, strict=True))
    factors, sigmas = _pyramid(smallest)
    iters = list(affine_iters)[-len(factors):]
    metric = MutualInformationMetric(nbins=32, sampling_proportion=None)
    areg = AffineRegistration(metric=metric, level_iters=iters, sigmas=sigmas,
                              factors=factors, verbosity=0)
    current = transform_centers_of_mass(static, static_affine, moving, moving_affine).affine
    stages = {"translation": TranslationTransform3D(), "rigid": RigidTransform3D()}
    if not rigid_only:
        stages["affine"] = AffineTransform3D()
    for transform in stages.values():
        amap = areg.optimize(static, moving, transform, None,
                             static_grid2world=static_affine, moving_grid2world=moving_affine,
                             starting_affine=current)
        current = amap.affine
    info["Steps"].append({
        "Name": "rigid" if rigid_only else "affine",
        "Implementation": "dipy.align.imaffine.AffineRegistration",
        "Metric": "MutualInformationMetric (Mattes, 32 bins, all voxels)",
        "Sequence": ["centres of mass", *stages],
        "LevelIters": iters, "Factors": factors, "Sigmas": sigmas,
        "Seconds": round(time.perf_counter() - started, 3)})
    info["AffineTemplateToRun"] = np.asarray(current).tolist()
    mapping = None
    if nonlinear:
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
        from dipy.align.metrics import CCMetric

        t0 = time.perf_counter()
        radius = int(cc_radius) if cc_radius is not None else (
            4 if min(static.shape) >= 32 else 2)
        s_iters = list(syn_iters)[-len(factors):]
        sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, sigma_diff=2.0, radius=radius),
                                                 level_iters=s_iters)
        mapping = sdr.optimize(static, moving, static_grid2world=static_affine,
                               moving_grid2world=moving_affine, prealign=current)
        info["Steps"].append({
            "Name": "SyN", "Implementation":
                "dipy.align.imwarp.SymmetricDiffeomorphicRegistration",
            "Metric": f"CCMetric (radius {radius} voxels, sigma_diff 2)",
            "LevelIters": s_iters, "Seconds": round(time.perf_counter() - t0, 3)})
    info["Seconds"] = round(time.perf_counter() - started, 3)
    return Registration(np.asarray(current, dtype=float), mapping, template.shape,
                        np.asarray(static_affine, dtype=float),
                        tuple(int(n) for n in moving.shape), moving_affine, info)


def through_rigid(anat: Registration, rigid: Registration) -> Registration:
    """Template -> run registration through an anatomical image.

    Parameters
    ----------
    anat : Registration
        The anatomical image (T1) registered to the template.
    rigid : Registration
        The run's image registered rigidly to that anatomical image
        (``register(mean, affine, Template of the T1, rigid_only=True)``).

    Returns
    -------
    Registration
        ``anat``'s transform applied to images on ``rigid``'s moving grid: that grid's
        voxel-to-world affine becomes ``inv(R) @ A`` (run voxels to T1 world, ``R`` the
        rigid T1 -> run world map), so every warp samples the run at ``A^-1 R y`` where
        ``y`` is the T1 point matched to the template point. ``affine`` stays ``anat``'s
        (template world -> T1 world, the frame of the new ``moving_affine``);
        ``info["AffineTemplateToRun"]`` is ``R @ anat.affine``.
    """
    moving_affine = np.linalg.inv(rigid.affine) @ rigid.moving_affine
    info = dict(anat.info, Steps=[dict(step, Name=f"{step['Name']} (T1w to template)")
                                  for step in anat.info.get("Steps", [])]
                + [dict(step, Name="rigid (mean EPI to T1w)")
                   for step in rigid.info.get("Steps", [])],
                Seconds=round(anat.info.get("Seconds", 0) + rigid.info.get("Seconds", 0), 3),
                AffineTemplateToRun=(rigid.affine @ anat.affine).tolist())
    return Registration(anat.affine, anat.mapping, anat.template_shape,
                        anat.template_affine, rigid.moving_shape, moving_affine, info)
