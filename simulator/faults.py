"""Fault injection plans of the simulator (drop, truncate, corrupt, shuffle, delay,
duplicate; see :mod:`simulator.stream` for what each does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["ACTIONS", "FAULT_TYPES", "corrupt_bytes", "parse_fault_value", "plan_faults"]

#: Fault types, in order of precedence when a volume is drawn for several.
FAULT_TYPES = ("drop", "truncate", "corrupt", "shuffle", "delay", "duplicate")
#: Action recorded for a volume, per fault (``written`` when no fault).
ACTIONS = {"drop": "dropped", "truncate": "truncated", "corrupt": "corrupted",
           "shuffle": "shuffled", "delay": "delayed", "duplicate": "duplicated"}
_NIFTI_HEADER_BYTES = 348
_DICOM_META_START = 128


# ----------------------------------------------------------------------------------------
# fault plan
# ----------------------------------------------------------------------------------------
def parse_fault_value(text: str) -> float | list[int]:
    """Parse a command-line fault value: a rate in [0, 1) or 1-based volume numbers.

    ``"0.1"`` -> 0.1; ``"5,17"`` -> [5, 17]; ``"5"`` -> [5]; ``"0"`` -> 0.0.
    """
    text = str(text).strip()
    if "," in text or re.fullmatch(r"[1-9]\d*", text):
        try:
            vols = [int(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise ValueError(f"bad volume list {text!r}; expected e.g. 5,17.") from err
        if not vols or min(vols) < 1:
            raise ValueError(f"volume numbers are 1-based, got {text!r}.")
        return vols
    try:
        rate = float(text)
    except ValueError as err:
        raise ValueError(f"bad fault value {text!r}: a rate in [0, 1) or volume numbers "
                         "like 5,17.") from err
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"a fault rate must lie in [0, 1), got {text!r}.")
    return rate


def plan_faults(n_volumes: int, faults: Mapping[str, float | Sequence[int]] | None,
                seed: int = 0) -> dict[int, tuple[str, int | None]]:
    """Assign at most one fault to each volume.

    Parameters
    ----------
    n_volumes : int
        Number of volumes streamed.
    faults : mapping
        Fault type (:data:`FAULT_TYPES`) to a rate in [0, 1) or to 1-based volume numbers.
        Explicit numbers are applied first and must not conflict (one fault per volume;
        a shuffled volume needs an unfaulted next volume); rates are then drawn per volume
        with ``numpy.random.default_rng(seed)``, type by type in precedence order, a
        volume already faulted being left alone.
    seed : int
        Seed of the rate draws.

    Returns
    -------
    dict of int to (str, int | None)
        Volume number -> (fault type, partner volume for ``shuffle`` else ``None``). Both
        volumes of a swapped pair are present.
    """
    faults = dict(faults or {})
    unknown = set(faults) - set(FAULT_TYPES)
    if unknown:
        raise ValueError(f"unknown fault types {sorted(unknown)}; known: {list(FAULT_TYPES)}.")
    plan: dict[int, tuple[str, int | None]] = {}
    spec = {k: (parse_fault_value(v) if isinstance(v, str) else v) for k, v in faults.items()}

    def _assign(v, kind):
        if kind == "shuffle":
            plan[v] = ("shuffle", v + 1)
            plan[v + 1] = ("shuffle", v)
        else:
            plan[v] = (kind, None)

    for kind in FAULT_TYPES:
        value = spec.get(kind)
        if value is None or np.isscalar(value):
            continue
        for v in sorted({int(x) for x in value}):
            if not 1 <= v <= n_volumes:
                raise ValueError(f"{kind}: volume {v} is outside 1..{n_volumes}.")
            if v in plan:
                raise ValueError(f"volume {v} has two faults ({plan[v][0]} and {kind}).")
            if kind == "shuffle":
                if v == n_volumes:
                    raise ValueError(f"shuffle: volume {v} is the last one; nothing to swap.")
                if v + 1 in plan:
                    raise ValueError(f"shuffle: volume {v + 1}, the partner of {v}, already "
                                     f"has a fault ({plan[v + 1][0]}).")
            _assign(v, kind)
    rng = np.random.default_rng(seed)
    for kind in FAULT_TYPES:
        value = spec.get(kind)
        if value is None or not np.isscalar(value):
            continue
        rate = float(value)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{kind}: a rate must lie in [0, 1), got {rate!r}.")
        draws = rng.random(n_volumes)
        for v in range(1, n_volumes + 1):
            if draws[v - 1] >= rate or v in plan:
                continue
            if kind == "shuffle" and (v == n_volumes or v + 1 in plan):
                continue
            _assign(v, kind)
    return dict(sorted(plan.items()))


def corrupt_bytes(content: bytes, mode: str, rng: np.random.Generator, kind: str,
             header_bytes: int = 0) -> bytes:
    if mode == "random":
        return rng.bytes(len(content))
    out = bytearray(content)
    if kind == "tcp":  # magic and length kept, JSON header garbled
        lo, hi = 8, header_bytes
    elif kind == "nifti":
        lo, hi = 0, min(_NIFTI_HEADER_BYTES, len(out))
    else:  # DICOM: 'DICM' magic and the file meta group
        lo, hi = _DICOM_META_START, min(_DICOM_META_START + 256, len(out))
    out[lo:hi] = rng.bytes(hi - lo)
    if kind == "dicom" and hi - lo >= 4 and out[lo:lo + 4] == b"DICM":
        out[lo:lo + 4] = b"XXXX"  # pragma: no cover - astronomically unlikely
    return bytes(out)

