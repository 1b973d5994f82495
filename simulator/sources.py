"""Sources the simulator plays: a 4D NIfTI run, or a DICOM series replayed file by file.

Each source renders output volume ``k`` as a :class:`Rendered` (files to write into the
export folder, or the arguments of one TCP frame); see :mod:`simulator.stream`.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DicomSource", "NiftiSource", "Rendered", "chunk_bounds", "load_source"]

_SIEMENS_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.dcm$", re.IGNORECASE)
_GE_NAME = re.compile(r"^i(\d+)\.MRDC\.(\d+)$")
_ABSENT = object()


# ----------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------
@dataclass
class Rendered:
    """One output volume, ready to send: files (name, bytes) or one TCP frame."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    frame: dict | None = None  # TCP: arguments of encode_frame (framed when sent)


class NiftiSource:
    """A 4D NIfTI run (a file, or a ``write_subject`` folder holding ``bold.nii.gz``)."""

    kind = "nifti"

    def __init__(self, path: str | Path) -> None:
        import nibabel as nib

        path = Path(path)
        if path.is_dir():
            path = path / "bold.nii.gz"
        self.path = path
        img = nib.load(str(path))
        if len(img.shape) != 4:
            raise ValueError(f"{path} is not a 4D NIfTI image (shape {img.shape}).")
        self._img = img
        self.affine = np.asarray(img.affine, dtype=np.float64)
        self.shape = tuple(int(s) for s in img.shape[:3])
        self.n_volumes = int(img.shape[3])
        self._data: np.ndarray | None = None
        zooms = img.header.get_zooms()
        tr = float(zooms[3]) if len(zooms) > 3 else 0.0
        unit = img.header.get_xyzt_units()[1]
        tr *= {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
        self.tr = tr if np.isfinite(tr) and tr > 0 else None

    def volume(self, k: int) -> np.ndarray:
        """Source volume ``k`` (0-based) as float32, shape (X, Y, Z)."""
        if self._data is None:  # load once: the whole run is read anyway when looping
            self._data = np.asarray(self._img.get_fdata(dtype=np.float32), dtype=np.float32)
        return self._data[..., k]

    files_per_volume = 1

    @staticmethod
    def names(volume: int) -> list[str]:
        """File name of output volume ``volume`` (1-based): ``["vol_NNNNN.nii"]``."""
        return [f"vol_{volume:05d}.nii"]

    def render_files(self, volume: int, tr: float) -> list[tuple[str, bytes]]:
        """Files of output volume ``volume`` (1-based): ``[("vol_NNNNN.nii", bytes)]``."""
        import nibabel as nib

        data = np.ascontiguousarray(self.volume((volume - 1) % self.n_volumes))
        img = nib.Nifti1Image(data, self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        img.header.set_data_dtype(np.float32)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = float(tr)
        return [(self.names(volume)[0], img.to_bytes())]

    def render_frame(self, volume: int, tr: float, acquisition_time: float | None,
                     series: str | None) -> dict:
        """Arguments of :func:`encode_frame` for output volume ``volume`` (1-based)."""
        data = self.volume((volume - 1) % self.n_volumes)
        return dict(data=data, affine=self.affine, index=volume - 1, tr=tr,
                    acquisition_time=acquisition_time, series=series)


def _dicom_files(folder: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(str(path))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # masks, notes, ... next to the images
        if "PixelData" in ds:
            out.append((path, ds))
    return out


def _shift_tm(value, seconds: float):
    """Add ``seconds`` to a DICOM TM string (``HHMMSS.ffffff``); empty stays empty."""
    text = str(value or "").strip()
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not m:
        return value
    total = (int(m.group(1)) * 3600 + int(m.group(2) or 0) * 60 + int(m.group(3) or 0)
             + float(m.group(4) or 0.0) + seconds) % 86400.0
    hh, rest = divmod(total, 3600.0)
    mm, ss = divmod(rest, 60.0)
    return f"{int(hh):02d}{int(mm):02d}{ss:09.6f}"


class DicomSource:
    """A recorded DICOM series: Siemens real-time mosaics (one file per volume) or slices.

    Files are ordered by (AcquisitionNumber, InstanceNumber); the number of slices per
    volume is the number of distinct ImagePositionPatient values (1 for mosaics).
    """

    kind = "dicom"

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder)
        found = _dicom_files(self.path)
        if not found:
            raise ValueError(f"no DICOM image file in {self.path}.")
        series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in found}
        if len(series) > 1:
            raise ValueError(f"{self.path} holds {len(series)} series "
                             f"({sorted(series)}); replay one series per folder.")

        def _key(item):
            ds = item[1]
            return (int(ds.get("AcquisitionNumber") or 0), int(ds.get("InstanceNumber") or 0),
                    item[0].name)

        found.sort(key=_key)
        positions = {tuple(np.round(np.asarray(ds.get("ImagePositionPatient", [0, 0, 0]),
                                               dtype=float), 3)) for _, ds in found}
        n_slices = len(positions)
        if len(found) % n_slices:
            raise ValueError(f"{self.path}: {len(found)} files are not a whole number of "
                             f"volumes of {n_slices} slices.")
        self.n_slices = n_slices
        self.mosaic = n_slices == 1
        self.n_volumes = len(found) // n_slices
        self._paths = [p for p, _ in found]
        self._datasets = [ds for _, ds in found]
        first = self._datasets[0]
        self.series_number = int(first.get("SeriesNumber") or 1)
        self.series_uid = str(first.get("SeriesInstanceUID", "")) or None
        tr_ms = first.get("RepetitionTime")
        self.tr = float(tr_ms) / 1000.0 if tr_ms not in (None, "") and float(tr_ms) > 0 \
            else None
        acq = [int(ds.get("AcquisitionNumber") or 0) for ds in self._datasets]
        per_volume = [acq[v * n_slices] for v in range(self.n_volumes)]
        self.numbers_acquisitions = self.mosaic or (
            len(set(per_volume)) == self.n_volumes and self.n_volumes > 1)
        self._instance0 = int(first.get("InstanceNumber") or 1)
        m = _SIEMENS_NAME.match(self._paths[0].name)
        self._prefix = m.group(1) if m else "001"
        ge = [_GE_NAME.match(p.name) for p in self._paths]
        self._ge_base = None
        if not self.mosaic and all(ge):
            # i<counter>.MRDC.<instance>: counter - instance is constant in a GE export
            self._ge_base = int(ge[0].group(1)) - int(ge[0].group(2))
        self._raw: dict[int, bytes] = {}

    @property
    def files_per_volume(self) -> int:
        """Files written per volume."""
        return self.n_slices

    def _instance(self, volume: int, slice_index: int) -> int:
        if self.mosaic:
            return volume
        return self._instance0 + (volume - 1) * self.n_slices + slice_index

    def names(self, volume: int) -> list[str]:
        """File names of output volume ``volume`` (1-based), in writing order."""
        return [self._name(volume, s + 1, self._instance(volume, s))
                for s in range(self.n_slices)]

    def _name(self, volume: int, slice_: int, instance: int) -> str:
        if self.mosaic:
            return f"{self._prefix}_{self.series_number:06d}_{volume:06d}.dcm"
        if self._ge_base is not None:
            return f"i{self._ge_base + instance}.MRDC.{instance}"
        return f"{self.series_number:06d}_{volume:06d}_{slice_:04d}.dcm"

    def render_files(self, volume: int, tr: float) -> list[tuple[str, bytes]]:
        """Files of output volume ``volume`` (1-based), renumbered as a continuing run."""
        import pydicom
        from pydicom.uid import generate_uid

        src_vol = (volume - 1) % self.n_volumes
        loop = (volume - 1) // self.n_volumes
        files = []
        for s in range(self.n_slices):
            i = src_vol * self.n_slices + s
            ds = self._datasets[i]
            instance = self._instance(volume, s)
            acquisition = volume if self.numbers_acquisitions else ds.get("AcquisitionNumber")
            name = self._name(volume, s + 1, instance)
            unchanged = (loop == 0 and int(ds.get("InstanceNumber") or 0) == instance
                         and (not self.numbers_acquisitions
                              or int(ds.get("AcquisitionNumber") or 0) == volume))
            if unchanged:
                if i not in self._raw:
                    self._raw[i] = self._paths[i].read_bytes()
                files.append((name, self._raw[i]))
                continue
            # modify in place, write, restore (much faster than a deep copy)
            changes = {"InstanceNumber": instance}
            if acquisition not in (None, ""):
                changes["AcquisitionNumber"] = int(acquisition)
            meta_changes = {}
            if loop:
                uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), str(volume)])
                changes["SOPInstanceUID"] = uid
                if getattr(ds, "file_meta", None) is not None:
                    meta_changes["MediaStorageSOPInstanceUID"] = uid
                shift = loop * self.n_volumes * float(tr)
                for keyword in ("AcquisitionTime", "ContentTime"):
                    if keyword in ds and str(ds.get(keyword) or ""):
                        changes[keyword] = _shift_tm(ds.get(keyword), shift)
            saved = [(target, kw, target[kw].value if kw in target else _ABSENT)
                     for target, todo in ((ds, changes), (getattr(ds, "file_meta", None),
                                                           meta_changes))
                     for kw in todo]
            buf = io.BytesIO()
            try:
                for kw, value in changes.items():
                    setattr(ds, kw, value)
                for kw, value in meta_changes.items():
                    setattr(ds.file_meta, kw, value)
                pydicom.dcmwrite(buf, ds)
            finally:
                for target, kw, value in saved:
                    if value is _ABSENT:
                        if kw in target:
                            del target[kw]
                    else:
                        target[kw].value = value
            files.append((name, buf.getvalue()))
        return files


def load_source(source: str | Path) -> NiftiSource | DicomSource:
    """Open ``source``: a 4D NIfTI file, a ``write_subject`` folder or a DICOM folder."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source {path} does not exist.")
    if path.is_file():
        if path.name.endswith((".nii", ".nii.gz")):
            return NiftiSource(path)
        raise ValueError(f"source file {path} is not a NIfTI file (.nii/.nii.gz); for "
                         "DICOM give the folder of the series.")
    if (path / "bold.nii.gz").is_file():
        return NiftiSource(path / "bold.nii.gz")
    return DicomSource(path)



def chunk_bounds(size: int, chunks: int) -> list[int]:
    """Byte offsets cutting ``size`` bytes into ``chunks`` pieces (partial writes)."""
    return [round(size * i / chunks) for i in range(chunks + 1)]
