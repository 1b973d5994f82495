"""The unit that flows through rtfb: one acquired volume and its non-identifying metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

#: Header fields a Volume may carry. Anything else (patient name, ID, birth date, ...)
#: is never copied out of the source file.
ALLOWED_HEADER_FIELDS = frozenset({
    "Manufacturer", "ManufacturerModelName", "MagneticFieldStrength", "SeriesNumber",
    "AcquisitionNumber", "InstanceNumber", "EchoTime", "RepetitionTime", "FlipAngle",
    "SliceThickness", "SpacingBetweenSlices", "PixelSpacing", "SliceTiming",
    "NumberOfSlices", "MosaicTiles", "PhaseEncodingDirection", "format",
    "SeriesUIDHash", "StudyUIDHash",
})


def _freeze_header(header: Mapping[str, Any] | None) -> Mapping[str, Any]:
    header = dict(header or {})
    unknown = set(header) - ALLOWED_HEADER_FIELDS
    if unknown:
        raise ValueError(f"header fields {sorted(unknown)} are not allowed in a Volume; "
                         f"allowed: {sorted(ALLOWED_HEADER_FIELDS)}.")
    return MappingProxyType(header)


@dataclass(frozen=True)
class Volume:
    """One 3D volume of a run.

    Parameters
    ----------
    data : numpy.ndarray, shape (X, Y, Z), float32
        Voxel values, read-only.
    affine : numpy.ndarray, shape (4, 4)
        Voxel to RAS+ millimetre transform (as nibabel and dcm2niix give it).
    index : int
        0-based volume number in the run (DICOM acquisition/instance number - 1).
    acquisition_time : float | None
        Acquisition time in seconds after midnight (DICOM AcquisitionTime), if known.
    tr : float | None
        Repetition time in seconds, if known.
    source : str
        File name (without directory) or ``"tcp"``, for the session record.
    series : str | None
        Series identifier used to ignore volumes of another series.
    header : Mapping
        Non-identifying header fields (keys from ``ALLOWED_HEADER_FIELDS``).
    """

    data: np.ndarray
    affine: np.ndarray
    index: int
    acquisition_time: float | None = None
    tr: float | None = None
    source: str = ""
    series: str | None = None
    header: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data, dtype=np.float32)
        if data.ndim != 3:
            raise ValueError(f"Volume data must be 3D, got shape {data.shape} "
                             f"(source {self.source!r}).")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise ValueError(f"Volume affine must be a finite 4x4 array, got shape "
                             f"{affine.shape} (source {self.source!r}).")
        if int(self.index) < 0:
            raise ValueError(f"Volume index must be >= 0, got {self.index}.")
        data = data.view()  # read-only view: the caller's array keeps its flags
        data.flags.writeable = False
        affine = affine.copy()
        affine.flags.writeable = False
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "index", int(self.index))
        object.__setattr__(self, "header", _freeze_header(self.header))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape."""
        return self.data.shape
