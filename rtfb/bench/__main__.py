"""``python -m rtfb.bench metrics [options]``."""

from __future__ import annotations

import argparse
import sys

from . import analyze, dashboard, fwe, ingest, metrics, normalise, preprocess, session

BENCHMARKS = {"metrics": metrics, "ingest": ingest, "preprocess": preprocess,
              "session": session, "fwe": fwe, "analyze": analyze, "dashboard": dashboard,
              "normalise": normalise}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark named on the command line."""
    parser = argparse.ArgumentParser(prog="python -m rtfb.bench", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True)
    for name, module in BENCHMARKS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return BENCHMARKS[args.name].run(args)


if __name__ == "__main__":
    sys.exit(main())
