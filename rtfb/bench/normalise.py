"""Spatial normalisation (dipy): registration time, accuracy on a known warp, series warp.

The MNI152 template (nilearn, ``--resolution`` mm) is seen as a subject: a known affine
(rotation 6/-4/8 degrees, scaling 0.95-1.05, shift 5/-7/4 mm) and a smooth displacement of
up to ``--displacement`` mm, sampled on an LAS grid of ``--voxel`` mm with its own field of
view. :func:`rtfb.offline.normalise.register` then brings it back (affine only, then
affine + SyN); reported: seconds, the median/max error of the recovered affine at the
template's brain voxels (without displacement), the Dice of the warped brain mask with the
template's, and the seconds of :meth:`~rtfb.offline.normalise.Registration.warp_series` on
``--volumes`` volumes. A measurement: exit code 0.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage


def known_subject(template, voxel: float, displacement_mm: float, seed: int = 0):
    """The template under the known transform on an LAS grid; returns images and truth."""
    from simulator.grids import rotation_matrix

    known = np.eye(4)
    known[:3, :3] = rotation_matrix((6.0, -4.0, 8.0)) @ np.diag([1.05, 0.95, 1.02])
    known[:3, 3] = (5.0, -7.0, 4.0)
    res = float(np.sqrt((template.affine[:3, :3] ** 2).sum(axis=0)).min())
    shape = tuple(int(n) for n in np.array(template.shape) * res / voxel + 4)
    affine = np.diag([-voxel, voxel, voxel, 1.0])
    affine[:3, 3] = [(shape[0] - 1) / 2 * voxel, -(shape[1] - 1) / 2 * voxel - 18,
                     -(shape[2] - 1) / 2 * voxel + 10]
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    world = affine[:3, :3] @ ijk + affine[:3, 3:]
    if displacement_mm > 0:
        rng = np.random.default_rng(seed)
        field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
                          for _ in range(3)])
        world = world + (field * displacement_mm / np.abs(field).max()).reshape(3, -1)
    vox = (np.linalg.inv(template.affine) @ np.linalg.inv(known)
           @ np.vstack([world, np.ones(world.shape[1])]))[:3]
    image = ndimage.map_coordinates(template.image, vox, order=1).reshape(shape)
    mask = ndimage.map_coordinates(template.mask.astype(float), vox, order=1).reshape(shape)
    return image, mask > 0.5, affine, known


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench normalise``."""
    p.add_argument("--resolution", type=int, default=4, help="MNI template mm (default 4)")
    p.add_argument("--voxel", type=float, default=3.3, help="subject grid mm (default 3.3)")
    p.add_argument("--displacement", type=float, default=6.0,
                   help="largest smooth displacement in mm (default 6)")
    p.add_argument("--volumes", type=int, default=200,
                   help="volumes of the warped series (default 200)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the numbers."""
    from ..offline.normalise import load_template, register, warped_dice

    template = load_template("mni", args.resolution)
    image, _, affine, known = known_subject(template, args.voxel, 0.0)
    ijk = np.vstack([np.argwhere(template.mask).T, np.ones(int(template.mask.sum()))])
    x = template.affine @ ijk
    start = time.perf_counter()
    reg = register(image, affine, template, nonlinear=False)
    seconds = time.perf_counter() - start
    error = np.linalg.norm((reg.affine @ x - known @ x)[:3], axis=0)
    print(f"MNI {args.resolution} mm {template.shape}, subject {image.shape} LAS "
          f"{args.voxel:g} mm")
    print(f"affine (known affine): {seconds:.1f} s, error median {np.median(error):.2f} mm, "
          f"max {error.max():.2f} mm")
    image, mask, affine, _ = known_subject(template, args.voxel, args.displacement)
    for nonlinear in (False, True):
        start = time.perf_counter()
        reg = register(image, affine, template, nonlinear=nonlinear)
        seconds = time.perf_counter() - start
        print(f"{'affine + SyN' if nonlinear else 'affine'} (known affine + displacement "
              f"<= {args.displacement:g} mm): {seconds:.1f} s, mask Dice "
              f"{warped_dice(reg, mask, template.mask):.3f}")
    where = reg.warp(mask.astype(float)) > 0.5
    data = np.random.default_rng(0).standard_normal((int(mask.sum()), args.volumes))
    start = time.perf_counter()
    reg.warp_series(data, mask, where)
    print(f"warp_series: {args.volumes} volumes, {int(mask.sum())} -> {int(where.sum())} "
          f"voxels: {time.perf_counter() - start:.1f} s")
    return 0
