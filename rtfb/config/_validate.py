"""Typed readers for the tables of a protocol file.

A :class:`Section` wraps one TOML table together with its dotted path and the file it came
from, rejects unknown keys on construction, and reads typed values. Every failure raises
:class:`~rtfb.exceptions.ProtocolError` naming the file, the dotted key and what was expected
versus what was found.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..exceptions import ProtocolError

__all__ = ["LIMITS", "REQUIRED", "Section", "describe", "generic_key", "join_key"]

#: Plausibility limits ``(minimum, maximum)`` (either may be ``None``) of numeric keys,
#: applied on top of each key's own rule by :meth:`Section.number`, :meth:`Section.integer`
#: and :meth:`Section.numbers`. They refuse values no session can use and that would make
#: a session hang or exhaust memory (a 1e9 mm smoothing kernel, a million-volume window, a
#: 1e-9 s cosine cutoff with billions of regressors). Keys are generic: ``blocks[]`` for
#: every block, ``rois.*`` for every ROI. Documented in docs/protocols.md ("Limits").
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "session.tr": (0.05, 60.0),
    "session.volumes": (None, 100_000),
    "blocks[].volumes": (None, 100_000),
    "metric.window": (None, 10_000),
    "metric.band": (None, 10.0),
    "preprocess.smoothing_fwhm": (None, 30.0),
    "preprocess.drift_order": (None, 10),
    "preprocess.drift_cutoff": (10.0, 100_000.0),
    "preprocess.glm_window": (None, 10_000),
    "preprocess.fd_threshold": (None, 100.0),
    "rois.*.mni_sphere.center": (-300.0, 300.0),
    "rois.*.mni_sphere.radius": (None, 100.0),
    "feedback.scale": (None, 1e6),
    "output.write_maps_every": (None, 100_000),
}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Sentinel default: the key must be present."""


def join_key(path: str, name: str) -> str:
    """Dotted key of ``name`` inside the table at ``path`` (``""`` = top level)."""
    return f"{path}.{name}" if path else name


def generic_key(key: str) -> str:
    """The :data:`LIMITS` key of a dotted key (``blocks[3].volumes`` -> ``blocks[].volumes``,
    ``rois.insula.mni_sphere.radius`` -> ``rois.*.mni_sphere.radius``).
    """
    key = re.sub(r"\[\d+\]", "[]", key)
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "rois":
        parts[1] = "*"
    return ".".join(parts)


def _check_limits(section: Section, name: str, values: Iterable[float],
                  expected: str) -> None:
    low, high = LIMITS.get(generic_key(section.key(name)), (None, None))
    for x in values:
        if (low is not None and x < low) or (high is not None and x > high):
            rule = _bounds_text(ge=low, le=high).strip()
            raise section.error(name, f"{_fmt(x)} is outside the plausible range ({rule}); "
                                f"expected {expected}.")


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def describe(value: Any) -> str:
    """Short description of a found value for error messages: type and value."""
    if isinstance(value, Mapping):
        return "a table"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_type_name(value)} {text}"


def _fmt(x: float) -> str:
    return f"{x:g}"


def _bounds_text(gt=None, ge=None, lt=None, le=None) -> str:
    low = (f"({_fmt(gt)}" if gt is not None else f"[{_fmt(ge)}") if (
        gt is not None or ge is not None) else None
    high = (f"{_fmt(lt)})" if lt is not None else f"{_fmt(le)}]") if (
        lt is not None or le is not None) else None
    if low and high:
        return f" in {low}, {high}"
    if gt is not None:
        return f" > {_fmt(gt)}"
    if ge is not None:
        return f" >= {_fmt(ge)}"
    if lt is not None:
        return f" < {_fmt(lt)}"
    if le is not None:
        return f" <= {_fmt(le)}"
    return ""


