import numpy as np
import pytest
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import SVC

from rtfb.offline.classify import (
    ClassificationResult,
    classify,
    default_param_grid,
    make_pipeline,
    regress_vas,
    t_interval,
)

# Small grids keep the default tests fast; the slow tests use the default grids.
FAST_GRID = {"clf__C": [1.0], "select__k": [10, 100]}


def _null_data(seed=0, n=40, p=2000):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = np.repeat([0, 1], n // 2)
    rng.shuffle(y)
    return X, y


def _planted_data(seed=0, n=50, p=200, n_informative=5, shift=1.2):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.standard_normal((n, p))
    X[:, :n_informative] += shift * y[:, None]
    return X, y


def _leaky_accuracy(X, y, k=20, seed=0):
    """The classic mistake: select features on ALL subjects, then cross-validate."""
    X_selected = SelectKBest(f_classif, k=k).fit_transform(X, y)
    cv = StratifiedKFold(4, shuffle=True, random_state=seed)
    return cross_val_score(SVC(kernel="linear"), X_selected, y, cv=cv).mean()


def test_null_data_is_at_chance_while_leaky_procedure_is_inflated():
    X, y = _null_data()
    result = classify(X, y, "svm", k=[10, 100], param_grid=FAST_GRID, n_outer=4, n_inner=2,
                      n_permutations=20, random_state=0)
    assert isinstance(result, ClassificationResult)
    assert result.fold_accuracies.shape == (4,)
    assert result.ci[0] <= 0.5 <= result.ci[1]
    assert result.mean_accuracy < 0.7
    assert result.p_value > 0.05
    assert result.permutation_scores.shape == (20,)
    assert result.chance == 0.5
    # Negative control: the same null data, features selected outside the folds.
    leaky = _leaky_accuracy(X, y)
    assert leaky > 0.8
    assert leaky > result.ci[1]


def test_planted_features_are_found():
    X, y = _planted_data()
    result = classify(X, y, "svm", k=[5, 50], param_grid={"clf__C": [0.1], "select__k": [5, 50]},
                      n_outer=5, n_inner=3, n_permutations=0, random_state=0)
    assert result.mean_accuracy > 0.8
    assert result.ci[0] > 0.5
    # the t interval, truncated to the possible range of an accuracy
    low, high = t_interval(result.fold_accuracies)
    assert result.ci == (max(low, 0.0), min(high, 1.0))
    assert result.p_value is None and result.permutation_scores.size == 0
    assert all(set(p) == {"clf__C", "select__k"} for p in result.best_params)


@pytest.mark.parametrize("model", ["logreg", "rf"])
def test_other_models_on_planted_data(model):
    X, y = _planted_data(p=30, shift=1.5)
    grid = {"clf__C": [1.0]}
    if model == "rf":
        grid = {"clf__max_depth": [3], "clf__n_estimators": [30]}
    result = classify(X, y, model, param_grid=grid, n_outer=3, n_inner=2, n_permutations=0)
    assert result.mean_accuracy > 0.8


def test_pipeline_and_grid_layout():
    pipe = make_pipeline("svm", select=True)
    assert [name for name, _ in pipe.steps] == ["scale", "select", "clf"]
    assert [name for name, _ in make_pipeline("rf").steps] == ["scale", "clf"]
    assert default_param_grid("logreg", k=[5])["select__k"] == [5]
    assert "clf__max_depth" in default_param_grid("rf")


def test_classify_errors():
    X, y = _null_data(n=20, p=10)
    with pytest.raises(ValueError, match="'model'"):
        classify(X, y, model="knn")
    with pytest.raises(ValueError, match="one entry per row"):
        classify(X, y[:-1])
    with pytest.raises(ValueError, match="2 classes"):
        classify(X, np.zeros(20))
    with pytest.raises(ValueError, match="smallest class"):
        classify(X, np.r_[np.zeros(17), np.ones(3)], n_outer=5)
    with pytest.raises(ValueError, match="No value of k"):
        classify(X, y, k=[50])
    with pytest.raises(ValueError, match="NaN"):
        classify(np.full((20, 3), np.nan), y)


def test_t_interval():
    low, high = t_interval([0.5, 0.6, 0.7])
    # mean 0.6, sd 0.1, t(0.975, 2) = 4.302653
    assert low == pytest.approx(0.6 - 4.302653 * 0.1 / np.sqrt(3), abs=1e-6)
    assert high == pytest.approx(0.6 + 4.302653 * 0.1 / np.sqrt(3), abs=1e-6)
    assert t_interval([0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([0.5])


def test_regress_vas_planted_and_null():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((60, 20))
    vas = 5 + 2 * X[:, 0] - 1.5 * X[:, 1] + 0.5 * rng.standard_normal(60)
    result = regress_vas(X, vas, alphas=(0.1, 1.0, 10.0, 100.0), random_state=0)
    assert result.predictions.shape == (60,)
    assert result.r > 0.8 and result.r2 > 0.6
    assert len(result.best_alphas) == 5
    null = regress_vas(X, rng.standard_normal(60), random_state=0)
    assert null.r2 < 0.1
    with_k = regress_vas(X, vas, k=[2, 10], random_state=0)
    assert with_k.r > 0.8
    with pytest.raises(ValueError, match="at least 10 subjects"):
        regress_vas(X[:8], vas[:8])
    with pytest.raises(ValueError, match="one entry per row"):
        regress_vas(X, vas[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_data_default_grid_slow(seed):
    X, y = _null_data(seed=seed)
    result = classify(X, y, "svm", k=[10, 100, 1000], n_permutations=100, random_state=seed,
                      n_jobs=2)
    assert result.ci[0] <= 0.5 <= result.ci[1] or result.p_value > 0.05
    assert result.mean_accuracy < 0.7
    assert _leaky_accuracy(X, y, seed=seed) > 0.8


@pytest.mark.slow
def test_planted_data_permutation_slow():
    X, y = _planted_data(n=40, p=2000)
    result = classify(X, y, "svm", k=[5, 50], n_permutations=100, random_state=0, n_jobs=2)
    assert result.mean_accuracy > 0.8
    assert result.p_value < 0.05
