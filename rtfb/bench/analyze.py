"""Offline cohort analysis (``rtfb analyze``) on a Dask local cluster: 1 vs 2 workers.

A synthetic cohort (``simulator.cohort``) is written to a temporary folder and analysed
from scratch with each number of worker processes (one thread each); the table gives the
cluster start-up, a warm-up run (imports and cached numba kernels loaded in each worker),
then the median wall-clock time of the whole cohort over ``--repeats`` runs from scratch
(``overwrite=True``), seconds per subject and the speed-up (ratio of the medians) over the
first worker count. The maps of every run are checked to be identical across runs.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _maps(results: dict) -> dict:
    import nibabel as nib

    return {(prefix, key): np.asarray(nib.load(path).dataobj)
            for prefix, paths in results.items() for key, path in paths.items()
            if str(path).endswith(".nii.gz")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench analyze``."""
    parser.add_argument("--subjects", type=int, default=24, help="cohort size (half patients)")
    parser.add_argument("--shape", default="24x24x16", help="grid, e.g. 24x24x16")
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare (local cluster, processes)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of the cohort per worker count (median reported)")
    parser.add_argument("--seed", type=int, default=0)


def _time_workers(bids: Path, warmup: Path, out: Path, n_workers: int, repeats: int) -> tuple:
    """(cluster start-up s, warm-up s, analysis s of each repeat, results) on a fresh local
    cluster; every repeat recomputes all subjects.
    """
    from distributed import Client, LocalCluster

    from ..offline.run import SINGLE_THREAD_ENV, analyze

    start = time.perf_counter()
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, env=dict(SINGLE_THREAD_ENV))
    client = Client(cluster)
    try:
        started = time.perf_counter()
        # imports and cached numba kernels loaded in every worker: one tiny run per worker
        analyze(warmup, out / "warmup", scheduler=cluster.scheduler_address, progress=False)
        warmed = time.perf_counter()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            results = analyze(bids, out / "deriv", scheduler=cluster.scheduler_address,
                              overwrite=True, progress=False)
            times.append(time.perf_counter() - t0)
    finally:
        client.close()
        cluster.close()
    return started - start, warmed - started, times, results


def run(args: argparse.Namespace) -> int:
    """Write the cohort, analyse it with each worker count, print a markdown table."""
    from simulator.cohort import write_cohort

    shape = tuple(int(v) for v in args.shape.split("x"))
    n_pat = args.subjects // 2
    print(f"# rtfb.bench analyze  (python {platform.python_version()}, {platform.machine()}, "
          f"{args.subjects} subjects, {args.shape} x {args.volumes} volumes)\n")
    rows, reference = [], None
    with tempfile.TemporaryDirectory(prefix="rtfb-bench-analyze-") as tmp:
        bids, warmup = Path(tmp) / "bids", Path(tmp) / "warmup"
        start = time.perf_counter()
        write_cohort(bids, n_pat, args.subjects - n_pat, seed=args.seed, shape=shape,
                     n_volumes=args.volumes)
        write_cohort(warmup, max(args.workers), 0, seed=args.seed + 1, shape=shape,
                     n_volumes=args.volumes)
        print(f"cohort written in {time.perf_counter() - start:.1f} s", flush=True)
        for n_workers in args.workers:
            print(f"analysing with {n_workers} worker(s) ...", flush=True)
            startup, warm, times, results = _time_workers(
                bids, warmup, Path(tmp) / f"out-{n_workers}", n_workers, args.repeats)
            maps = _maps(results)
            if reference is None:
                reference = maps
            identical = maps.keys() == reference.keys() and all(
                np.array_equal(maps[k], reference[k]) for k in reference)
            rows.append((n_workers, startup, warm, float(np.median(times)), min(times),
                         max(times), identical))
    print(f"\n| workers | cluster start (s) | warm-up (s) | analysis median of {args.repeats} "
          "(min-max) (s) | s / subject | speed-up | maps identical |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for n_workers, startup, warm, median, low, high, identical in rows:
        print(f"| {n_workers} | {startup:.1f} | {warm:.1f} | {median:.1f} ({low:.1f}-{high:.1f}) "
              f"| {median / args.subjects:.2f} | {rows[0][3] / median:.2f}x | "
              f"{'yes' if identical else 'NO'} |")
    return 0 if all(identical for *_, identical in rows) else 1