def _in_bounds(x: float, gt=None, ge=None, lt=None, le=None) -> bool:
    return not ((gt is not None and not x > gt) or (ge is not None and not x >= ge)
                or (lt is not None and not x < lt) or (le is not None and not x <= le))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Section:
    """One table of a protocol being read.

    Parameters
    ----------
    data : Mapping
        The table (checked to be a mapping).
    path : str
        Its dotted key (``""`` for the top level, ``"blocks[2]"`` for an array element).
    source : str
        File name (or ``"<string>"``) for error messages.
    allowed : iterable of str | None
        Allowed keys; any other key raises. ``None`` accepts any key (free-named tables
        such as ``[rois]``).
    """

    def __init__(self, data: Any, path: str, source: str, allowed: Iterable[str] | None):
        self.path = path
        self.source = source
        if not isinstance(data, Mapping):
            raise ProtocolError(source, path or None, f"expected a table, got {describe(data)}.")
        self.data = data
        self.allowed = None if allowed is None else tuple(allowed)
        if self.allowed is not None:
            for name in data:
                if name not in self.allowed:
                    raise self.error(str(name), self._unknown_message(str(name)))

    # ----------------------------------------------------------------------------- helpers
    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if not self.path:
            where = "the top level"
        else:  # "[metric]", or "blocks[2]" for an element of an array of tables
            where = self.path if self.path.endswith("]") else f"[{self.path}]"
        return (f"unknown key{hint}. Allowed keys in {where}: "
                f"{', '.join(sorted(self.allowed))}.")

    def key(self, name: str) -> str:
        """Dotted key of ``name`` in this table."""
        return join_key(self.path, name)

    def error(self, name: str | None, reason: str) -> ProtocolError:
        """A :class:`ProtocolError` for key ``name`` of this table (``None``: the table)."""
        key = self.key(name) if name is not None else (self.path or None)
        return ProtocolError(self.source, key, reason)

    def has(self, name: str) -> bool:
        """Whether ``name`` is written in the table."""
        return name in self.data

    def _raw(self, name: str, default: Any, expected: str) -> tuple[Any, bool]:
        if name in self.data:
            return self.data[name], True
        if default is REQUIRED:
            raise self.error(name, f"required key is missing; expected {expected}.")
        return default, False

    def _bad(self, name: str, expected: str, value: Any) -> ProtocolError:
        return self.error(name, f"expected {expected}, got {describe(value)}.")

    # ------------------------------------------------------------------------- readers
    def number(self, name: str, default: Any = REQUIRED, *, gt=None, ge=None, lt=None,
               le=None, unit: str = "") -> float:
        """A finite number (TOML integer or float) within the given bounds."""
        expected = "a number" + _bounds_text(gt, ge, lt, le) + (f" ({unit})" if unit else "")
        value, given = self._raw(name, default, expected)
        if not given:
            return value
        if not _is_number(value) or not math.isfinite(value):
            raise self._bad(name, expected, value)
        if not _in_bounds(value, gt, ge, lt, le):
            raise self.error(name, f"expected {expected}, got {_fmt(value)}.")
        _check_limits(self, name, (value,), expected)
        return float(value)

    def integer(self, name: str, default: Any = REQUIRED, *, ge=None, le=None,
                unit: str = "") -> int:
        """A TOML integer within the given bounds."""
        expected = "an integer" + _bounds_text(ge=ge, le=le) + (f" ({unit})" if unit else "")
        value, given = self._raw(name, default, expected)
        if not given:
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(name, expected, value)
        if not _in_bounds(value, ge=ge, le=le):
            raise self.error(name, f"expected {expected}, got {value}.")
        _check_limits(self, name, (value,), expected)
        return int(value)

    def boolean(self, name: str, default: Any = REQUIRED) -> bool:
        """A TOML boolean (``true`` / ``false``)."""
        value, given = self._raw(name, default, "a boolean (true or false)")
        if given and not isinstance(value, bool):
            raise self._bad(name, "a boolean (true or false)", value)
        return value

    def string(self, name: str, default: Any = REQUIRED, *, choices: Iterable[str] | None = None,
               pattern: str | None = None, what: str = "a string") -> str:
        """A string, optionally one of ``choices`` or fully matching ``pattern``."""
        choices = None if choices is None else tuple(choices)
        if choices is not None:
            expected = "one of " + ", ".join(repr(c) for c in choices)
        elif pattern is not None:
            expected = f"{what} matching {pattern}"
        else:
            expected = what
        value, given = self._raw(name, default, expected)
        if not given:
            return value
        if not isinstance(value, str):
            raise self._bad(name, expected, value)
        if choices is not None and value not in choices:
            raise self._bad(name, expected, value)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self._bad(name, expected, value)
        return value

    def numbers(self, name: str, default: Any = REQUIRED, *, length: int, what: str,
                gt=None, ge=None, lt=None, le=None) -> tuple[float, ...]:
        """An array of exactly ``length`` finite numbers, each within the bounds."""
        expected = (f"{what}: an array of {length} numbers"
                    + (f" each{_bounds_text(gt, ge, lt, le)}"
                       if _bounds_text(gt, ge, lt, le) else ""))
        value, given = self._raw(name, default, expected)
        if not given:
            return value
        if (not isinstance(value, (list, tuple)) or len(value) != length
                or not all(_is_number(v) and math.isfinite(v)
                           and _in_bounds(v, gt, ge, lt, le) for v in value)):
            raise self._bad(name, expected, value)
        _check_limits(self, name, value, expected)
        return tuple(float(v) for v in value)

    def strings(self, name: str, default: Any = REQUIRED, *,
                choices: Iterable[str]) -> tuple[str, ...]:
        """An array of distinct strings, each one of ``choices``."""
        choices = tuple(choices)
        expected = "an array of distinct strings among " + ", ".join(repr(c) for c in choices)
        value, given = self._raw(name, default, expected)
        if not given:
            return value
        if (not isinstance(value, (list, tuple))
                or not all(isinstance(v, str) and v in choices for v in value)
                or len(set(value)) != len(value)):
            raise self._bad(name, expected, value)
        return tuple(value)

    def table(self, name: str, allowed: Iterable[str] | None, *,
              required: bool = False) -> Section | None:
        """Sub-table ``name`` (``None`` when absent and not required)."""
        if name not in self.data:
            if required:
                raise self.error(name, f"required table [{self.key(name)}] is missing.")
            return None
        return Section(self.data[name], self.key(name), self.source, allowed)

    def forbid_unless(self, name: str, condition: bool, reason: str) -> None:
        """Reject key ``name`` when written although ``condition`` is false.

        ``reason`` completes "this key is only used when ...".
        """
        if name in self.data and not condition:
            raise self.error(name, f"this key is only used when {reason}; remove it.")
