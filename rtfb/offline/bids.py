"""Find the resting-state runs and the participants of a BIDS dataset.

Only what the offline analysis needs: ``sub-*/func/*_bold.nii.gz`` and
``sub-*/ses-*/func/*_bold.nii.gz`` (or ``.nii``) with a JSON sidecar giving
``RepetitionTime`` (the sidecar next to the run; BIDS inheritance from a subject-, session- or
top-level ``*_bold.json`` is honoured for the task), and ``participants.tsv`` read with
pandas. Every error names the file at fault.

Cohort checks (:func:`load_dataset`): runs whose number of volumes or TR differs from the
cohort's (the most common pair) are excluded with a reason (``mismatched_runs="exclude"``,
default) or refused (``"refuse"``); clinical scores are checked by
:func:`check_participant_values` (numbers, VAS on its 0-10 or 0-100 scale), naming the file
and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["BIDSError", "Dataset", "Run", "check_participant_values", "find_runs",
           "load_dataset", "read_participants"]

_SUB_RE = re.compile(r"^sub-[A-Za-z0-9]+$")
_SES_RE = re.compile(r"^ses-[A-Za-z0-9]+$")
#: Columns of ``participants.tsv`` that must be numbers (``n/a`` allowed) when present.
NUMERIC_COLUMNS = ("age", "vas")
#: Allowed VAS scales (0 to this maximum); see :func:`check_participant_values`.
VAS_SCALES = (10.0, 100.0)
_TR_TOL = 1e-3  # seconds
_BOLD_SUFFIXES = ("_bold.nii.gz", "_bold.nii")


class BIDSError(ValueError):
    """A BIDS dataset that the offline analysis cannot use (the message names the file)."""


@dataclass(frozen=True)
class Run:
    """One functional run.

    Attributes
    ----------
    subject : str
        ``sub-XX``.
    path : pathlib.Path
        The BOLD NIfTI file.
    sidecar : pathlib.Path | None
        The JSON sidecar the TR came from.
    tr : float
        Repetition time in seconds.
    prefix : str
        File name without ``_bold.nii[.gz]`` (e.g. ``sub-01_task-rest``), the stem of every
        derivative of the run.
    session : str | None
        ``ses-YY`` for a run under ``sub-XX/ses-YY/func``, else None.
    n_volumes : int | None
        Number of volumes (filled by :func:`load_dataset`).
    """

    subject: str
    path: Path
    sidecar: Path | None
    tr: float
    prefix: str
    session: str | None = None
    n_volumes: int | None = None


@dataclass(frozen=True)
class Dataset:
    """Runs, participants and the shared grid of a BIDS dataset.

    ``runs`` are the runs kept for the analysis; ``excluded`` maps the path of each excluded
    run to the reason; ``participants`` lists only subjects with a kept run (``dropped``:
    those left without one); ``warnings`` says all of it in sentences.
    """

    root: Path
    runs: tuple[Run, ...]
    participants: pd.DataFrame | None
    participants_path: Path | None
    shape: tuple[int, ...]
    affine: np.ndarray = field(repr=False)
    excluded: dict = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def subjects(self) -> list[str]:
        """Subjects with data, sorted."""
        return sorted({run.subject for run in self.runs})

    @property
    def sessions(self) -> list[str]:
        """Session labels (``ses-YY``) with data, sorted (empty without ``ses-`` folders)."""
        return sorted({run.session for run in self.runs if run.session is not None})


def _prefix(name: str) -> str | None:
    for suffix in _BOLD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _entities(prefix: str) -> dict[str, str]:
    out = {}
    for part in prefix.split("_"):
        key, sep, value = part.partition("-")
        if sep:
            out[key] = value
    return out


def _sidecar_candidates(root: Path, run_path: Path, prefix: str) -> list[Path]:
    """Sidecars from the most to the least specific (BIDS inheritance, simplified)."""
    out = [run_path.with_name(prefix + "_bold.json")]
    entities = _entities(prefix)
    task = entities.get("task")
    if task is not None:
        subject = prefix.split("_")[0]
        if "ses" in entities:
            ses = f"ses-{entities['ses']}"
            out.append(root / subject / ses / f"{subject}_{ses}_task-{task}_bold.json")
        out.append(root / subject / f"{subject}_task-{task}_bold.json")
        out.append(root / f"task-{task}_bold.json")
    return out


def _read_tr(root: Path, run_path: Path, prefix: str) -> tuple[float, Path]:
    tried = []
    for candidate in _sidecar_candidates(root, run_path, prefix):
        if not candidate.is_file():
            continue
        tried.append(candidate)
        try:
            meta = json.loads(candidate.read_text())
        except (OSError, ValueError) as err:
            raise BIDSError(f"{candidate}: unreadable JSON sidecar ({err}).") from None
        if not isinstance(meta, dict) or "RepetitionTime" not in meta:
            continue
        tr = meta["RepetitionTime"]
        try:
            tr = float(tr)
        except (TypeError, ValueError):
            raise BIDSError(f"{candidate}: RepetitionTime must be a number of seconds, got "
                            f"{tr!r}.") from None
        if not np.isfinite(tr) or tr <= 0:
            raise BIDSError(f"{candidate}: RepetitionTime must be > 0 seconds, got {tr!r}.")
        return tr, candidate
    if tried:
        raise BIDSError(f"{tried[0]}: no RepetitionTime in the JSON sidecar of {run_path}.")
    raise BIDSError(f"{run_path}: no JSON sidecar with RepetitionTime (expected "
                    f"{_sidecar_candidates(root, run_path, prefix)[0]}).")


def _func_dirs(sub_dir: Path):
    """``(session, func folder)`` of one subject: ``sub-XX/func`` and ``sub-XX/ses-*/func``."""
    yield None, sub_dir / "func"
    for ses_dir in sorted(sub_dir.glob("ses-*")):
        if ses_dir.is_dir() and _SES_RE.match(ses_dir.name):
            yield ses_dir.name, ses_dir / "func"


def find_runs(bids_dir, input: str = "bids") -> list[Run]:
    """All ``sub-*/[ses-*/]func/*_bold.nii[.gz]`` runs of a BIDS dataset, sorted by path.

    Parameters
    ----------
    bids_dir : str | path-like
        BIDS root.
    input : {"bids", "fmriprep"}
        ``"fmriprep"``: only fMRIPrep's ``*_space-MNI152NLin2009cAsym*_desc-preproc_bold``
        runs of a derivatives folder (:mod:`rtfb.offline.fmriprep`).

    Returns
    -------
    list of Run

    Raises
    ------
    BIDSError
        If the folder does not exist, holds no run, or a run has no usable TR.
    """
    from .._utils.checks import _check_option

    _check_option("input", input, ("bids", "fmriprep"))
    root = Path(bids_dir)
    if not root.is_dir():
        raise BIDSError(f"{root}: BIDS directory not found.")
    if input == "fmriprep":
        from .fmriprep import RUN_GLOB as pattern
    else:
        pattern = "*_bold.nii*"
    runs = []
    for sub_dir in sorted(root.glob("sub-*")):
        if not (sub_dir.is_dir() and _SUB_RE.match(sub_dir.name)):
            continue
        for session, func in _func_dirs(sub_dir):
            for path in sorted(func.glob(pattern)):
                prefix = _prefix(path.name)
                if prefix is None:
                    continue
                start = sub_dir.name + "_" + (f"{session}_" if session else "")
                if not prefix.startswith(start):
                    raise BIDSError(f"{path}: file name does not start with {start}.")
                tr, sidecar = _read_tr(root, path, prefix)
                runs.append(Run(sub_dir.name, path, sidecar, tr, prefix, session))
    if not runs:
        raise BIDSError(f"{root}: no functional run (sub-*/[ses-*/]func/{pattern}) found.")
    return runs


