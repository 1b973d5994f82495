"""Siemens mosaics (one file per volume, the slices tiled in one image, as the real-time export
writes them): pydicom reads the file, :mod:`nibabel.nicom` (``csareader``, ``MosaicWrapper``)
reads the Siemens CSA header, un-tiles the slices and gives the slice count, the slice normal and
the corrected position of the first voxel.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ..exceptions import IngestError
from ._dicom_common import (
    _File,
    _header,
    _orientation,
    _phase_encoding,
    _positive_int,
    _scaled,
    _series_key,
    _tm_seconds,
    _to_volume_layout,
    _tr_seconds,
)
from ._files import captured_warnings, describe_error, source_name
from ._timing import checked_slice_timing
from .volume import Volume

with warnings.catch_warnings():  # nibabel.nicom warns on import that it is experimental
    warnings.simplefilter("ignore")
    from nibabel.nicom import dicomwrappers

logger = logging.getLogger("rtfb.ingest")

def _mosaic_index(ds: Dataset, name: str) -> int:
    """0-based volume index of a mosaic: AcquisitionNumber - 1 (else InstanceNumber - 1)."""
    for keyword in ("AcquisitionNumber", "InstanceNumber"):
        value = _positive_int(ds, keyword)
        if value is not None:
            return value - 1
    raise IngestError(f"{name}: no AcquisitionNumber or InstanceNumber: cannot tell the "
                      f"volume number.")


def _mosaic_wrapper(f: _File, csa: dict) -> Any:
    try:
        with captured_warnings(f.name):
            return dicomwrappers.MosaicWrapper(f.ds, csa)
    except Exception as err:  # noqa: BLE001
        raise IngestError(f"{f.name}: unreadable Siemens mosaic ({describe_error(err)}).") \
            from None


def _mosaic_volume(f: _File, csa: dict) -> Volume:
    name, ds = f.name, f.ds
    wrapper = _mosaic_wrapper(f, csa)
    try:
        with captured_warnings(name):
            raw = wrapper.get_unscaled_data()
            affine_lps = np.asarray(wrapper.affine, dtype=np.float64)
            n_slices = int(wrapper.n_mosaic)
    except Exception as err:  # noqa: BLE001
        raise IngestError(f"{name}: cannot un-tile the Siemens mosaic "
                          f"({describe_error(err)}).") from None
    if raw.ndim != 3 or raw.shape[2] != n_slices:
        raise IngestError(f"{name}: mosaic un-tiled to shape {raw.shape}, expected "
                          f"{n_slices} slices.")
    _, _, normal = _orientation(ds, name)
    data, affine, reversed_ = _to_volume_layout(_scaled(ds, raw), affine_lps, normal)
    header = _header(ds, "dicom-mosaic")
    header["NumberOfSlices"] = n_slices
    header["MosaicTiles"] = int(wrapper.mosaic_size)
    times = csa.get("tags", {}).get("MosaicRefAcqTimes", {}).get("items", [])
    if len(times) == n_slices:
        timing = checked_slice_timing(np.asarray(times, dtype=float) / 1000.0,  # ms -> s
                                      _tr_seconds(ds), name)
        if timing is not None:
            header["SliceTiming"] = timing[::-1] if reversed_ else timing
    phase = _phase_encoding(ds, csa)
    if phase is not None:
        header["PhaseEncodingDirection"] = phase
    index = _mosaic_index(ds, name)
    logger.debug("%s: Siemens mosaic, volume %d, %d slices, shape %s", name, index, n_slices,
                 data.shape)
    return Volume(data=data, affine=affine, index=index,
                  acquisition_time=_tm_seconds(ds.get("AcquisitionTime")), tr=_tr_seconds(ds),
                  source=source_name(name), series=_series_key(ds), header=header)


