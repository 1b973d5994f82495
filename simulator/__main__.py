"""Command line of the simulator: ``python -m simulator subject --out DIR``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .synthetic import make_subject, write_subject


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator", description="Scanner simulator for rtfb."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subject = sub.add_parser(
        "subject", help="write a synthetic subject (NIfTI files and truth.json)",
        description="Write bold.nii.gz, mask.nii.gz, roi-<name>.nii.gz and truth.json.",
    )
    subject.add_argument("--out", required=True, help="output folder (created if needed)")
    subject.add_argument("--shape", type=int, nargs=3, default=(64, 64, 36),
                         metavar=("X", "Y", "Z"), help="grid size (default: 64 64 36)")
    subject.add_argument("--volumes", type=int, default=200,
                         help="number of volumes (default: 200)")
    subject.add_argument("--tr", type=float, default=2.0,
                         help="repetition time in seconds (default: 2.0)")
    subject.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    subject.add_argument("--motion", action="store_true",
                         help="apply a known rigid head-motion trace")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator command line.

    Parameters
    ----------
    argv : sequence of str | None
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command != "subject":
        parser.print_help()
        return 1
    try:
        subject = make_subject(shape=args.shape, n_volumes=args.volumes, tr=args.tr,
                               seed=args.seed, motion=args.motion)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    written = write_subject(subject, args.out)
    shape = " x ".join(str(s) for s in subject.data.shape)
    print(f"Synthetic subject ({shape}, TR {subject.tr:g} s, seed {args.seed}"
          f"{', with motion' if args.motion else ''}) written to {args.out}:")
    for path in written.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
