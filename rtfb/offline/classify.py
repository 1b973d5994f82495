"""Patients vs controls classification and VAS regression with nested cross-validation.

Every data-dependent step (standardisation, univariate feature selection, the classifier) is
a step of one scikit-learn :class:`~sklearn.pipeline.Pipeline`, and the pipeline is refitted
inside every inner and outer training fold, so no information from a test fold reaches the
model (no leakage). The hyper-parameters (``C`` of the SVM and the logistic regression,
``max_depth`` of the random forest, ``k`` of :class:`~sklearn.feature_selection.SelectKBest`)
are chosen by an inner :class:`~sklearn.model_selection.GridSearchCV` in each outer training
fold; the outer :class:`~sklearn.model_selection.StratifiedKFold` gives the accuracy.

Confidence interval of the accuracy: a Student t interval over the outer folds,
``mean ± t(0.975, K - 1) * sd / sqrt(K)``, truncated to the possible range [0, 1]. The folds
share training subjects, so the fold accuracies are not independent and the interval is
approximate (usually somewhat narrow; Bengio & Grandvalet 2004). The permutation p-value
(:func:`~sklearn.model_selection.permutation_test_score`, which reruns the *whole* nested
procedure on permuted labels) is the test of above-chance accuracy to report:
``(1 + #{perm >= observed}) / (1 + n_permutations)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SelectKBest, f_classif, f_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    StratifiedKFold,
    cross_validate,
    permutation_test_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from .._utils.checks import _check_option, check_finite_array, check_int

__all__ = [
    "MODELS",
    "ClassificationResult",
    "RegressionResult",
    "make_pipeline",
    "default_param_grid",
    "classify",
    "regress_vas",
    "t_interval",
]

MODELS = ("svm", "logreg", "rf")


@dataclass
class ClassificationResult:
    """Outcome of :func:`classify`.

    Attributes
    ----------
    fold_accuracies : numpy.ndarray, shape (n_outer,)
        Accuracy on each outer test fold.
    mean_accuracy : float
        Mean of ``fold_accuracies``.
    ci : tuple of float
        Approximate 95% t interval of the mean over the outer folds, truncated to [0, 1].
    p_value : float | None
        Permutation p-value of ``mean_accuracy`` (None if ``n_permutations == 0``).
    permutation_scores : numpy.ndarray, shape (n_permutations,)
        Mean outer accuracies of the nested procedure on permuted labels.
    chance : float
        Accuracy of always predicting the majority class.
    best_params : list of dict
        Hyper-parameters chosen by the inner search in each outer fold.
    """

    fold_accuracies: np.ndarray
    mean_accuracy: float
    ci: tuple[float, float]
    p_value: float | None
    permutation_scores: np.ndarray
    chance: float
    best_params: list[dict] = field(default_factory=list)


@dataclass
class RegressionResult:
    """Outcome of :func:`regress_vas`.

    Attributes
    ----------
    predictions : numpy.ndarray, shape (n_subjects,)
        Out-of-fold predictions (each subject predicted by the model of the fold that left it
        out).
    r : float
        Pearson correlation of ``predictions`` with the observed VAS.
    p_value : float
        Parametric p-value of ``r`` (two-sided; optimistic for CV predictions, which are not
        independent — use a permutation test for inference).
    r2 : float
        Out-of-fold coefficient of determination (can be negative).
    best_alphas : list of float
        Ridge penalty chosen by the inner search in each outer fold.
    """

    predictions: np.ndarray
    r: float
    p_value: float
    r2: float
    best_alphas: list[float] = field(default_factory=list)


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student t confidence interval of the mean of ``values``.

    Parameters
    ----------
    values : array-like, shape (n,)
        Per-fold scores (n >= 2).
    confidence : float
        Confidence level in (0, 1).

    Returns
    -------
    tuple of float
        ``(low, high)``; both equal the mean when the values are all equal.
    """
    values = check_finite_array(values, "values", ndim=1)
    if values.size < 2:
        raise ValueError(f"values must hold at least 2 scores, got {values.size}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    mean = float(values.mean())
    half = stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1)
    half /= np.sqrt(values.size)
    return mean - float(half), mean + float(half)


