"""Where the real scanner data live (../shared/data from the project root) and dcm2niix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parents[2].parent / "shared" / "data"
PYNEAL = DATA / "pyneal"
SIEMENS = PYNEAL / "Siemens_env" / "funcData"
GE = PYNEAL / "GE_env" / "funcData" / "s1925"
PHILIPS = PYNEAL / "Philips_env" / "funcData" / "0001"
TEST_SERIES = PYNEAL / "testSeries.nii.gz"


def need(path: Path) -> Path:
    """Return ``path``, or skip the test when the shared data are not on this machine."""
    if not path.exists():
        pytest.skip(f"real scanner data not found at {path} (see shared/data/README.md)")
    return path


def siemens_files() -> list[Path]:
    return sorted(need(SIEMENS).glob("*.dcm"))


def ge_files() -> list[Path]:
    """The 54 GE slice files in InstanceNumber order (i.e. by the trailing number)."""
    return sorted(need(GE).iterdir(), key=lambda p: int(p.name.rsplit(".", 1)[-1]))


def philips_pars() -> list[Path]:
    return sorted(need(PHILIPS).glob("*.par"))


def dcm2niix(folder: Path, out: Path) -> Path:
    """Convert ``folder`` with dcm2niix into ``out``; return the single NIfTI it writes."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-z", "n", "-b", "n", "-f", "%s_%r", "-o", str(out), str(folder)],
                   check=True, capture_output=True, timeout=120)
    found = sorted(out.glob("*.nii"))
    assert len(found) == 1, f"dcm2niix wrote {found}"
    return found[0]


def canonical(data: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, np.float32), affine))
    return np.asarray(img.dataobj), img.affine
