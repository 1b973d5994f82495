"""Find the resting-state runs and the participants of a BIDS dataset.

Only what the offline analysis needs: ``sub-*/func/*_bold.nii.gz`` (or ``.nii``) with a JSON
sidecar giving ``RepetitionTime`` (the sidecar next to the run; BIDS inheritance from a
top-level ``*_bold.json`` is honoured for the task), and ``participants.tsv`` read with pandas.
Every error names the file at fault.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["BIDSError", "Dataset", "Run", "find_runs", "load_dataset", "read_participants"]

_SUB_RE = re.compile(r"^sub-[A-Za-z0-9]+$")
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
    """

    subject: str
    path: Path
    sidecar: Path | None
    tr: float
    prefix: str


@dataclass(frozen=True)
class Dataset:
    """Runs, participants and the shared grid of a BIDS dataset."""

    root: Path
    runs: tuple[Run, ...]
    participants: pd.DataFrame | None
    participants_path: Path | None
    shape: tuple[int, ...]
    affine: np.ndarray = field(repr=False)

    @property
    def subjects(self) -> list[str]:
        """Subjects with data, sorted."""
        return sorted({run.subject for run in self.runs})


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
    task = _entities(prefix).get("task")
    if task is not None:
        subject = prefix.split("_")[0]
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


def find_runs(bids_dir) -> list[Run]:
    """All ``sub-*/func/*_bold.nii[.gz]`` runs of a BIDS dataset, sorted by path.

    Parameters
    ----------
    bids_dir : str | path-like
        BIDS root.

    Returns
    -------
    list of Run

    Raises
    ------
    BIDSError
        If the folder does not exist, holds no run, or a run has no usable TR.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise BIDSError(f"{root}: BIDS directory not found.")
    runs = []
    for sub_dir in sorted(root.glob("sub-*")):
        if not (sub_dir.is_dir() and _SUB_RE.match(sub_dir.name)):
            continue
        for path in sorted((sub_dir / "func").glob("*_bold.nii*")):
            prefix = _prefix(path.name)
            if prefix is None:
                continue
            if not prefix.startswith(sub_dir.name + "_"):
                raise BIDSError(f"{path}: file name does not start with {sub_dir.name}_.")
            tr, sidecar = _read_tr(root, path, prefix)
            runs.append(Run(sub_dir.name, path, sidecar, tr, prefix))
    if not runs:
        raise BIDSError(f"{root}: no functional run (sub-*/func/*_bold.nii.gz) found.")
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
    return table.set_index("participant_id")


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - any nibabel failure
        raise BIDSError(f"{path}: unreadable NIfTI ({err}).") from None
    shape = tuple(int(n) for n in img.shape)
    if len(shape) != 4:
        raise BIDSError(f"{path}: a BOLD run must be 4D, got shape {shape}.")
    return shape[:3], np.asarray(img.affine, dtype=np.float64)


def load_dataset(bids_dir, participants=None, *, require_participants: bool = True) -> Dataset:
    """Runs and participants of a BIDS dataset, checked for the offline analysis.

    Parameters
    ----------
    bids_dir : str | path-like
        BIDS root.
    participants : str | path-like | None
        Participants table; default ``BIDS_DIR/participants.tsv``.
    require_participants : bool
        Raise when there is no participants file (else ``participants`` is None).

    Returns
    -------
    Dataset

    Raises
    ------
    BIDSError
        See :func:`find_runs` and :func:`read_participants`; also subjects on different
        grids (shape or affine), subjects listed in the participants file without data,
        and subjects with data missing from the participants file.
    """
    root = Path(bids_dir)
    runs = find_runs(root)
    shape = affine = None
    first = None
    for run in runs:
        run_shape, run_affine = _grid(run.path)
        if first is None:
            shape, affine, first = run_shape, run_affine, run.path
        elif run_shape != shape:
            raise BIDSError(f"{run.path}: grid {run_shape} differs from {shape} of {first}; "
                            "all subjects must share one grid (resample them first).")
        elif not np.allclose(run_affine, affine, atol=1e-4):
            raise BIDSError(f"{run.path}: affine differs from that of {first}; all subjects "
                            "must share one grid (resample them first).")
    table = None
    p_path = Path(participants) if participants is not None else root / "participants.tsv"
    if participants is not None or p_path.is_file() or require_participants:
        table = read_participants(p_path)
        listed = set(table.index)
        with_data = {run.subject for run in runs}
        no_data = sorted(listed - with_data)
        if no_data:
            raise BIDSError(f"{p_path}: {no_data} listed but without a functional run under "
                            f"{root}.")
        unlisted = sorted(with_data - listed)
        if unlisted:
            raise BIDSError(f"{p_path}: {unlisted} have data under {root} but are not listed.")
    else:
        p_path = None
    return Dataset(root, tuple(runs), table, p_path, shape, affine)
