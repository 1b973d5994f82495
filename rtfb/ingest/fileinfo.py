"""What a cheap header-only look at one exported file tells: :class:`FileInfo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Values of :attr:`FileInfo.kind`.
KINDS = ("volume", "slice")


@dataclass(frozen=True)
class FileInfo:
    """Header facts about one file, enough to group and order an export folder.

    Returned by :func:`rtfb.ingest.read.probe`; no pixel data is read and no patient data is
    kept.

    Parameters
    ----------
    path : pathlib.Path
        File to pass to the reader: :func:`~rtfb.ingest.read.read_volume` for a ``"volume"``,
        :func:`~rtfb.ingest.read.read_dicom_slices` (with the other parts) for a ``"slice"``.
        For a PAR/REC pair this is always the ``.par`` file, whichever of the two was probed.
    kind : {"volume", "slice"}
        ``"volume"``: the file holds whole volume(s) (mosaic DICOM, NIfTI, PAR/REC).
        ``"slice"``: the file holds one slice of a volume (GE-style single-slice DICOM).
    series : str | None
        Non-identifying series key (e.g. the DICOM SeriesNumber, or a short hash); files of one
        run share it. ``None`` if the format has none.
    index : int
        0-based number of the (first) volume in the run; the rule per format is documented in
        :func:`rtfb.ingest.read.probe`.
    n_parts : int
        Number of slice files that make up the volume (1 for whole-volume files); 0 for a
        slice of a classic series whose header does not say how many slices a volume has
        (the watcher learns it from the first complete volume).
    part : int
        1-based slice number of this file within its volume (1 for whole-volume files). It
        only tells the parts apart: slices are stacked by position, not by this number.
        When ``n_parts`` is 0 it may be any number unique within the volume.
    n_volumes : int
        Number of volumes the file holds (> 1 for a 4D NIfTI or a multi-dynamic PAR/REC,
        which are read with :func:`~rtfb.ingest.read.iter_volumes`).
    position : float | None
        For a slice: its position along the slice normal (mm), else None.
    study_uid, series_uid, series_number : str | None
        Identity fields of formats that have them (DICOM StudyInstanceUID,
        SeriesInstanceUID, SeriesNumber), compared by the series lock
        (:mod:`rtfb.ingest.series_lock`); never written to logs or the record.
    """

    path: Path
    kind: str
    series: str | None
    index: int
    n_parts: int = 1
    part: int = 1
    n_volumes: int = 1
    position: float | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    series_number: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.kind not in KINDS:
            raise ValueError(f"FileInfo.kind must be one of {KINDS}, got {self.kind!r}.")
        for name, minimum in (("index", 0), ("n_parts", 0), ("part", 1), ("n_volumes", 1)):
            value = getattr(self, name)
            if int(value) != value or value < minimum:
                raise ValueError(f"FileInfo.{name} must be an integer >= {minimum}, got "
                                 f"{value!r} ({self.path.name}).")
            object.__setattr__(self, name, int(value))
        if self.n_parts and self.part > self.n_parts:
            raise ValueError(f"FileInfo.part {self.part} > n_parts {self.n_parts} "
                             f"({self.path.name}).")
