"""The dcm_qa excerpts (../shared/data/dcm_qa): gunzipped copies and dcm2niix references."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from ._data import DATA, need

DCM_QA = DATA / "dcm_qa"


def dicom_copies(folder: str, out: Path) -> list[Path]:
    """The DICOM files of ``dcm_qa/<folder>/dicom`` copied into ``out``, ``.gz`` unzipped.

    Sorted by name; ``out`` is created. Skips the test if the data are absent.
    """
    src = need(DCM_QA / folder / "dicom")
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in sorted(src.iterdir()):
        if path.name.endswith(".gz"):
            target = out / path.name[:-3]
            with gzip.open(path, "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            target = out / path.name
            shutil.copyfile(path, target)
        copies.append(target)
    return copies


def reference(folder: str, stem: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(4D data, affine, JSON sidecar) of dcm2niix's reference for ``folder``."""
    import json

    ref = need(DCM_QA / folder / "ref")
    niis = sorted(ref.glob(f"{stem or '*'}.nii.gz"))
    assert niis, f"no reference NIfTI in {ref}"
    img = nib.load(niis[0])
    data = img.get_fdata()
    if data.ndim == 3:
        data = data[..., None]
    sidecar = json.loads(niis[0].with_name(niis[0].name[:-7] + ".json").read_text())
    return data, img.affine, sidecar
