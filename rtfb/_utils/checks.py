"""Input checks with specific error messages (in the style of MNE's ``_validate_type``)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np


def _validate_type(item: Any, types: type | tuple[type, ...], item_name: str) -> None:
    """Raise TypeError naming ``item_name`` unless ``item`` is an instance of ``types``."""
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(item, types) or (isinstance(item, bool) and bool not in types):
        names = ", ".join(t.__name__ for t in types)
        raise TypeError(f"{item_name} must be an instance of {names}, got {type(item).__name__}.")


def _check_option(parameter: str, value: Any, allowed_values: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed_values``, else raise ValueError."""
    allowed = list(allowed_values)
    if value in allowed:
        return value
    options = ", ".join(repr(v) for v in allowed)
    raise ValueError(
        f"Invalid value for the '{parameter}' parameter: {value!r}. Allowed: {options}."
    )


def check_positive_number(value: Any, name: str) -> float:
    """Return ``value`` as float after checking it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """Return ``value`` as int after checking its type and lower bound."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return value


def check_finite_array(
    array: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    min_ndim: int | None = None,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Convert ``array`` to ``dtype`` and check its dimensionality and finiteness.

    Parameters
    ----------
    array : array-like
        Input to check.
    name : str
        Parameter name used in error messages.
    ndim : int | tuple of int | None
        Accepted numbers of dimensions.
    min_ndim : int | None
        Minimal number of dimensions.
    dtype : numpy dtype
        Output dtype.

    Returns
    -------
    numpy.ndarray
        The converted array (not a copy when already of ``dtype``).
    """
    try:
        out = np.asarray(array, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(array).__name__}.") from err
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if out.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, "
                f"got shape {out.shape}."
            )
    if min_ndim is not None and out.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {out.shape}."
        )
    if out.size and not np.isfinite(out).all():
        n_bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite value(s); expected finite values."
        )
    return out


def check_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a boolean array of the given spatial ``shape``.

    ``None`` means every voxel.
    """
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} must have the spatial shape of the data {tuple(shape)}, "
                         f"got {mask.shape}.")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} must be boolean or contain only 0 and 1.")
        mask = mask.astype(bool)
    if not mask.any():
        raise ValueError(f"{name} is empty: it selects no voxel.")
    return mask