def read_participants(path) -> pd.DataFrame:
    """Read ``participants.tsv``, indexed by ``participant_id``.

    Parameters
    ----------
    path : str | path-like
        Tab-separated file with at least ``participant_id`` and ``group`` columns.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``participant_id`` (``sub-XX``), ``n/a`` read as missing.

    Raises
    ------
    BIDSError
        Missing file, missing ``participant_id`` or ``group`` column, duplicated or badly
        formed participant ids, missing groups.
    """
    path = Path(path)
    if not path.is_file():
        raise BIDSError(f"{path}: participants file not found.")
    try:
        table = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "group": str},
                            na_values=["n/a"], keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise BIDSError(f"{path}: unreadable participants file ({err}).") from None
    for column in ("participant_id", "group"):
        if column not in table.columns:
            raise BIDSError(f"{path}: no '{column}' column (columns: "
                            f"{', '.join(map(str, table.columns))}).")
    ids = table["participant_id"]
    bad = [str(v) for v in ids if not (isinstance(v, str) and _SUB_RE.match(v))]
    if bad:
        raise BIDSError(f"{path}: participant_id must look like sub-<label>, got {bad[:5]}.")
    dup = sorted(ids[ids.duplicated()].unique())
    if dup:
        raise BIDSError(f"{path}: duplicated participant_id {dup}.")
    missing = ids[table["group"].isna()].tolist()
    if missing:
        raise BIDSError(f"{path}: no group for {missing}.")
    check_participant_values(table, path, _column_specs(path.with_suffix(".json")))
    return table.set_index("participant_id")


