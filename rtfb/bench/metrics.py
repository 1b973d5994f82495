"""Sliding-window metric states vs batch recomputation on the same window.

For each grid size and window: median and p95 time per update of each incremental
state (ALFF+fALFF, ReHo 27, seed-FC, PSC) and of all of them together, the same for
the batch functions applied to the window, and their ratio. A final run reports the
resident memory before and after 2,000 updates of all states.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from ..metrics import SlidingALFF, SlidingPSC, SlidingReHo, SlidingSeedFC, psc, reho, seed_fc
from ..metrics.alff import _alff_falff
from ._timing import peak_rss_mib, rss_mib, summary_ms, time_calls

TR = 2.0
BRAIN_FRACTION = 0.305  # 64x64x36 -> about 45k in-mask voxels


def brain_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """Ellipsoid mask filling ``BRAIN_FRACTION`` of the grid."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
    radius = (BRAIN_FRACTION * 6 / np.pi) ** (1 / 3)
    return (grid**2).sum(-1) <= radius**2


def _states(window: int, mask: np.ndarray) -> dict:
    seed = np.zeros(int(mask.sum()), bool)
    seed[:: max(1, seed.size // 100)] = True  # about 100 seed voxels
    return {
        "ALFF+fALFF": SlidingALFF(window, TR),
        "ReHo27": SlidingReHo(window, mask, 27),
        "seed-FC": SlidingSeedFC(window, seed),
        "PSC": SlidingPSC(window),
    }


def bench_config(shape, window, n_updates, n_batch, rng) -> list[dict]:
    """Time every state and its batch counterpart on one grid size and window."""
    mask = brain_mask(shape)
    n_vox = int(mask.sum())
    states = _states(window, mask)
    volumes = 1000 + rng.standard_normal((window + n_updates, n_vox))
    inc = {name: np.empty(n_updates) for name in states}
    inc["all"] = np.empty(n_updates)
    for t in range(window):  # fill the window
        for state in states.values():
            state.partial_fit(volumes[t])
    for i in range(n_updates):
        vol = volumes[window + i]
        for name, state in states.items():
            start = time.perf_counter()
            state.partial_fit(vol)
            inc[name][i] = time.perf_counter() - start
        inc["all"][i] = sum(inc[name][i] for name in states)

    win = volumes[-window:].T.copy()  # (n_vox, window)
    grid = np.zeros(shape + (window,))
    grid[mask] = win
    batch_funcs = {
        "ALFF+fALFF": lambda: _alff_falff(win, TR, (0.01, 0.08)),
        "ReHo27": lambda: reho(grid, mask, 27),
        "seed-FC": lambda: seed_fc(win[states["seed-FC"].seed_indices_].mean(axis=0), win),
        "PSC": lambda: psc(win, slice(0, window - 1)),
    }
    batch = {name: time_calls(func, n_batch) for name, func in batch_funcs.items()}
    batch["all"] = sum(batch[name] for name in batch_funcs)
    rows = []
    for name in inc:
        inc_med, inc_p95 = summary_ms(inc[name])
        bat_med, bat_p95 = summary_ms(batch[name])
        rows.append(dict(shape="x".join(map(str, shape)), voxels=n_vox, window=window, metric=name,
                         inc_med=inc_med, inc_p95=inc_p95, batch_med=bat_med,
                         batch_p95=bat_p95, ratio=bat_med / inc_med))
    return rows


def bench_memory(shape, window, n_updates, rng) -> dict:
    """Resident memory after the first window and after ``n_updates`` more updates."""
    mask = brain_mask(shape)
    n_vox = int(mask.sum())
    states = _states(window, mask)
    vol = np.empty(n_vox)
    for t in range(window + n_updates):
        vol[:] = 1000 + rng.standard_normal(n_vox)
        for state in states.values():
            state.partial_fit(vol)
        if t == window - 1:
            before = rss_mib()
    return dict(shape="x".join(map(str, shape)), window=window, updates=n_updates,
                rss_before=before, rss_after=rss_mib(), peak=peak_rss_mib())


def format_rows(rows: list[dict]) -> str:
    """Markdown table of the timing rows."""
    lines = ["| grid | in-mask voxels | window | metric | incremental median / p95 (ms) | "
             "batch median / p95 (ms) | batch / incremental |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['voxels']} | {r['window']} | {r['metric']} | "
                     f"{r['inc_med']:.2f} / {r['inc_p95']:.2f} | "
                     f"{r['batch_med']:.1f} / {r['batch_p95']:.1f} | {r['ratio']:.0f}x |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench metrics``."""
    parser.add_argument("--shapes", nargs="+", default=["64x64x36", "104x104x72"],
                        help="grid sizes, e.g. 64x64x36")
    parser.add_argument("--windows", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--updates", type=int, default=100, help="timed updates per config")
    parser.add_argument("--batch-repeats", type=int, default=5)
    parser.add_argument("--memory-updates", type=int, default=2000,
                        help="updates of the memory run on the first shape (0 to skip)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print markdown tables."""
    rng = np.random.default_rng(args.seed)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    print(f"# rtfb.bench metrics  (python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}, TR {TR} s)\n")
    # compile the kernels outside the timings
    bench_config((8, 8, 8), 8, 2, 1, rng)
    if args.memory_updates:
        mem = bench_memory(shapes[0], args.windows[0], args.memory_updates, rng)
        print(f"## memory: {mem['shape']}, window {mem['window']}, all states\n")
        print(f"RSS after the first window: {mem['rss_before']:.0f} MiB; after "
              f"{mem['updates']} more updates: {mem['rss_after']:.0f} MiB "
              f"(process peak {mem['peak']:.0f} MiB)\n")
    rows = []
    for shape in shapes:
        for window in args.windows:
            print(f"timing {'x'.join(map(str, shape))}, window {window} ...", flush=True)
            rows += bench_config(shape, window, args.updates, args.batch_repeats, rng)
    print()
    print(format_rows(rows))
    return 0