def make_pipeline(model: str = "svm", select: bool = False, random_state=None) -> Pipeline:
    """Scaling, optional univariate selection and a classifier in one pipeline.

    Parameters
    ----------
    model : {"svm", "logreg", "rf"}
        Linear SVM (:class:`~sklearn.svm.SVC`), L2 logistic regression or random forest.
    select : bool
        Insert ``SelectKBest(f_classif)`` (step ``select``) after the scaler.
    random_state : int | None
        Seed of the random forest.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``scale``, [``select``], ``clf``.
    """
    _check_option("model", model, MODELS)
    clf = {
        "svm": lambda: SVC(kernel="linear"),
        "logreg": lambda: LogisticRegression(max_iter=5000),
        "rf": lambda: RandomForestClassifier(n_estimators=200, random_state=random_state),
    }[model]()
    steps = [("scale", StandardScaler())]
    if select:
        steps.append(("select", SelectKBest(f_classif)))
    steps.append(("clf", clf))
    return Pipeline(steps)


def default_param_grid(model: str = "svm", k: Sequence[int] | None = None) -> dict:
    """Inner-search grid: ``C`` (SVM, logistic regression) or ``max_depth`` (forest), and ``k``.

    Parameters
    ----------
    model : {"svm", "logreg", "rf"}
        Classifier.
    k : sequence of int | None
        Candidate numbers of selected features (``select__k``); None for no selection.

    Returns
    -------
    dict
        Parameter grid for :class:`~sklearn.model_selection.GridSearchCV`.
    """
    _check_option("model", model, MODELS)
    grid = {
        "svm": {"clf__C": [0.01, 0.1, 1.0, 10.0]},
        "logreg": {"clf__C": [0.01, 0.1, 1.0, 10.0]},
        "rf": {"clf__max_depth": [None, 3]},
    }[model]
    if k is not None:
        grid = {**grid, "select__k": list(k)}
    return grid


def _check_xy(X, y, name_y: str) -> tuple[np.ndarray, np.ndarray]:
    X = check_finite_array(X, "X", ndim=2)
    y = np.asarray(y)
    if y.ndim != 1 or y.size != X.shape[0]:
        raise ValueError(f"{name_y} must have one entry per row of X ({X.shape[0]}), "
                         f"got shape {y.shape}.")
    return X, y


def classify(
    X,
    y,
    model: str = "svm",
    *,
    k: Sequence[int] | None = None,
    param_grid: dict | None = None,
    n_outer: int = 5,
    n_inner: int = 3,
    n_permutations: int = 100,
    random_state: int | None = 0,
    n_jobs: int | None = None,
) -> ClassificationResult:
    """Nested cross-validated classification accuracy with a permutation p-value.

    Parameters
    ----------
    X : array-like, shape (n_subjects, n_features)
        Features (e.g. upper-triangle FC edges or graph metrics).
    y : array-like, shape (n_subjects,)
        Labels (two or more classes, e.g. patient / control).
    model : {"svm", "logreg", "rf"}
        Classifier, see :func:`make_pipeline`.
    k : sequence of int | None
        If given, a ``SelectKBest`` step is added and its ``k`` is searched over these values
        (values larger than the number of features are dropped).
    param_grid : dict | None
        Inner-search grid overriding :func:`default_param_grid`.
    n_outer, n_inner : int
        Numbers of outer and inner stratified folds (shuffled with ``random_state``).
    n_permutations : int
        Label permutations for the p-value (0 to skip; each reruns the nested procedure).
    random_state : int | None
        Seed of the fold shuffles, the permutations and the random forest.
    n_jobs : int | None
        Parallel jobs of the permutation test.

    Returns
    -------
    ClassificationResult
        Fold accuracies, mean, 95% t interval, permutation p-value and chosen parameters.
    """
    X, y = _check_xy(X, y, "y")
    n_outer = check_int(n_outer, "n_outer", minimum=2)
    n_inner = check_int(n_inner, "n_inner", minimum=2)
    n_permutations = check_int(n_permutations, "n_permutations", minimum=0)
    _, counts = np.unique(y, return_counts=True)
    if counts.size < 2:
        raise ValueError("y must contain at least 2 classes.")
    if counts.min() < n_outer:
        raise ValueError(f"The smallest class has {counts.min()} subjects, fewer than "
                         f"n_outer ({n_outer}).")
    if k is not None:
        k = [int(v) for v in k if 1 <= int(v) <= X.shape[1]]
        if not k:
            raise ValueError(f"No value of k is in [1, n_features={X.shape[1]}].")
    pipe = make_pipeline(model, select=k is not None, random_state=random_state)
    grid = default_param_grid(model, k) if param_grid is None else param_grid
    inner = StratifiedKFold(n_inner, shuffle=True, random_state=random_state)
    outer = StratifiedKFold(n_outer, shuffle=True, random_state=random_state)
    search = GridSearchCV(pipe, grid, cv=inner, scoring="accuracy")
    cv = cross_validate(search, X, y, cv=outer, scoring="accuracy", return_estimator=True)
    folds = np.asarray(cv["test_score"], dtype=float)
    if n_permutations:
        _, perm_scores, p_value = permutation_test_score(
            search, X, y, cv=outer, scoring="accuracy", n_permutations=n_permutations,
            random_state=random_state, n_jobs=n_jobs)
        p_value = float(p_value)
    else:
        perm_scores, p_value = np.empty(0), None
    return ClassificationResult(
        fold_accuracies=folds,
        mean_accuracy=float(folds.mean()),
        ci=tuple(float(v) for v in np.clip(t_interval(folds), 0.0, 1.0)),
        p_value=p_value,
        permutation_scores=np.asarray(perm_scores, dtype=float),
        chance=float(counts.max() / counts.sum()),
        best_params=[est.best_params_ for est in cv["estimator"]],
    )