def _column_specs(path: Path) -> dict:
    """Column descriptions of ``participants.json`` (``{}`` when absent)."""
    if not path.is_file():
        return {}
    try:
        specs = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BIDSError(f"{path}: unreadable JSON ({err}).") from None
    return specs if isinstance(specs, dict) else {}


def _bound(specs: dict, column: str, key: str, path: Path):
    spec = specs.get(column)
    if not isinstance(spec, dict) or key not in spec:
        return None
    try:
        value = float(spec[key])
    except (TypeError, ValueError):
        raise BIDSError(f"{path.with_suffix('.json')}: {column}.{key} must be a number, got "
                        f"{spec[key]!r}.") from None
    return value


def check_participant_values(table: pd.DataFrame, path, specs: dict | None = None,
                             columns=NUMERIC_COLUMNS) -> dict:
    """Refuse non-numeric or out-of-range clinical values, naming the file and line.

    Parameters
    ----------
    table : pandas.DataFrame
        The participants table as read (one row per file line after the header, with a
        ``participant_id`` column).
    path : str | path-like
        Its file (named in the errors).
    specs : dict | None
        Column descriptions (``participants.json``); a ``Minimum`` / ``Maximum`` given for a
        column is enforced.
    columns : sequence of str
        Columns that must hold numbers (or ``n/a``) when present: ``age`` and ``vas`` by
        default (matched case-insensitively).

    Returns
    -------
    dict
        ``{column: (minimum, maximum)}`` applied (the VAS scale found).

    Raises
    ------
    BIDSError
        A value is not a number (e.g. ``abc``), is not finite, or is out of range: ``age``
        must be > 0, ``vas`` within its scale. The VAS scale is ``participants.json``'s
        ``vas.Maximum`` when given (10 or 100), else 0-10 when every value is <= 10 and
        0-100 otherwise; a negative VAS, or one above 100, is always refused.
    """
    path = Path(path)
    specs = specs or {}
    ids = table["participant_id"] if "participant_id" in table.columns else table.index
    lower = {str(c).lower(): c for c in table.columns}
    ranges = {}
    for name in columns:
        column = lower.get(name.lower())
        if column is None:
            continue
        values = []
        for row, (sid, raw) in enumerate(zip(ids, table[column], strict=True)):
            where = f"{path}, line {row + 2} ({sid})"
            if raw is None or (isinstance(raw, float) and np.isnan(raw)):
                values.append(np.nan)
                continue
            try:
                value = float(str(raw).strip())
            except ValueError:
                raise BIDSError(f"{where}: {column} must be a number or n/a, got "
                                f"'{raw}'.") from None
            if not np.isfinite(value):
                raise BIDSError(f"{where}: {column} must be a finite number, got '{raw}'.")
            values.append(value)
        values = np.asarray(values, float)
        lo, hi = _bound(specs, column, "Minimum", path), _bound(specs, column, "Maximum", path)
        if name == "vas":
            if hi is not None and hi not in VAS_SCALES:
                raise BIDSError(f"{path.with_suffix('.json')}: {column}.Maximum must be 10 or "
                                f"100 (VAS scale), got {hi:g}.")
            finite = values[np.isfinite(values)]
            if hi is None:
                hi = VAS_SCALES[0] if finite.size == 0 or finite.max() <= VAS_SCALES[0] \
                    else VAS_SCALES[1]
            lo = 0.0 if lo is None else lo
        elif name == "age" and lo is None:
            lo = np.nextafter(0.0, 1.0)
        for row, (sid, value) in enumerate(zip(ids, values, strict=True)):
            if not np.isfinite(value):
                continue
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                if name == "vas":
                    rule = f"on the VAS scale 0-{hi:g} (0-10 or 0-100, see docs/offline.md)"
                elif name == "age" and lo is not None and 0 < lo < 1e-300:
                    rule = "> 0 years"
                else:
                    rule = (f"in [{'-inf' if lo is None else f'{lo:g}'}, "
                            f"{'inf' if hi is None else f'{hi:g}'}]")
                raise BIDSError(f"{path}, line {row + 2} ({sid}): {column} must be {rule}, "
                                f"got '{table[column].iloc[row]}'.")
        ranges[column] = (lo, hi)
    return ranges


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray, int]:
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - any nibabel failure
        raise BIDSError(f"{path}: unreadable NIfTI ({err}).") from None
    shape = tuple(int(n) for n in img.shape)
    if len(shape) != 4:
        raise BIDSError(f"{path}: a BOLD run must be 4D, got shape {shape}.")
    return shape[:3], np.asarray(img.affine, dtype=np.float64), shape[3]


