"""No patient data leaves ingest: not in a Volume, a FileInfo, an exception or a log line."""

from __future__ import annotations

import json
import logging
import traceback
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from rtfb.exceptions import IngestError
from rtfb.ingest.read import iter_volumes, probe, read_dicom_slices, read_volume

from ._data import ge_files, siemens_files

PHI = {
    "PatientName": "Doe^Janeqx",
    "PatientID": "PHI123456",
    "PatientBirthDate": "19010203",
    "PatientAddress": "42 Quxmoor Lane",
    "PatientTelephoneNumbers": "5550199327",
    "OtherPatientIDs": "OTHERID77341",
    "InstitutionName": "Zyxwv Memorial Hospital",
    "InstitutionAddress": "1 Qwerty Plaza",
    "ReferringPhysicianName": "Refdoc^Quixby",
    "PerformingPhysicianName": "Perfdoc^Vexley",
    "OperatorsName": "Opname^Wuzzle",
    "AccessionNumber": "ACC8675309",
    "StudyDescription": "Study of Doe^Janeqx",
    "SeriesDescription": "Series for PHI123456",
    "ProtocolName": "Protocol Zyxwv-Doe",
    "StationName": "STATIONQX9",
    "StudyID": "STUDY4242Q",
}
# values that are not overwritten: text of the original GE files that must not be copied out
ORIGINAL_TEXT = ["Duke Univ Hosp", "usertest01", "BIAC_language", "fMRI 259 x1"]
NEEDLES = [v for v in PHI.values()] + ["Janeqx", "Quixby", "Vexley", "Wuzzle", "Zyxwv",
                                      "Quxmoor"] + ORIGINAL_TEXT


def _with_phi(src, dst):
    ds = pydicom.dcmread(src)
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.PatientSex = "F"
    ds.PatientAge = "077Y"
    ds.save_as(dst)
    return dst


def _grep(texts: dict[str, bytes]) -> list[str]:
    hits = []
    for where, blob in texts.items():
        lower = blob.lower()
        for needle in NEEDLES:
            if needle.lower().encode() in lower:
                hits.append(f"{needle!r} in {where}")
    return hits


def test_no_phi_in_volumes_errors_or_logs(tmp_path, caplog):
    siemens = siemens_files()
    ge = ge_files()[:36]
    src_dir = tmp_path / "export"
    src_dir.mkdir()
    phi_siemens = [_with_phi(p, src_dir / p.name) for p in siemens]
    phi_ge = [_with_phi(p, src_dir / p.name) for p in ge]
    # the copies really carry the PHI (else the test proves nothing)
    assert pydicom.dcmread(phi_ge[0]).PatientID == PHI["PatientID"]

    caplog.set_level(logging.DEBUG)  # every logger, pydicom and nibabel included
    volumes, infos, errors = [], [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in phi_siemens:
            infos.append(probe(path))
            volumes.append(read_volume(path))
            volumes.extend(iter_volumes(path))
        for path in phi_ge:
            infos.append(probe(path))
        volumes.append(read_dicom_slices(phi_ge[:18]))
        volumes.append(read_dicom_slices(phi_ge[18:36][::-1]))

        # error paths on PHI-carrying files
        cut = src_dir / "cut_mosaic.dcm"
        cut.write_bytes(phi_siemens[0].read_bytes()[: phi_siemens[0].stat().st_size // 2])
        cut_header = src_dir / "cut_header.dcm"
        cut_header.write_bytes(phi_ge[0].read_bytes()[:2000])
        attempts = [
            lambda: read_volume(cut),
            lambda: probe(cut_header),
            lambda: read_volume(cut_header),
            lambda: read_volume(phi_ge[0]),  # a slice, not a volume
            lambda: read_dicom_slices(phi_ge[:17]),  # wrong count
            lambda: read_dicom_slices(phi_ge[:9] + phi_ge[27:]),  # two volumes
            lambda: read_dicom_slices(phi_ge[:17] + phi_ge[:1]),  # duplicate slice
            lambda: read_dicom_slices([phi_siemens[0]]),  # mosaic given as a slice
        ]
        for attempt in attempts:
            with pytest.raises(IngestError) as err:
                attempt()
            errors.append(err.value)
    assert len(errors) == len(attempts)

    out = tmp_path / "out"
    out.mkdir()
    for k, volume in enumerate(volumes):
        nib.save(nib.Nifti1Image(np.asarray(volume.data), volume.affine), out / f"v{k}.nii")
        record = {"header": dict(volume.header), "index": volume.index,
                  "series": volume.series, "source": volume.source, "tr": volume.tr,
                  "acquisition_time": volume.acquisition_time}
        (out / f"v{k}.json").write_text(json.dumps(record))
        (out / f"v{k}.txt").write_text(repr(volume))
    (out / "infos.txt").write_text("\n".join(repr(i) for i in infos))

    texts = {f"output {p.name}": p.read_bytes() for p in out.iterdir()}
    for k, err in enumerate(errors):
        texts[f"exception {k}"] = str(err).encode()
        texts[f"traceback {k}"] = "".join(traceback.format_exception(err)).encode()
    for record in caplog.records:
        texts[f"log {record.name}"] = record.getMessage().encode()
    texts["log text"] = caplog.text.encode()
    for k, w in enumerate(caught):
        texts[f"warning {k}"] = str(w.message).encode()

    assert len(volumes) == 8 and len(infos) == 3 + 36
    assert any(r.name.startswith("rtfb.ingest") for r in caplog.records)  # logs were looked at
    assert len(list(out.iterdir())) == 3 * len(volumes) + 1
    hits = _grep(texts)
    assert not hits, hits
    # sanity: the grep does find PHI where it is (so a miss above is meaningful)
    assert _grep({"copy": phi_ge[0].read_bytes()})
    for volume in volumes:
        assert volume.source in {p.name for p in phi_siemens + phi_ge}
