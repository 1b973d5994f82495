"""Subjects acquired on their own grids: voxel size, field of view, axis order and head pose.

A cohort subject is simulated on the cohort's common grid (where its truth lives: mask,
ROIs, atlas, template); :func:`subject_geometry` then draws how the scanner saw that head,
and :func:`resample_run` writes the run on that grid:

* grid: voxel size and field of view from :data:`GRID_CHOICES` (cycled over subjects), the
  first voxel axis pointing right (RAS) or left (LAS, a flipped x axis);
* head pose ``P`` (4x4, world mm): a point at ``c`` in the common space is at ``P c`` in the
  subject's scanner space; a rotation of up to ``max_rotation`` degrees about each axis and
  a translation of up to ``max_translation`` mm.

The run's voxel ``v`` holds the common-space image at ``P^-1 A v`` (``A`` the subject grid's
affine), by cubic-spline interpolation, 0 outside the common grid. The shared anatomy
(:func:`anatomy_field`), identical in every subject, is what a registration can lock onto;
each subject's own texture stays on top of it. :func:`t1w_image` makes a subject's T1w-like
image: the same anatomy with the opposite contrast on a finer grid, in its own head pose.
Nothing here imports ``rtfb``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

__all__ = ["GRID_CHOICES", "T1W_VOXEL", "anatomy_field", "resample_run", "rotation_matrix",
           "subject_geometry", "t1w_image", "t1w_template"]

#: (voxel size in mm, first axis direction) of the subject grids, cycled over subjects.
GRID_CHOICES = (((3.0, 3.0, 3.0), "RAS"), ((2.5, 2.5, 3.0), "LAS"),
                ((3.5, 3.5, 3.5), "RAS"), ((3.0, 3.0, 3.5), "LAS"))
_FOV_MARGIN = 1.2  # field of view / common grid extent (room for the head's rotation)
ANATOMY_CONTRAST = 0.3  # relative amplitude of the shared anatomy
T1W_VOXEL = 2.0  # mm, the T1w images' isotropic voxel size


def anatomy_field(shape, seed: int, sigma: float = 1.2) -> np.ndarray:
    """Shared anatomical pattern (unit SD smooth random field) of a cohort's subjects."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA7A7]))
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma, mode="nearest")
    return (field - field.mean()) / field.std()


def rotation_matrix(degrees) -> np.ndarray:
    """3x3 rotation ``Rx @ Ry @ Rz`` for angles (degrees) about x, y and z."""
    return Rotation.from_euler("XYZ", np.asarray(degrees, dtype=float), degrees=True).as_matrix()


def subject_geometry(index: int, seed: int, common_shape, common_zooms, *,
                     max_rotation: float = 6.0, max_translation: float = 4.0,
                     grid: tuple | None = None) -> dict:
    """Grid and head pose of one subject.

    Parameters
    ----------
    index : int
        Subject number (0-based): picks ``GRID_CHOICES[index % 4]``.
    seed : int
        Seed of the pose.
    common_shape, common_zooms
        The common grid (its world origin at the grid centre).
    max_rotation, max_translation : float
        Bounds of the pose (degrees per axis, mm per axis).
    grid : tuple | None
        ``(voxel size, orientation)`` instead of ``GRID_CHOICES[index % 4]``.

    Returns
    -------
    dict
        ``shape``, ``affine`` (4x4 voxel -> scanner mm), ``orientation`` (``"RAS"`` or
        ``"LAS"``), ``voxel_size``, ``rotation_deg``, ``translation_mm``, ``pose`` (4x4:
        common mm -> scanner mm) and ``to_common`` (its inverse); JSON-friendly lists.
    """
    zooms, orientation = grid or GRID_CHOICES[int(index) % len(GRID_CHOICES)]
    zooms = np.asarray(zooms, dtype=float)
    extent = np.asarray(common_shape, dtype=float) * np.asarray(common_zooms, dtype=float)
    shape = np.ceil(extent * _FOV_MARGIN / zooms).astype(int)
    affine = np.diag([*zooms, 1.0])
    if orientation == "LAS":
        affine[0, 0] = -zooms[0]
    affine[:3, 3] = -affine[:3, :3] @ ((shape - 1) / 2.0)  # grid centre at the origin
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6E1D]))
    rotation = rng.uniform(-max_rotation, max_rotation, 3)
    translation = rng.uniform(-max_translation, max_translation, 3)
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix(rotation)
    pose[:3, 3] = translation
    return {"shape": [int(n) for n in shape], "affine": affine.tolist(),
            "orientation": orientation, "voxel_size": zooms.tolist(),
            "rotation_deg": rotation.tolist(), "translation_mm": translation.tolist(),
            "pose": pose.tolist(), "to_common": np.linalg.inv(pose).tolist(),
            "convention": "a point at c (mm) of the common space is at pose @ c in the "
                          "subject's scanner space; rotation R = Rx @ Ry @ Rz"}


def resample_run(data: np.ndarray, common_affine: np.ndarray, geometry: dict) -> np.ndarray:
    """A common-grid run (X, Y, Z, T) as the scanner saw it on the subject's grid.

    Cubic-spline interpolation of each volume at ``A_common^-1 P^-1 A_subject v``; 0
    outside the common grid.
    """
    shape = tuple(geometry["shape"])
    matrix = (np.linalg.inv(np.asarray(common_affine)) @ np.asarray(geometry["to_common"])
              @ np.asarray(geometry["affine"]))
    out = np.empty((*shape, data.shape[3]), dtype=np.float32)
    for t in range(data.shape[3]):
        out[..., t] = ndimage.affine_transform(data[..., t], matrix[:3, :3],
                                               offset=matrix[:3, 3], output_shape=shape,
                                               order=3, mode="constant", cval=0.0)
    return out


def t1w_image(template: np.ndarray, mask: np.ndarray, common_affine: np.ndarray,
              geometry: dict) -> np.ndarray:
    """A T1w-like image of a subject on ``geometry``'s grid (see :func:`subject_geometry`).

    The common-space anatomy with the opposite contrast (:func:`t1w_template`: ``2 m -
    template`` inside the brain, ``m`` the template's mean there, so the shared pattern is
    inverted; 0 outside), resampled like a run (cubic spline at ``A_common^-1 P^-1 A_T1 v``).
    """
    inverted = t1w_template(template, mask)
    return resample_run(inverted[..., None].astype(np.float32), common_affine, geometry)[..., 0]


def t1w_template(template: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The T1w-contrast template on the common grid: ``soft(mask) * max(0, 2 m - template)``."""
    soft = ndimage.gaussian_filter(np.asarray(mask, np.float64), 0.6)
    level = float(template[mask].mean())
    return soft * np.clip(2.0 * level - template, 0.0, None)