def regress_vas(
    X,
    vas,
    *,
    alphas: Sequence[float] = tuple(np.logspace(-2, 4, 7)),
    k: Sequence[int] | None = None,
    n_outer: int = 5,
    n_inner: int = 3,
    random_state: int | None = 0,
) -> RegressionResult:
    """Nested cross-validated ridge regression of a pain score (VAS) on features.

    Parameters
    ----------
    X : array-like, shape (n_subjects, n_features)
        Features.
    vas : array-like, shape (n_subjects,)
        Continuous target (e.g. VAS pain rating).
    alphas : sequence of float
        Ridge penalties searched by the inner CV (negative mean squared error).
    k : sequence of int | None
        If given, ``SelectKBest(f_regression)`` inside the pipeline, ``k`` searched too.
    n_outer, n_inner : int
        Numbers of outer and inner (shuffled) K folds.
    random_state : int | None
        Seed of the fold shuffles.

    Returns
    -------
    RegressionResult
        Out-of-fold predictions, their Pearson r (and parametric p) with ``vas``, the
        out-of-fold R², and the alpha chosen in each outer fold.
    """
    X, vas = _check_xy(X, vas, "vas")
    vas = check_finite_array(vas, "vas", ndim=1)
    n_outer = check_int(n_outer, "n_outer", minimum=2)
    n_inner = check_int(n_inner, "n_inner", minimum=2)
    if X.shape[0] < 2 * n_outer:
        raise ValueError(f"Need at least {2 * n_outer} subjects for {n_outer} outer folds, "
                         f"got {X.shape[0]}.")
    steps = [("scale", StandardScaler())]
    grid: dict = {"ridge__alpha": [float(a) for a in alphas]}
    if k is not None:
        k = [int(v) for v in k if 1 <= int(v) <= X.shape[1]]
        if not k:
            raise ValueError(f"No value of k is in [1, n_features={X.shape[1]}].")
        steps.append(("select", SelectKBest(f_regression)))
        grid["select__k"] = k
    steps.append(("ridge", Ridge()))
    inner = KFold(n_inner, shuffle=True, random_state=random_state)
    outer = KFold(n_outer, shuffle=True, random_state=random_state)
    search = GridSearchCV(Pipeline(steps), grid, cv=inner, scoring="neg_mean_squared_error")
    predictions = np.empty(vas.size)
    best_alphas = []
    for train, test in outer.split(X):
        fitted = clone(search).fit(X[train], vas[train])
        predictions[test] = fitted.predict(X[test])
        best_alphas.append(float(fitted.best_params_["ridge__alpha"]))
    if np.ptp(predictions) == 0 or np.ptp(vas) == 0:
        r, p = float("nan"), float("nan")
    else:
        r, p = stats.pearsonr(predictions, vas)
    return RegressionResult(
        predictions=predictions,
        r=float(r),
        p_value=float(p),
        r2=float(r2_score(vas, predictions)),
        best_alphas=best_alphas,
    )
