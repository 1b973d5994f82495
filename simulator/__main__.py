"""Command line of the simulator.

``python -m simulator subject --out DIR``: one synthetic subject with ground truth.
``python -m simulator cohort --patients N --controls M --out BIDS_DIR``: a BIDS cohort with a
planted group effect. ``python -m simulator stream SOURCE --to DIR|tcp://HOST:PORT``: play a
run in real time, as a scanner would, with optional faults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .synthetic import make_subject, write_subject

_FAULT_HELP = ("rate in [0, 1) (seeded by --fault-seed) or 1-based volume numbers, "
               "e.g. 5,17")


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
    subject.add_argument("--participant-model", default=None,
                         choices=("responder", "non-responder", "learner"),
                         help="virtual participant following --protocol's blocks (its "
                              "truth goes to truth.json under 'participant')")
    subject.add_argument("--participant-run", type=int, default=1,
                         help="run number of the participant (a learner improves with it)")
    subject.add_argument("--protocol", default=None,
                         help="protocol TOML whose TR, volumes and blocks the participant "
                              "follows (required with --participant-model)")

    cohort = sub.add_parser(
        "cohort", help="write a synthetic BIDS cohort (patients/controls, planted effect)",
        description="Write a BIDS dataset of resting-state runs with a planted left-insula "
                    "ALFF effect growing with the VAS pain score (none with --null); the "
                    "ground truth goes to BIDS_DIR/derivatives/truth/.",
    )
    cohort.add_argument("--patients", type=int, default=10,
                        help="number of patients (default: 10)")
    cohort.add_argument("--controls", type=int, default=10,
                        help="number of controls (default: 10)")
    cohort.add_argument("--out", required=True, help="BIDS root folder (created if needed)")
    cohort.add_argument("--null", action="store_true",
                        help="no effect: same amplitude distribution in both groups")
    cohort.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    cohort.add_argument("--shape", type=int, nargs=3, default=(32, 32, 20),
                        metavar=("X", "Y", "Z"), help="grid size (default: 32 32 20)")
    cohort.add_argument("--volumes", type=int, default=120,
                        help="volumes per run (default: 120)")
    cohort.add_argument("--tr", type=float, default=2.0,
                        help="repetition time in seconds (default: 2.0)")
    cohort.add_argument("--slope", type=float, default=3.0,
                        help="amplitude increase per VAS point (default: 3.0)")
    cohort.add_argument("--sessions", nargs="+", metavar="LABEL",
                        help="one run per session, e.g. pre post (BIDS ses- folders)")
    cohort.add_argument("--treatment-effect", type=float, default=0.0,
                        help="change of the patients' left-insula amplitude in the last "
                             "session (default 0)")
    cohort.add_argument("--treatment-vas", type=float, default=0.0,
                        help="change of the patients' VAS in the last session (default 0)")

    st = sub.add_parser(
        "stream", help="play a run in real time to a folder or a TCP receiver",
        description="Play SOURCE (4D NIfTI, write_subject folder or DICOM series folder) "
                    "volume by volume on a drift-corrected TR clock, optionally with "
                    "faults; writes a JSON manifest of what was done. Ctrl-C stops.",
    )
    st.add_argument("source", help="4D NIfTI file, synthetic subject folder or DICOM folder")
    st.add_argument("--to", required=True, help="output folder or tcp://HOST:PORT")
    st.add_argument("--dicom", choices=("enhanced", "classic"), default=None,
                    help="write a NIfTI source as Siemens-XA-like enhanced DICOM (one file "
                         "per volume) or classic slices (simulator.dicom_writers)")
    st.add_argument("--tr", type=float, default=None,
                    help="repetition time in seconds (default: from the source)")
    st.add_argument("--speed", type=float, default=1.0,
                    help="time compression factor (default: 1, real time)")
    st.add_argument("--volumes", type=int, default=None,
                    help="number of volumes, looping the source (default: its length)")
    st.add_argument("--start-delay", type=float, default=0.0,
                    help="real seconds before the first volume (default: 0)")
    for name in ("drop", "duplicate", "truncate", "delay", "shuffle", "corrupt"):
        st.add_argument(f"--{name}", default=None, metavar="RATE|LIST", help=_FAULT_HELP)
    st.add_argument("--fault-seed", type=int, default=0,
                    help="seed of the fault draws (default: 0)")
    st.add_argument("--delay-seconds", type=float, default=None,
                    help="lateness of delayed volumes, scanner seconds (default: 2 TR)")
    st.add_argument("--truncate-fraction", type=float, default=0.5,
                    help="fraction of a truncated file that is written (default: 0.5)")
    st.add_argument("--corrupt-mode", choices=("random", "header"), default="random",
                    help="random bytes of the right length, or a damaged header")
    st.add_argument("--duplicate-mode", choices=("same", "copy"), default="same",
                    help="rewrite the same file later, or write a <stem>_copy file")
    st.add_argument("--chunks", type=int, default=4,
                    help="pieces each file is written in (default: 4)")
    st.add_argument("--chunk-pause", type=float, default=None,
                    help="real seconds between pieces (default: from the interval)")
    st.add_argument("--manifest", default=None,
                    help="manifest path (default: <to>/../stream_manifest.json)")
    st.add_argument("--connect-timeout", type=float, default=10.0,
                    help="seconds to wait for a TCP receiver (default: 10)")
    st.add_argument("--key", metavar="FILE", default=None,
                    help="TCP: the session's key file (rtfb run --tcp PORT --key FILE); "
                         "frames are signed with it")
    st.add_argument("--quiet", action="store_true", help="no line per volume")
    return parser


def _run_cohort(parser, args) -> int:
    from .cohort import write_cohort

    try:
        truth = write_cohort(args.out, args.patients, args.controls, seed=args.seed,
                             null=args.null, shape=args.shape, n_volumes=args.volumes,
                             tr=args.tr, slope=args.slope, sessions=args.sessions,
                             treatment_effect=args.treatment_effect,
                             treatment_vas=args.treatment_vas)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    effect = "no effect (null)" if args.null else f"ALFF slope {args.slope:g} per VAS point"
    print(f"BIDS cohort of {args.patients} patients and {args.controls} controls "
          f"({' x '.join(str(s) for s in args.shape)} x {args.volumes}, TR {args.tr:g} s, "
          f"{effect}, seed {args.seed}) written to {args.out}")
    for pid, subj in truth["subjects"].items():
        print(f"  {pid}  {subj['group']:7s}  VAS {subj['vas']:4.1f}  "
              f"planted amplitude {subj['alff_amplitude']:6.2f}")
    print(f"  ground truth: {args.out}/derivatives/truth/truth.json")
    return 0


def _run_stream(parser, args) -> int:
    from .faults import parse_fault_value
    from .stream import stream

    faults = {}
    try:
        for name in ("drop", "duplicate", "truncate", "delay", "shuffle", "corrupt"):
            value = getattr(args, name)
            if value is not None:
                faults[name] = parse_fault_value(value)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    try:
        source = args.source
        if args.dicom is not None:
            from .dicom_writers import ClassicDicomSource, EnhancedDicomSource

            source = {"enhanced": EnhancedDicomSource,
                      "classic": ClassicDicomSource}[args.dicom](args.source)
        doc = stream(source, args.to, args.tr, speed=args.speed, volumes=args.volumes,
                     faults=faults, fault_seed=args.fault_seed,
                     delay_seconds=args.delay_seconds,
                     truncate_fraction=args.truncate_fraction,
                     corrupt_mode=args.corrupt_mode, duplicate_mode=args.duplicate_mode,
                     chunks=args.chunks, chunk_pause=args.chunk_pause,
                     start_delay=args.start_delay, manifest=args.manifest,
                     connect_timeout=args.connect_timeout, key=args.key, log=log)
    except KeyboardInterrupt:
        print("interrupted; the manifest says what was written", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        parser.exit(2, f"error: {err}\n")
    timing = doc["timing"]
    actions: dict[str, int] = {}
    for rec in doc["volumes"]:
        actions[rec["action"]] = actions.get(rec["action"], 0) + 1
    summary = ", ".join(f"{n} {a}" for a, n in actions.items())
    print(f"{doc['status']}: {doc['n_volumes']} volumes to {doc['to']} ({summary}); "
          f"lateness median {timing['median']} ms, max {timing['max']} ms; "
          f"manifest {doc['manifest']}")
    if doc["output"] == "tcp":
        acks = doc["acknowledged"]
        accepted = acks.get("accepted", 0) + acks.get("late", 0)
        others = ", ".join(f"{n} {a}" for a, n in acks.items() if a not in ("accepted", "late"))
        print(f"receiver acknowledged {accepted} of {doc['n_volumes']} volumes as stored"
              + (f" ({others})" if others else ""))
    return 0 if doc["status"] == "completed" else 1


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
    if args.command == "cohort":
        return _run_cohort(parser, args)
    if args.command == "stream":
        return _run_stream(parser, args)
    if args.command != "subject":
        parser.print_help()
        return 1
    try:
        if args.participant_model is not None:
            from .participant import ParticipantModel, make_participant

            if args.protocol is None:
                raise ValueError("--participant-model needs --protocol FILE (its blocks "
                                 "drive the participant).")
            try:
                model = ParticipantModel(kind=args.participant_model, run=args.participant_run)
                subject = make_participant(args.protocol, model, shape=args.shape,
                                           seed=args.seed, motion=args.motion)
            except (OSError, KeyError, TypeError) as err:
                raise ValueError(f"--protocol {args.protocol}: cannot read its session/"
                                 f"blocks ({err!r}).") from err
        else:
            subject = make_subject(shape=args.shape, n_volumes=args.volumes, tr=args.tr,
                                   seed=args.seed, motion=args.motion)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    written = write_subject(subject, args.out)
    shape = " x ".join(str(s) for s in subject.data.shape)
    print(f"Synthetic subject ({shape}, TR {subject.tr:g} s, seed {args.seed}"
          f"{', with motion' if args.motion else ''}"
          f"{', participant ' + args.participant_model if args.participant_model else ''}"
          f") written to {args.out}:")
    for path in written.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