def _describe_grid(shape, affine) -> str:
    """``16x16x10 of 3x3x3 mm RAS`` (orientation from nibabel; ``~`` when oblique)."""
    import nibabel as nib

    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    axes = "".join(nib.aff2axcodes(affine))
    cosines = np.abs(np.asarray(affine)[:3, :3]) / zooms
    oblique = "" if np.allclose(cosines.max(axis=0), 1.0, atol=1e-3) else " oblique"
    origin = ",".join(f"{v:g}" for v in np.round(np.asarray(affine)[:3, 3], 1))
    return (f"{'x'.join(str(n) for n in shape)} of {'x'.join(f'{z:g}' for z in zooms)} mm "
            f"{axes}{oblique} at ({origin})")


def _check_run_lengths(runs: list[Run], policy: str) -> tuple[list[Run], dict]:
    """Keep the runs of the cohort's most common (volumes, TR); exclude or refuse others."""
    from collections import Counter

    keys = Counter((run.n_volumes, round(run.tr / _TR_TOL)) for run in runs)
    # the most common pair; ties: the longer run, then the shorter TR
    (n_ref, tr_key), count = max(keys.items(), key=lambda kv: (kv[1], kv[0][0], -kv[0][1]))
    tr_ref = tr_key * _TR_TOL
    kept, excluded = [], {}
    for run in runs:
        reasons = []
        if run.n_volumes != n_ref:
            reasons.append(f"{run.n_volumes} volumes instead of {n_ref}")
        if abs(run.tr - tr_ref) > _TR_TOL / 2:
            reasons.append(f"TR {run.tr:g} s instead of {tr_ref:g} s")
        if reasons:
            excluded[run.path] = (f"{' and '.join(reasons)} (the cohort's runs: {count} of "
                                  f"{len(runs)} have {n_ref} volumes at TR {tr_ref:g} s)")
        else:
            kept.append(run)
    if excluded and policy == "refuse":
        lines = "\n".join(f"  {p}: {why}" for p, why in excluded.items())
        raise BIDSError(f"{len(excluded)} run(s) differ in length or TR from the cohort "
                        f"(refused; --mismatched-runs exclude leaves them out):\n{lines}")
    return kept, excluded


