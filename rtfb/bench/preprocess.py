"""Real-time preprocessing: realignment accuracy and speed vs SimpleITK, whole pipeline time.

Realignment runs on a synthetic subject with a known rigid motion trace (the simulator's
ground truth). SimpleITK's rigid registration (Euler3DTransform, mean squares, regular
sampling of 12.5 % of the voxels, 2.5 mm smoothing, regular-step gradient descent, warm
start from the previous volume) is run on the same volumes as the comparison point; it is
an optional extra (``pip install rtfb[bench]``), not a runtime dependency.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..preprocess.realign import Realigner, rigid_matrix, rigid_params
from ._timing import summary_ms


def _subject(shape, n_volumes, seed):
    from simulator import make_subject

    return make_subject(shape=shape, n_volumes=n_volumes, motion=True, seed=seed,
                        motion_step=0.4)


def displacement_error(estimates, truth, points) -> np.ndarray:
    """Mean distance (mm) over ``points`` between estimated and true positions, per volume."""
    out = np.empty(len(truth))
    homog = np.column_stack([points, np.ones(len(points))])
    for t, (est, true) in enumerate(zip(estimates, truth, strict=True)):
        diff = homog @ (rigid_matrix(est) - rigid_matrix(true)).T
        out[t] = np.sqrt((diff[:, :3] ** 2).sum(axis=1)).mean()
    return out


def run_rtfb(subject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimates, estimation times and resampling times of rtfb's Realigner."""
    data = subject.data
    realigner = Realigner().fit(data[..., 0], subject.affine)
    out = np.empty(data.shape[:3])
    realigner.estimate(data[..., 0])
    realigner.resample(data[..., 0], out=out)  # compile outside the timings
    n_vol = data.shape[-1]
    est, t_est, t_res = np.empty((n_vol, 6)), np.empty(n_vol), np.empty(n_vol)
    for t in range(n_vol):
        vol = data[..., t]
        start = time.perf_counter()
        est[t] = realigner.estimate(vol)
        t_est[t] = time.perf_counter() - start
        start = time.perf_counter()
        realigner.resample(vol, out=out)
        t_res[t] = time.perf_counter() - start
    return est, t_est, t_res


def run_simpleitk(subject):
    """Estimates and times of SimpleITK's rigid registration, or None if not installed."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    affine = subject.affine
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))

    def image(vol):
        img = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0), np.float32))
        img.SetSpacing(zooms)
        img.SetOrigin(tuple(float(v) for v in affine[:3, 3]))  # diagonal affine: same frame
        return img

    fixed = image(subject.data[..., 0])
    transform = sitk.Euler3DTransform()
    transform.SetCenter((0.0, 0.0, 0.0))
    n_vol = subject.data.shape[-1]
    est, times = np.empty((n_vol, 6)), np.empty(n_vol)
    for t in range(n_vol):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMeanSquares()
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(0.125)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=200,
            gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([1])
        reg.SetSmoothingSigmasPerLevel([2.5])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(transform, inPlace=True)
        moving = image(subject.data[..., t])
        start = time.perf_counter()
        reg.Execute(fixed, moving)
        times[t] = time.perf_counter() - start
        matrix = np.eye(4)
        matrix[:3, :3] = np.reshape(transform.GetMatrix(), (3, 3))
        matrix[:3, 3] = transform.GetTranslation()
        est[t] = rigid_params(matrix)
    return est, times


def time_pipeline(shape, n_volumes, seed, fwhm=6.0) -> np.ndarray:
    """Seconds per volume of the whole Preprocessor (realign, FD, smooth, mask, GLM)."""
    from ..ingest import Volume
    from ..preprocess.pipeline import Preprocessor

    subject = _subject(shape, n_volumes, seed)
    vols = [Volume(subject.data[..., t], subject.affine, index=t) for t in range(n_volumes)]
    pre = Preprocessor(smoothing_fwhm=fwhm, glm="cumulative", n_expected=n_volumes,
                       mask=subject.mask).fit(vols[0])
    pre.transform(vols[0])  # compile outside the timings
    pre = Preprocessor(smoothing_fwhm=fwhm, glm="cumulative", n_expected=n_volumes,
                       mask=subject.mask).fit(vols[0])
    times = np.empty(n_volumes)
    for t, vol in enumerate(vols):
        start = time.perf_counter()
        pre.transform(vol)
        times[t] = time.perf_counter() - start
    return times, int(subject.mask.sum())


def _error_row(name, est, truth, points, times):
    err = np.abs(est - truth)
    disp = displacement_error(est, truth, points)
    med, p95 = summary_ms(times)
    return (f"| {name} | {np.median(err[:, :3]):.4f} / {err[:, :3].max():.4f} | "
            f"{np.median(err[:, 3:]):.4f} / {err[:, 3:].max():.4f} | "
            f"{np.median(disp):.4f} / {disp.max():.4f} | {med:.1f} / {p95:.1f} |"), med


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench preprocess``."""
    parser.add_argument("--shape", default="64x64x36")
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-simpleitk", action="store_true")
    parser.add_argument("--pipeline-shapes", nargs="*", default=["64x64x36", "104x104x72"],
                        help="grids for the whole-pipeline timing")
    parser.add_argument("--pipeline-volumes", type=int, default=40)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print markdown tables."""
    shape = tuple(int(v) for v in args.shape.split("x"))
    subject = _subject(shape, args.volumes, args.seed)
    truth = np.asarray(subject.truth["motion"]["parameters"])
    points = np.argwhere(subject.mask) @ subject.affine[:3, :3].T + subject.affine[:3, 3]
    print(f"# rtfb.bench preprocess: realignment of {args.volumes} volumes, "
          f"{args.shape}, synthetic subject with known motion "
          f"(max |t| {np.abs(truth[:, :3]).max():.2f} mm, max |r| "
          f"{np.abs(truth[:, 3:]).max():.2f} deg)\n")
    print("| method | translation error median / max (mm) | rotation error median / max (deg) "
          "| brain displacement error median / max (mm) | time per volume median / p95 (ms) |")
    print("|---|---:|---:|---:|---:|")
    est, t_est, t_res = run_rtfb(subject)
    row, rtfb_med = _error_row("rtfb Realigner (estimate)", est, truth, points, t_est)
    print(row)
    med, p95 = summary_ms(t_res)
    print(f"| rtfb resampling (trilinear) | | | | {med:.1f} / {p95:.1f} |")
    if not args.no_simpleitk:
        result = run_simpleitk(subject)
        if result is None:
            print("\nSimpleITK is not installed (pip install 'rtfb[bench]'): comparison skipped.")
        else:
            row, sitk_med = _error_row("SimpleITK rigid registration", result[0], truth,
                                       points, result[1])
            print(row)
            print(f"\nrtfb estimation is {sitk_med / rtfb_med:.0f}x faster than SimpleITK "
                  "(median time per volume).")
    if args.pipeline_shapes:
        print("\n## whole preprocessing per volume (realign + FD + 6 mm smoothing + mask + "
              "cumulative GLM with Legendre drift and motion)\n")
        print("| grid | in-mask voxels | median / p95 (ms) |")
        print("|---|---:|---:|")
        for text in args.pipeline_shapes:
            grid = tuple(int(v) for v in text.split("x"))
            times, n_vox = time_pipeline(grid, args.pipeline_volumes, args.seed)
            med, p95 = summary_ms(times)
            print(f"| {text} | {n_vox} | {med:.1f} / {p95:.1f} |", flush=True)
    return 0
