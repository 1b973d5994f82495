"""Write a NIfTI run as a modern scanner exports it: enhanced multi-frame or classic DICOM.

* :class:`EnhancedDicomSource`: one Enhanced MR Image Storage file per volume, as Siemens XA
  (XA10-XA61) writes them: ``NumberOfFrames`` = slices, the geometry, scaling and frame times
  in the shared and per-frame functional groups, the dimension index Stack ID / In-Stack
  Position / Temporal Position. File ``<series:04d>_<volume:05d>.dcm``.
* :class:`ClassicDicomSource`: one MR Image Storage file per slice, as Siemens XA exports in
  interoperability mode: no ImagesInAcquisition, ``ImageType`` ending in ``MFSPLIT``, every
  volume its own series (SeriesNumber = 1000 x series + volume, a new SeriesInstanceUID),
  AcquisitionNumber = volume, InstanceNumber = slice. File
  ``<series:04d>_<volume:05d>_<slice:03d>.dcm``.

Both play through :func:`simulator.stream` like a NIfTI source (same clock, faults,
manifest)::

    stream(EnhancedDicomSource("subject/bold.nii.gz"), "export", speed=10)

Voxel values are stored as uint16 with one RescaleSlope / RescaleIntercept per run, so a
reader gets the source values back to within half a slope step; slice ``k`` is acquired at
``k * TR / slices`` (sequential ascending), written as frame or AcquisitionTime.
The layout is the inverse of dcm2niix's (column index = ``i``, rows run down ``j``), so that
a reader following dcm2niix returns the source grid.
"""

from __future__ import annotations

import datetime as _dt
import io
from pathlib import Path

import numpy as np

from .sources import NiftiSource

__all__ = ["ClassicDicomSource", "EnhancedDicomSource", "dicom_geometry"]

_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
_MR = "1.2.840.10008.5.1.4.1.1.4"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_T0 = _dt.datetime(2026, 1, 1, 10, 0, 0)  # acquisition start of the simulated run


def dicom_geometry(affine: np.ndarray, shape: tuple[int, int, int]) -> dict:
    """DICOM geometry of a volume laid out like dcm2niix.

    Row/column cosines, pixel spacing, the ImagePositionPatient of each slice (LPS mm) and the
    slice spacing.
    """
    a = _LPS @ np.asarray(affine, dtype=np.float64)
    n_rows = shape[1]
    col_step = a[:3, 0]  # next column (pixel index c = i)
    row_step = -a[:3, 1]  # next row (r = n_rows - 1 - j)
    spacing_c, spacing_r = np.linalg.norm(col_step), np.linalg.norm(row_step)
    ipp = [a[:3, :] @ np.array([0.0, n_rows - 1.0, k, 1.0]) for k in range(shape[2])]
    return {"iop": np.concatenate([col_step / spacing_c, row_step / spacing_r]),
            "pixel_spacing": [float(spacing_r), float(spacing_c)], "ipp": ipp,
            "slice_spacing": float(np.linalg.norm(a[:3, 2]))}


def _ds_str(values) -> list[str]:
    return [f"{float(v):.6f}" for v in values]


class _DicomWriterSource(NiftiSource):
    """Shared parts: scaling, UIDs, common attributes."""

    kind = "dicom"

    def __init__(self, path: str | Path, *, series_number: int = 8,
                 manufacturer: str = "SIEMENS") -> None:
        super().__init__(path)
        from pydicom.uid import generate_uid

        self.series_number = int(series_number)
        self.manufacturer = manufacturer
        key = str(Path(self.path).resolve())
        self.study_uid = generate_uid(entropy_srcs=[key, "study"])
        self.series_uid = generate_uid(entropy_srcs=[key, "series"])
        self.frame_uid = generate_uid(entropy_srcs=[key, "frame"])
        self.geometry = dicom_geometry(self.affine, self.shape)
        self._scale: tuple[float, float] | None = None

    def _scaling(self) -> tuple[float, float]:
        if self._scale is None:
            self.volume(0)
            lo, hi = float(self._data.min()), float(self._data.max())
            slope = (hi - lo) / 65535.0 if hi > lo else 1.0
            self._scale = (slope, lo)
        return self._scale

    def _pixels(self, volume: int) -> np.ndarray:
        """(slices, rows, columns) uint16 of output volume ``volume`` (1-based)."""
        slope, intercept = self._scaling()
        data = self.volume((volume - 1) % self.n_volumes)
        stored = np.clip(np.rint((data - intercept) / slope), 0, 65535).astype("<u2")
        return np.ascontiguousarray(stored[:, ::-1, :].transpose(2, 1, 0))

    def _base(self, sop_class: str, sop_instance: str):
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_instance
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
        ds.Modality, ds.Manufacturer = "MR", self.manufacturer
        ds.ManufacturerModelName = "rtfb simulator"
        ds.PatientName, ds.PatientID = "SIMULATED^SUBJECT", "SIM0001"
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = self.study_uid, self.frame_uid
        ds.MagneticFieldStrength = "3"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = self.shape[1], self.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        return ds

    def _slice_times(self, tr: float) -> np.ndarray:
        return np.arange(self.shape[2]) * (float(tr) / self.shape[2])

    @staticmethod
    def _bytes(ds) -> bytes:
        import pydicom

        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue()