def load_dataset(bids_dir, participants=None, *, require_participants: bool = True,
                 mismatched_runs: str = "exclude", same_grid: bool = True,
                 input: str = "bids") -> Dataset:
    """Runs and participants of a BIDS dataset, checked for the offline analysis.

    Parameters
    ----------
    bids_dir : str | path-like
        BIDS root.
    participants : str | path-like | None
        Participants table; default ``BIDS_DIR/participants.tsv``.
    require_participants : bool
        Raise when there is no participants file (else ``participants`` is None).
    mismatched_runs : {"exclude", "refuse"}
        What to do with runs whose number of volumes or TR differs from the cohort's most
        common pair: leave them out (listed in ``Dataset.excluded`` and ``warnings``; a
        subject left without a run is dropped from the participants) or raise.
    same_grid : bool
        Require every run on one grid (shape and affine); otherwise one error lists every
        grid and its runs. False when the runs are brought to a common space (spatial
        normalisation, :mod:`rtfb.offline.normalise`); ``shape``/``affine`` are then the
        first run's.
    input : {"bids", "fmriprep"}
        Raw BIDS runs or fMRIPrep derivatives (see :func:`find_runs`).

    Returns
    -------
    Dataset

    Raises
    ------
    BIDSError
        See :func:`find_runs` and :func:`read_participants`; also subjects on different
        grids (with ``same_grid``), mismatched runs (with ``"refuse"``), subjects listed in
        the participants file without data, and subjects with data missing from the
        participants file.
    """
    from dataclasses import replace

    from .._utils.checks import _check_option

    _check_option("mismatched_runs", mismatched_runs, ("exclude", "refuse"))
    root = Path(bids_dir)
    found = find_runs(root, input)
    runs = []
    grids: dict = {}  # grid description -> runs on it
    shape = affine = None
    for run in found:
        run_shape, run_affine, n_volumes = _grid(run.path)
        runs.append(replace(run, n_volumes=n_volumes))
        if shape is None:
            shape, affine = run_shape, run_affine
        same = run_shape == shape and np.allclose(run_affine, affine, atol=1e-4)
        key = _describe_grid(shape, affine) if same else _describe_grid(run_shape, run_affine)
        grids.setdefault(key, []).append(run)
    if same_grid and len(grids) > 1:
        parts = [f"{key}: {', '.join(r.prefix for r in rs)}" for key, rs in grids.items()]
        raise BIDSError(f"{root}: the runs are on {len(grids)} different grids ("
                        + "; ".join(parts) + "); refusing to mix them: give --normalise mni "
                        "(or --normalise TEMPLATE.nii.gz) to register every run to a "
                        "template, or resample them to one grid first.")
    runs, excluded = _check_run_lengths(runs, mismatched_runs)
    warnings = [f"excluded {p}: {why}" for p, why in excluded.items()]
    table = None
    dropped = ()
    p_path = Path(participants) if participants is not None else root / "participants.tsv"
    if participants is not None or p_path.is_file() or require_participants:
        table = read_participants(p_path)
        listed = set(table.index)
        with_data = {run.subject for run in runs}
        all_data = with_data | {run.subject for run in found}
        no_data = sorted(listed - all_data)
        if no_data:
            raise BIDSError(f"{p_path}: {no_data} listed but without a functional run under "
                            f"{root}.")
        unlisted = sorted(all_data - listed)
        if unlisted:
            raise BIDSError(f"{p_path}: {unlisted} have data under {root} but are not listed.")
        dropped = tuple(sorted(listed - with_data))
        if dropped:
            warnings.append(f"dropped from the analysis (no run left): {', '.join(dropped)}")
            table = table.drop(index=list(dropped))
    else:
        p_path = None
    return Dataset(root, tuple(runs), table, p_path, shape, affine, excluded, dropped,
                   tuple(warnings))
