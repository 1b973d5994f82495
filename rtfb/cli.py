"""The ``rtfb`` command.

Subcommands are registered in :func:`build_parser`, one ``_add_<name>`` function each,
which sets ``func`` (called with the parsed arguments, returns the exit status) and
``command_parser`` (the subparser, for usage errors). Only ``demo`` exists so far;
``run``, ``replay``, ``report``, ``analyze`` and ``display`` will follow the same pattern.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the ``rtfb`` argument parser with its subcommands.

    Returns
    -------
    argparse.ArgumentParser
        Parser whose parsed namespace has ``func`` set for a subcommand.
    """
    parser = argparse.ArgumentParser(
        prog="rtfb",
        description="Real-time fMRI neurofeedback with an offline resting-state analysis mode.",
    )
    parser.add_argument("--version", action="version", version=f"rtfb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rtfb`` command line.

    Parameters
    ----------
    argv : sequence of str | None
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0 on success).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    return int(args.func(args))


# ---------------------------------------------------------------------------- demo


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="stream a synthetic subject through the incremental metrics",
        description=(
            "Generate a synthetic subject with planted effects (simulator.make_subject), feed "
            "its volumes one by one to the sliding ALFF/fALFF, ReHo, seed-FC and PSC states, "
            "and compare the last window's maps with the planted ground truth."
        ),
    )
    p.add_argument("--shape", type=int, nargs=3, default=(40, 40, 24), metavar=("X", "Y", "Z"),
                   help="grid size (default: 40 40 24)")
    p.add_argument("--volumes", type=int, default=240, help="number of volumes (default: 240)")
    p.add_argument("--window", type=int, default=64,
                   help="sliding window in volumes (default: 64)")
    p.add_argument("--tr", type=float, default=2.0,
                   help="repetition time in seconds (default: 2.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_run_demo, command_parser=p)


def _run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulator import make_subject

    from .metrics import SlidingALFF, SlidingPSC, SlidingReHo, SlidingSeedFC, band_bins

    parser = args.command_parser
    if args.window < 3:
        parser.error(f"--window must be >= 3, got {args.window}.")
    if args.volumes < args.window:
        parser.error(f"--volumes ({args.volumes}) must be >= --window ({args.window}).")
    console = Console()
    try:
        band_bins(args.window, args.tr)  # a window too short for the ALFF band fails here
        subject = make_subject(shape=args.shape, n_volumes=args.volumes, tr=args.tr,
                               seed=args.seed)
        mask = subject.mask
        roi = {name: r[mask] for name, r in subject.rois.items()}  # in-mask selections
        states = {
            "ALFF/fALFF": SlidingALFF(args.window, args.tr),
            "ReHo": SlidingReHo(args.window, mask, neighborhood=27),
            "seed FC": SlidingSeedFC(args.window, seed=roi["seed"]),
            "PSC": SlidingPSC(args.window),
        }
    except ValueError as err:
        parser.error(str(err))
    console.print(
        f"[bold]rtfb demo[/bold]: synthetic subject {'x'.join(map(str, args.shape))} "
        f"({int(mask.sum())} brain voxels), {args.volumes} volumes, TR {args.tr:g} s, "
        f"window {args.window}, seed {args.seed}"
    )

    times = {name: np.empty(args.volumes) for name in states}
    data = subject.data
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("streaming", total=args.volumes, status="filling window")
        for t in range(args.volumes):
            x = data[..., t][mask].astype(np.float64)
            for name, state in states.items():
                start = time.perf_counter()
                state.partial_fit(x)
                times[name][t] = time.perf_counter() - start
            status = None
            if states["ALFF/fALFF"].is_full_:
                alff_ins = states["ALFF/fALFF"].alff_[roi["left_insula"]].mean()
                z_target = states["seed FC"].z_[roi["target"]].mean()
                status = f"ALFF L insula {alff_ins:6.2f}   FC z target {z_target:5.2f}"
            progress.update(task, advance=1, **({"status": status} if status else {}))

    console.print(_timing_table(times))
    console.print(_results_table(states, roi, subject.truth))
    return 0


def _timing_table(times: dict[str, np.ndarray]):
    from rich.table import Table

    n = next(iter(times.values())).size
    first_excluded = n > 1
    table = Table(title="Per-update time (ms)", caption=(
        "first update excluded" if first_excluded else None))
    table.add_column("state")
    table.add_column("median", justify="right")
    table.add_column("p95", justify="right")
    rows = {name: t[1:] if first_excluded else t for name, t in times.items()}
    rows["all together"] = sum(rows.values())
    for name, t in rows.items():
        ms = 1e3 * t
        table.add_row(name, f"{np.median(ms):.2f}", f"{np.percentile(ms, 95):.2f}",
                      style="bold" if name == "all together" else None)
    return table


def _results_table(states: dict, roi: dict[str, np.ndarray], truth: dict):
    from rich.table import Table

    def inside_outside(values, name, exclude=()):
        rest = ~roi[name]
        for other in exclude:
            rest &= ~roi[other]
        return float(np.mean(values[roi[name]])), float(np.mean(values[rest]))

    alff, fc, reho = truth["alff"], truth["fc"], truth["reho"]
    sinus = f"{alff['frequency_hz']:g} Hz sine, amp. {alff['amplitude']:g}"
    r_vox = fc["expected_voxel_correlation"]
    rows = [
        ("ALFF", "left insula", *inside_outside(states["ALFF/fALFF"].alff_, "left_insula"),
         sinus),
        ("fALFF", "left insula", *inside_outside(states["ALFF/fALFF"].falff_, "left_insula"),
         sinus),
        ("ReHo (W)", "homogeneous", *inside_outside(states["ReHo"].reho_, "homogeneous"),
         f"smooth noise, nb. r {reho['neighbour_correlation']:.2f}"),
        ("seed FC (z)", "target",
         *inside_outside(states["seed FC"].z_, "target", exclude=("seed",)),
         f"r {fc['correlation']:g}; voxel z ~ {np.arctanh(r_vox):.2f}"),
    ]
    table = Table(title="Last window vs planted ground truth", caption=(
        "means over the region and over the rest of the brain (FC: minus the seed)"))
    table.add_column("metric")
    table.add_column("region")
    table.add_column("in region", justify="right")
    table.add_column("elsewhere", justify="right")
    table.add_column("planted", no_wrap=True)
    for metric, region, inside, outside, planted in rows:
        table.add_row(metric, region, f"{inside:.3f}", f"{outside:.3f}", planted)
    return table