class EnhancedDicomSource(_DicomWriterSource):
    """A NIfTI run written as Siemens-XA-like enhanced DICOM, one file per volume."""

    mosaic = True  # one file per volume (as the manifest calls it)
    files_per_volume = 1

    def names(self, volume: int) -> list[str]:  # noqa: D102
        return [f"{self.series_number:04d}_{volume:05d}.dcm"]

    def render_files(self, volume: int, tr: float) -> list[tuple[str, bytes]]:
        """The file of output volume ``volume`` (1-based)."""
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence
        from pydicom.uid import generate_uid

        geo = self.geometry
        slope, intercept = self._scaling()
        uid = generate_uid(entropy_srcs=[self.series_uid, str(volume)])
        ds = self._base(_ENHANCED_MR, uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "FMRI", "NONE"]
        ds.SeriesInstanceUID, ds.SeriesNumber = self.series_uid, self.series_number
        ds.AcquisitionNumber = ds.InstanceNumber = volume
        start = _T0 + _dt.timedelta(seconds=(volume - 1) * float(tr))
        ds.AcquisitionDateTime = start.strftime("%Y%m%d%H%M%S.%f")
        ds.NumberOfFrames = self.shape[2]
        dims = []
        # StackID, InStackPositionNumber, TemporalPositionIndex
        for tag in (0x00209056, 0x00209057, 0x00209128):
            item = Dataset()
            item.DimensionIndexPointer = tag
            item.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
            dims.append(item)
        ds.DimensionIndexSequence = Sequence(dims)
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = _ds_str(geo["pixel_spacing"])
        measures.SliceThickness = f"{geo['slice_spacing']:.6f}"
        orientation = Dataset()
        orientation.ImageOrientationPatient = _ds_str(geo["iop"])
        timing = Dataset()
        timing.RepetitionTime = float(tr) * 1000.0
        timing.FlipAngle = 70.0
        echo = Dataset()
        echo.EffectiveEchoTime = 30.0
        transform = Dataset()
        transform.RescaleSlope = f"{slope:.10g}"
        transform.RescaleIntercept = f"{intercept:.10g}"
        transform.RescaleType = "US"
        shared.PixelMeasuresSequence = Sequence([measures])
        shared.PlaneOrientationSequence = Sequence([orientation])
        shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
        shared.MREchoSequence = Sequence([echo])
        shared.PixelValueTransformationSequence = Sequence([transform])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        frames = []
        for k, t in enumerate(self._slice_times(tr)):
            frame = Dataset()
            content = Dataset()
            content.DimensionIndexValues = [1, k + 1, 1]
            content.StackID, content.InStackPositionNumber = "1", k + 1
            content.TemporalPositionIndex = 1
            stamp = (start + _dt.timedelta(seconds=float(t))).strftime("%Y%m%d%H%M%S.%f")
            content.FrameAcquisitionDateTime = content.FrameReferenceDateTime = stamp
            position = Dataset()
            position.ImagePositionPatient = _ds_str(geo["ipp"][k])
            frame.FrameContentSequence = Sequence([content])
            frame.PlanePositionSequence = Sequence([position])
            frames.append(frame)
        ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
        ds.PixelData = self._pixels(volume).tobytes()
        return [(self.names(volume)[0], self._bytes(ds))]


class ClassicDicomSource(_DicomWriterSource):
    """A NIfTI run written as Siemens-XA-interoperability classic slices."""

    mosaic = False

    @property
    def files_per_volume(self) -> int:  # noqa: D102
        return self.shape[2]

    def names(self, volume: int) -> list[str]:  # noqa: D102
        return [f"{self.series_number:04d}_{volume:05d}_{k + 1:03d}.dcm"
                for k in range(self.shape[2])]

    def render_files(self, volume: int, tr: float) -> list[tuple[str, bytes]]:
        """The slice files of output volume ``volume`` (1-based), in acquisition order."""
        from pydicom.uid import generate_uid

        geo = self.geometry
        slope, intercept = self._scaling()
        pixels = self._pixels(volume)
        series_uid = generate_uid(entropy_srcs=[self.series_uid, str(volume)])
        start = _T0 + _dt.timedelta(seconds=(volume - 1) * float(tr))
        files = []
        for k, (name, t) in enumerate(zip(self.names(volume), self._slice_times(tr),
                                          strict=True)):
            uid = generate_uid(entropy_srcs=[series_uid, str(k)])
            ds = self._base(_MR, uid)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MFSPLIT"]
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = 1000 * self.series_number + volume
            ds.AcquisitionNumber, ds.InstanceNumber = volume, k + 1
            ds.AcquisitionTime = (start + _dt.timedelta(seconds=float(t))).strftime(
                "%H%M%S.%f")
            ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = float(tr) * 1000.0, 30.0, 70.0
            ds.SliceThickness = ds.SpacingBetweenSlices = f"{geo['slice_spacing']:.6f}"
            ds.PixelSpacing = _ds_str(geo["pixel_spacing"])
            ds.ImageOrientationPatient = _ds_str(geo["iop"])
            ds.ImagePositionPatient = _ds_str(geo["ipp"][k])
            ds.RescaleSlope = f"{slope:.10g}"
            ds.RescaleIntercept = f"{intercept:.10g}"
            ds.PixelData = pixels[k].tobytes()
            files.append((name, self._bytes(ds)))
        return files
