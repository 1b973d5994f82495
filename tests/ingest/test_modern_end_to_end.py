"""End to end: the simulator writes enhanced / classic DICOM into an export folder, the
installed ``rtfb run --watch`` ingests them; file names after a patient leave no trace."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtfb.session.record_reader import load_record
from simulator import stream
from simulator.dicom_writers import ClassicDicomSource, EnhancedDicomSource
from tests.session._protocols import alff_protocol, subject

N_VOLUMES = 24
SHAPE = (20, 18, 10)


def _rtfb() -> list[str]:
    exe = Path(sys.executable).with_name("rtfb")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "rtfb"]


def _canonical(data, affine):
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, np.float32), affine))
    return np.asarray(img.dataobj), img.affine


def _session(tmp_path, source, *, faults=None, idle=15.0):
    export, out = tmp_path / "export", tmp_path / "sessions"
    export.mkdir()
    protocol = alff_protocol(tmp_path, source.path.parent, volumes=N_VOLUMES, window=8)
    proc = subprocess.Popen(_rtfb() + ["run", str(protocol), "--watch", str(export), "--out",
                                       str(out), "--quiet", "--idle-timeout", str(idle),
                                       # the player may write before the watcher starts
                                       "--accept-existing"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    player = threading.Thread(target=stream, args=(source, export), kwargs=dict(
        speed=10.0, manifest=tmp_path / "manifest.json", faults=faults or {}))
    player.start()
    stdout, stderr = proc.communicate(timeout=300)
    player.join()
    assert proc.returncode == 0, stdout + stderr
    (session_dir,) = list(out.glob("sub-*"))
    return session_dir, stdout, stderr


@pytest.mark.parametrize("writer", [EnhancedDicomSource, ClassicDicomSource])
def test_session_ingests_simulated_modern_dicom(writer, tmp_path):
    subj = subject(tmp_path, volumes=N_VOLUMES, shape=SHAPE)
    source = writer(subj / "bold.nii.gz")
    session_dir, stdout, stderr = _session(tmp_path, source)
    record = load_record(session_dir)
    assert sorted(e["index"] for e in record.inputs) == list(range(N_VOLUMES)), \
        stdout + stderr + (session_dir / "events.jsonl").read_text()
    assert [v["index"] for v in record.volumes] == list(range(N_VOLUMES))
    assert not any("missing" in v["flags"] for v in record.volumes)
    slope, _ = source._scaling()
    for position, entry in enumerate(record.inputs):
        ours, our_affine = _canonical(record.input_volume(position), np.asarray(entry["affine"]))
        theirs, their_affine = _canonical(source.volume(entry["index"]), source.affine)
        # uint16 storage: within half a RescaleSlope step (float32 rounding on top)
        assert np.abs(ours - theirs).max() <= 0.51 * slope + 1e-4
        np.testing.assert_allclose(our_affine, their_affine, atol=1e-3)
        assert entry["tr"] == pytest.approx(2.0)
        assert entry["source"].startswith("0008_") and entry["source_hash"].startswith("file-")


PATIENT = ("QUIXDOE", "ZELJOHN")


class _NamedAfterPatient(EnhancedDicomSource):
    """Exports that name files after the patient (DOE^JOHN.MR.<study>.<series>.<image>.IMA)."""

    def names(self, volume: int) -> list[str]:
        return [f"{PATIENT[0]}^{PATIENT[1]}.MR.HEAD_STUDY.0013.{volume:04d}.2026.IMA"]


def test_patient_names_in_file_names_never_written(tmp_path):
    subj = subject(tmp_path, volumes=N_VOLUMES, shape=SHAPE, seed=1)
    source = _NamedAfterPatient(subj / "bold.nii.gz")
    # a corrupt and a truncated file: their names reach warnings and the record's events
    session_dir, stdout, stderr = _session(
        tmp_path, source, faults={"corrupt": [5], "truncate": [9]}, idle=15.0)
    report = subprocess.run(_rtfb() + ["report", str(session_dir)], capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    record = load_record(session_dir)
    received = sorted(e["index"] for e in record.inputs)
    assert 4 not in received and 8 not in received and len(received) >= N_VOLUMES - 3
    assert all(e["source"].startswith("file-") and e["source"] == e["source_hash"]
               for e in record.inputs)
    texts = {"stdout": stdout, "stderr": stderr, "report stdout": report.stdout,
             "report stderr": report.stderr}
    written = [p for p in session_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".html") for p in written)  # the report is looked at
    for path in written:
        texts[str(path)] = path.read_bytes().decode("latin-1")
    # the faulty files were reported (by their keys), so names had a way into the texts
    assert "file-" in stderr
    hits = [f"{needle} in {where}" for where, text in texts.items() for needle in PATIENT
            if needle.lower() in text.lower()]
    assert not hits, hits
    # and the grep does find them where they are: the export folder
    assert any(PATIENT[0] in p.name for p in (tmp_path / "export").iterdir())
