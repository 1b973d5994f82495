import numpy as np
import pytest

from rtfb._utils.checks import (
    _check_option,
    _validate_type,
    check_finite_array,
    check_int,
    check_mask,
    check_positive_number,
)


def test_validate_type():
    _validate_type(3, int, "n")
    with pytest.raises(TypeError, match="n must be an instance of int, got str"):
        _validate_type("3", int, "n")
    with pytest.raises(TypeError, match="got bool"):
        _validate_type(True, int, "n")


def test_check_option():
    assert _check_option("neighborhood", 7, (7, 19, 27)) == 7
    with pytest.raises(ValueError, match="'neighborhood' parameter: 8. Allowed: 7, 19, 27"):
        _check_option("neighborhood", 8, (7, 19, 27))


@pytest.mark.parametrize("bad", [0, -1.5, float("nan"), float("inf")])
def test_check_positive_number(bad):
    with pytest.raises(ValueError, match="tr must be a finite number > 0"):
        check_positive_number(bad, "tr")
    with pytest.raises(TypeError, match="tr must be a number"):
        check_positive_number("2", "tr")


def test_check_int():
    assert check_int(np.int64(5), "window", minimum=3) == 5
    with pytest.raises(ValueError, match="window must be >= 3, got 2"):
        check_int(2, "window", minimum=3)
    with pytest.raises(TypeError, match="window must be an integer"):
        check_int(3.0, "window")


def test_check_finite_array():
    with pytest.raises(ValueError, match="ts contains 2 NaN or infinite"):
        check_finite_array([1.0, np.nan, np.inf], "ts")
    with pytest.raises(ValueError, match=r"data must have 4 dimensions, got shape \(2, 2\)"):
        check_finite_array(np.zeros((2, 2)), "data", ndim=4)
    with pytest.raises(ValueError, match="x must be a numeric array"):
        check_finite_array(["a", "b"], "x")


def test_check_mask():
    assert check_mask(None, (2, 3)).all()
    assert check_mask(np.array([[1, 0]]), (1, 2)).dtype == bool
    with pytest.raises(ValueError, match="mask is empty"):
        check_mask(np.zeros((2, 2), bool), (2, 2))
    with pytest.raises(ValueError, match="spatial shape"):
        check_mask(np.ones((2, 2), bool), (2, 3))
    with pytest.raises(ValueError, match="only 0 and 1"):
        check_mask(np.full((2, 2), 2), (2, 2))
