"""Series lock: which series a live session follows, and what its first volume fixed.

A session follows one series. :class:`SeriesIdentity` gathers the identity fields a file or
frame exposes (``StudyInstanceUID``, ``SeriesInstanceUID``, ``SeriesNumber`` where the format
has them, else the reader's series key). :class:`IdentityLock` is used by the acquisition
thread (folder watcher, TCP receiver): the first accepted volume fixes the identity (or the
operator names the series, ``--series NUMBER|UID``) and every later file that disagrees is
refused with the name of the field. :class:`GeometryLock` is used by the processing thread:
the first volume accepted as the reference fixes shape, voxel size, orientation and TR, and a
later volume that disagrees is rejected, again naming the field.

Identity values are compared, never logged (UIDs can identify a study); messages name the
field only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GeometryLock", "IdentityLock", "SeriesIdentity"]

#: Identity fields in the order they are compared: (attribute, name used in messages)
_FIELDS = (("study_uid", "StudyInstanceUID"), ("series_uid", "SeriesInstanceUID"),
           ("series_number", "SeriesNumber"), ("key", "series"))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class SeriesIdentity:
    """Identity fields of one file or frame (None where the format has none).

    Parameters
    ----------
    study_uid, series_uid : str | None
        DICOM StudyInstanceUID and SeriesInstanceUID.
    series_number : str | None
        DICOM SeriesNumber (as text).
    key : str | None
        The reader's series key (``FileInfo.series`` / ``Volume.series``): for formats
        without UIDs (NIfTI, PAR/REC: a hash of the file name stem; TCP: the ``series``
        field).
    """

    study_uid: str | None = None
    series_uid: str | None = None
    series_number: str | None = None
    key: str | None = None

    @classmethod
    def of(cls, obj: Any) -> SeriesIdentity:
        """Identity of a :class:`~rtfb.ingest.fileinfo.FileInfo` or a Volume.

        Reads the attributes ``study_uid``, ``series_uid``, ``series_number`` and ``series``
        when present (readers that do not expose a field leave it None), and the
        ``SeriesNumber`` of a Volume's header.
        """
        if isinstance(obj, SeriesIdentity):
            return obj
        header = getattr(obj, "header", None) or {}
        number = getattr(obj, "series_number", None)
        if number is None and hasattr(header, "get"):
            number = header.get("SeriesNumber")
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        return cls(study_uid=_text(getattr(obj, "study_uid", None)),
                   series_uid=_text(getattr(obj, "series_uid", None)),
                   series_number=_text(number), key=_text(getattr(obj, "series", None)))

    def matches(self, request: str) -> bool:
        """Whether the operator's ``--series NUMBER|UID`` names this series."""
        request = str(request).strip()
        if not request:
            return False
        if request in (self.series_uid, self.key):
            return True
        if self.series_number is not None:
            try:
                return int(request) == int(self.series_number)
            except ValueError:
                return request == self.series_number
        return False

    def differs(self, other: SeriesIdentity) -> str | None:
        """Name of the first field both identities have and that differs, else None."""
        for attr, name in _FIELDS:
            a, b = getattr(self, attr), getattr(other, attr)
            if a is not None and b is not None and a != b:
                return name
        return None


class IdentityLock:
    """The series an acquisition thread follows.

    Parameters
    ----------
    series : str | None
        ``NUMBER`` or ``UID`` named by the operator; None: the first accepted volume's.

    Notes
    -----
    :meth:`check` before reading a file (cheap: probe fields), :meth:`accept` once its
    volume was accepted in order (only then is the identity fixed, so a stray file that
    is refused for another reason never decides which series is followed).
    """

    def __init__(self, series: str | None = None) -> None:
        self.series = None if series is None else str(series)
        self.identity_: SeriesIdentity | None = None
        self.field_: str | None = None  # field named by the last refusal

    def check(self, obj: Any) -> str | None:
        """None if ``obj`` may belong to the followed series, else the reason (field named)."""
        ident = SeriesIdentity.of(obj)
        self.field_ = None
        if self.identity_ is not None:
            field = self.identity_.differs(ident)
            if field is not None:
                self.field_ = field
                return f"belongs to another series ({field} differs from the series followed)"
            return None
        if self.series is not None and not ident.matches(self.series):
            self.field_ = "series"
            return f"belongs to another series than the one named by --series {self.series}"
        return None

    def accept(self, obj: Any) -> bool:
        """Fix the identity from the first accepted volume; True when it was fixed now."""
        if self.identity_ is not None:
            return False
        self.identity_ = SeriesIdentity.of(obj)
        return True


def _orientation(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rot = np.asarray(affine, dtype=float)[:3, :3]
    sizes = np.linalg.norm(rot, axis=0)
    return sizes, rot / np.where(sizes > 0, sizes, 1.0)


class GeometryLock:
    """Shape, voxel size, orientation and TR fixed by the reference volume.

    Parameters
    ----------
    tr : float | None
        The protocol's TR in seconds: a volume stating another TR is rejected.
    size_tol : float
        Relative tolerance on voxel sizes and TR.
    angle_tol : float
        Largest change of an axis direction (cosine distance ``1 - cos``; the default
        ``0.01`` is about 8 degrees: prospective motion correction rotates the grid by a
        few degrees at most, a wrongly oriented series by 90).
    """

    def __init__(self, tr: float | None = None, *, size_tol: float = 1e-3,
                 angle_tol: float = 0.01) -> None:
        self.tr = tr
        self.size_tol = size_tol
        self.angle_tol = angle_tol
        self.shape_: tuple[int, ...] | None = None
        self.voxel_size_: np.ndarray | None = None
        self.axes_: np.ndarray | None = None
        self.tr_: float | None = None

    @property
    def fixed(self) -> bool:
        """Whether a reference fixed the geometry."""
        return self.shape_ is not None

    def fix(self, volume: Any) -> None:
        """Fix the geometry (and TR, when the volume states one) from ``volume``."""
        self.shape_ = tuple(int(s) for s in volume.shape)
        self.voxel_size_, self.axes_ = _orientation(volume.affine)
        tr = getattr(volume, "tr", None)
        self.tr_ = float(tr) if tr is not None and math.isfinite(tr) and tr > 0 else None

    def check(self, volume: Any) -> str | None:
        """None if ``volume`` agrees (or nothing is fixed yet), else ``"field: got vs fixed"``."""
        tr = getattr(volume, "tr", None)
        expected_tr = self.tr_ if self.tr_ is not None else self.tr
        if tr is not None and expected_tr is not None and math.isfinite(tr) and \
                abs(tr - expected_tr) > self.size_tol * expected_tr:
            return f"TR: {tr:g} s, expected {expected_tr:g} s"
        if not self.fixed:
            return None
        shape = tuple(int(s) for s in volume.shape)
        if shape != self.shape_:
            return f"shape: {shape}, expected {self.shape_}"
        sizes, axes = _orientation(volume.affine)
        if not np.allclose(sizes, self.voxel_size_, rtol=self.size_tol, atol=0):
            return (f"voxel size: {np.round(sizes, 3).tolist()} mm, expected "
                    f"{np.round(self.voxel_size_, 3).tolist()} mm")
        cos = np.sum(axes * self.axes_, axis=0)
        if np.any(1.0 - cos > self.angle_tol):
            return "orientation: the voxel axes point elsewhere than the reference's"
        return None
