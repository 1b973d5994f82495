"""General group designs: sessions (paired pre/post), covariates, ANCOVA, interactions, TFCE.

A :class:`DesignSpec` names what is tested and what is adjusted for; :func:`build_design`
turns it and the participants (and BIDS ``sessions.tsv``) tables into one design matrix
whose rows are subjects:

* **one session or none** (``sessions=None`` or ``("ses-A",)``): the rows' data are the
  subjects' maps (of that session);
* **paired** (``sessions=("ses-pre", "ses-post")``): the rows' data are the within-subject
  differences ``post - pre``. Testing ``mean`` is then the paired t-test (treatment effect),
  ``group`` the group x session interaction (does the change differ between patients and
  controls), a score column the score x session interaction; a column of ``sessions.tsv``
  enters as its own ``post - pre`` change.

Terms: ``mean`` (the intercept: a one-sample t-test, or the paired t-test on differences),
``group`` (1 = patient, 0 = control; positive t: patients higher), ``sex`` (1 = female,
0 = male) and any numeric column. Every tested term and every covariate is a column of one
design (intercept + terms, all mean-centred, so ``mean`` is the mean over the analysed
subjects at the covariates' means), and each tested term is its own t
contrast, adjusted for all other columns: ``tests=("group",), covariates=("age",)`` is an
ANCOVA, ``tests=("vas",), covariates=("group", "age")`` a VAS slope adjusted for group.

Inference (:func:`fit_design`): :func:`nilearn.mass_univariate.permuted_ols` (sign flipping
for ``mean``, permutation of the rows otherwise): two-sided max-|t| FWE p-values and, with
``tfce=True``, TFCE scores (E = 0.5, H = 2, 6-connectivity, 100 steps as fslmaths) and
their max-TFCE FWE p-values; Benjamini-Hochberg FDR q of the parametric p of t on ``n - p``
degrees of freedom (:func:`rtfb.offline.stats.fdr_bh`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["Design", "DesignSpec", "build_design", "fit_design", "read_sessions"]

_SEX_CODES = {"f": 1.0, "female": 1.0, "w": 1.0, "woman": 1.0,
              "m": 0.0, "male": 0.0, "man": 0.0, "1": 1.0, "0": 0.0}


@dataclass(frozen=True)
class DesignSpec:
    """What a group model tests and adjusts for.

    Parameters
    ----------
    tests : tuple of str
        Terms tested, each its own t contrast: ``"mean"``, ``"group"`` or a column.
    covariates : tuple of str
        Nuisance terms (mean-centred columns; ``"group"`` allowed).
    sessions : tuple of str | None
        None (no sessions), one session label (its maps) or two (``pre, post``: paired
        differences ``post - pre``). Labels with or without ``ses-``.
    subjects : {"all", "patients", "controls"}
        Rows kept (by ``group``).
    """

    tests: tuple[str, ...] = ("group",)
    covariates: tuple[str, ...] = ("age", "sex")
    sessions: tuple[str, ...] | None = None
    subjects: str = "all"

    def __post_init__(self) -> None:
        if self.sessions:  # "pre" and "ses-pre" name the same session
            object.__setattr__(self, "sessions", tuple(_ses(str(x)) for x in self.sessions))
        object.__setattr__(self, "tests", tuple(self.tests))
        object.__setattr__(self, "covariates", tuple(self.covariates))

    def describe(self) -> str:
        """One-line model description for the report and the terminal."""
        data = ("maps" if not self.sessions else
                f"maps of {self.sessions[0]}" if len(self.sessions) == 1 else
                f"within-subject change {self.sessions[1]} - {self.sessions[0]}")
        kinds = []
        for term in self.tests:
            if term == "mean":
                kinds.append("paired t-test (mean change)" if self.sessions and
                             len(self.sessions) == 2 else "one-sample t-test (mean)")
            elif term == "group" and self.sessions and len(self.sessions) == 2:
                kinds.append("group x session interaction (patients - controls change)")
            elif term == "group":
                kinds.append("patients - controls" + (" (ANCOVA)" if self.covariates else ""))
            elif self.sessions and len(self.sessions) == 2:
                kinds.append(f"{term} x session interaction (slope of the change on {term})")
            else:
                kinds.append(f"slope of {term}")
        covs = ", ".join(self.covariates) or "none"
        return (f"GLM on the {data} of {self.subjects} subjects: tested {'; '.join(kinds)}; "
                f"covariates {covs}.")


@dataclass
class Design:
    """A design matrix and the data it needs (output of :func:`build_design`).

    Attributes
    ----------
    spec : DesignSpec
    matrix : pandas.DataFrame
        Rows = ``subjects`` (index), columns: ``intercept`` then the terms.
    subjects : list of str
    sessions : tuple of str
        Sessions whose maps are read (empty: no session folders).
    notes : list of str
        Decisions (dropped subjects or constant covariates).
    """

    spec: DesignSpec
    matrix: pd.DataFrame
    subjects: list[str]
    sessions: tuple[str, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def df(self) -> int:
        """Residual degrees of freedom."""
        return int(self.matrix.shape[0] - self.matrix.shape[1])


def _ses(label: str) -> str:
    return label if label.startswith("ses-") else f"ses-{label}"


def read_sessions(bids_dir, subjects) -> pd.DataFrame:
    """The BIDS ``sub-XX/sub-XX_sessions.tsv`` tables, stacked.

    Returns
    -------
    pandas.DataFrame
        MultiIndex ``(participant_id, session_id)``; empty when no table exists.

    Raises
    ------
    ValueError
        A table without ``session_id`` or with a non-numeric value in a column that is
        otherwise numeric (naming the file and line).
    """
    frames = []
    for sid in subjects:
        path = Path(bids_dir) / sid / f"{sid}_sessions.tsv"
        if not path.is_file():
            continue
        table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a"],
                            keep_default_na=False)
        if "session_id" not in table.columns:
            raise ValueError(f"{path}: no 'session_id' column.")
        for column in table.columns:
            if column in ("session_id", "acq_time"):
                continue
            values = pd.to_numeric(table[column], errors="coerce")
            bad = values.isna() & table[column].notna()
            if bad.any() and not bad.all():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise ValueError(f"{path}, line {row + 2}: {column} must be a number or n/a, "
                                 f"got '{table[column].iloc[row]}'.")
            if not bad.any():
                table[column] = values
        table.insert(0, "participant_id", sid)
        frames.append(table)
    if not frames:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples(
            [], names=["participant_id", "session_id"]))
    out = pd.concat(frames, ignore_index=True)
    out["session_id"] = out["session_id"].map(_ses)
    return out.set_index(["participant_id", "session_id"])


def _code(table: pd.DataFrame, term: str, where: str) -> np.ndarray:
    if term == "group":
        return table["patient"].to_numpy(float)
    if term not in table.columns:
        raise ValueError(f"{where}: no column {term!r} for the design (columns: "
                         f"{', '.join(map(str, table.columns))}).")
    column = table[term]
    if term == "sex":
        codes = [_SEX_CODES.get(str(v).strip().lower()) for v in column]
        bad = [sid for sid, c in zip(table.index, codes, strict=True) if c is None]
        if bad:
            raise ValueError(f"{where}: sex of {bad} is not F/M (female/male) or 1/0.")
        return np.asarray(codes, float)
    values = pd.to_numeric(column, errors="coerce").to_numpy(float)
    bad = [sid for sid, v in zip(table.index, values, strict=True) if not np.isfinite(v)]
    if bad:
        raise ValueError(f"{where}: non-numeric or missing {term!r} for {bad}.")
    return values


def build_design(participants: pd.DataFrame, spec: DesignSpec, *, sessions_table=None,
                 available=None, patient_label: str = "patient") -> Design:
    """Design matrix of a :class:`DesignSpec` (see the module docstring).

    Parameters
    ----------
    participants : pandas.DataFrame
        Indexed by ``participant_id``, with ``group`` and the terms' columns.
    spec : DesignSpec
        The model.
    sessions_table : pandas.DataFrame | None
        :func:`read_sessions` output: session-level columns (their ``post - pre`` change in
        a paired design, their value in the session for one session).
    available : set of (str, str | None) | None
        ``(subject, session)`` pairs with data; subjects lacking a needed session are left
        out (with a note). None: all assumed present.
    patient_label : str
        ``group`` value of patients.

    Returns
    -------
    Design

    Raises
    ------
    ValueError
        Unknown term, non-numeric values, fewer rows than columns + 1, a rank-deficient
        design, or a ``mean`` test with covariates that are not mean-centrable.
    """
    from .._utils.checks import _check_option

    _check_option("subjects", spec.subjects, ("all", "patients", "controls"))
    if not spec.tests:
        raise ValueError("the design tests nothing (give at least one term).")
    overlap = set(spec.tests) & set(spec.covariates)
    if overlap:
        raise ValueError(f"{sorted(overlap)} both tested and covariate.")
    sessions = tuple(_ses(s) for s in spec.sessions) if spec.sessions else ()
    if len(sessions) > 2 or len(set(sessions)) != len(sessions):
        raise ValueError(f"sessions must be one label or two different ones (pre, post), "
                         f"got {spec.sessions}.")
    table = participants.copy()
    table["patient"] = (table["group"].astype(str).str.strip().str.lower()
                        == patient_label.lower()).to_numpy()
    notes = []
    if spec.subjects != "all":
        table = table[table["patient"] == (spec.subjects == "patients")]
    if sessions and available is not None:
        missing = [sid for sid in table.index
                   if any((sid, s) not in available for s in sessions)]
        if missing:
            notes.append(f"left out (no run in {' and '.join(sessions)}): "
                         f"{', '.join(missing)}.")
            table = table.drop(index=missing)
    where = "participants"
    columns = {"intercept": np.ones(len(table))}
    for term in (*spec.tests, *spec.covariates):
        if term == "mean":
            continue
        session_col = (sessions_table is not None and len(sessions_table)
                       and term in sessions_table.columns and term not in table.columns)
        if session_col:
            values = []
            for sid in table.index:
                vals = [sessions_table[term].get((sid, s), np.nan) for s in sessions]
                values.append(vals[-1] - vals[0] if len(vals) == 2 else vals[0])
            values = np.asarray(values, float)
            bad = [sid for sid, v in zip(table.index, values, strict=True) if not np.isfinite(v)]
            if bad:
                raise ValueError(f"sessions.tsv: non-numeric or missing {term!r} in "
                                 f"{' / '.join(sessions)} for {bad}.")
            name = f"{term} change" if len(sessions) == 2 else term
        else:
            values, name = _code(table, term, where), term
        if np.ptp(values) == 0:
            if term in spec.tests:
                raise ValueError(f"tested term {term!r} is constant in the analysed subjects.")
            notes.append(f"covariate {term!r} is constant in the analysed subjects and was "
                         "dropped.")
            continue
        columns[name] = values - values.mean()
    matrix = pd.DataFrame(columns, index=table.index)
    n, p = matrix.shape
    if n <= p:
        raise ValueError(f"the design has {p} columns for {n} subjects: no residual degrees "
                         "of freedom (add subjects or drop covariates).")
    rank = np.linalg.matrix_rank(matrix.to_numpy())
    if rank < p:
        raise ValueError(f"the design is rank deficient (rank {rank} < {p} columns: "
                         f"{', '.join(matrix.columns)}); drop collinear terms.")
    return Design(spec, matrix, list(table.index), sessions, notes)


def tested_column(design: Design, term: str) -> str:
    """Design column of a tested term."""
    if term == "mean":
        return "intercept"
    for name in (term, f"{term} change"):
        if name in design.matrix.columns:
            return name
    raise KeyError(term)


@dataclass
class FitResult:
    """One tested term of :func:`fit_design` (arrays over the masked voxels)."""

    term: str
    t: np.ndarray
    p_fwe: np.ndarray
    q_fdr: np.ndarray
    null_max: np.ndarray
    df: int
    tfce: np.ndarray | None = None
    p_tfce: np.ndarray | None = None
    null_max_tfce: np.ndarray | None = None


def fit_design(design: Design, data: np.ndarray, term: str, *, n_permutations: int = 1000,
               seed: int | None = 0, tfce: bool = False, mask_img=None,
               alpha: float = 0.05) -> FitResult:
    """t, max-|t| FWE, FDR and (optionally) TFCE of one tested term.

    Parameters
    ----------
    design : Design
        Output of :func:`build_design`.
    data : numpy.ndarray, shape (n_rows, n_voxels)
        One row per design row (maps or paired differences), masked voxels.
    term : str
        A tested term of ``design.spec``.
    n_permutations : int
        Permutations (or sign flips) of :func:`nilearn.mass_univariate.permuted_ols`.
    seed : int | None
        Its ``random_state``.
    tfce : bool
        Also TFCE (needs ``mask_img``, the 3D mask the voxels come from).
    mask_img : nibabel image | None
        3D mask of the voxels (TFCE only).
    alpha : float
        FDR level of the q-values (q itself does not depend on it).

    Returns
    -------
    FitResult
    """
    import warnings

    from nilearn.mass_univariate import permuted_ols
    from scipy import stats as sp_stats

    from .stats import fdr_bh

    col = tested_column(design, term)
    matrix = design.matrix
    tested = matrix[[col]].to_numpy(float)
    others = matrix.drop(columns=[col, "intercept"] if col != "intercept" else [col])
    confounds = others.to_numpy(float) if others.shape[1] else None
    masker = None
    if tfce:
        if mask_img is None:
            raise ValueError("tfce=True needs mask_img.")
        from nilearn.maskers import NiftiMasker

        masker = NiftiMasker(mask_img).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn's "intercept" notices
        out = permuted_ols(tested, np.asarray(data, float), confounding_vars=confounds,
                           model_intercept=col != "intercept", n_perm=int(n_permutations) - 1,
                           two_sided_test=True, random_state=seed, n_jobs=1, verbose=0,
                           masker=masker, tfce=tfce, output_type="dict")
    t = out["t"][0]
    df = design.df
    p_unc = 2 * sp_stats.t.sf(np.abs(t), df)
    _, q = fdr_bh(p_unc, alpha=alpha)
    null_max = np.concatenate([[np.abs(t).max()], out["h0_max_t"][0]])
    result = FitResult(term=term, t=t, p_fwe=10.0 ** -out["logp_max_t"][0], q_fdr=q,
                       null_max=null_max, df=df)
    if tfce:
        result.tfce = out["tfce"][0]
        result.p_tfce = 10.0 ** -out["logp_max_tfce"][0]
        result.null_max_tfce = np.concatenate([[np.abs(result.tfce).max()],
                                               out["h0_max_tfce"][0]])
    return result
