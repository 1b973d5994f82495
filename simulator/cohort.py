"""Synthetic resting-state cohort (BIDS) with a planted, known group effect.

Patients and controls are synthetic subjects (:func:`simulator.synthetic.make_subject`)
on one shared grid and affine, so the brain mask and the ROIs are the same voxels in every
subject and group statistics are meaningful. Each subject has its own seed (spawned from
the cohort seed), hence its own texture ("anatomy"), noise, phase of the insula
oscillation and a baseline intensity varying by a few percent.

Planted effect (ALFF of the left insula)::

    amplitude_i = base_amplitude + slope * VAS_i + N(0, amplitude_sd)    (clipped at 0)

where ``VAS_i`` is the subject's pain score (0-10; controls ~U(0, 1), patients
~U(3, 9)). Patients have higher VAS, so higher left-insula low-frequency amplitude, and
across subjects the amplitude correlates with VAS. With ``null=True`` the slope is 0: the
amplitude has the same distribution in both groups and does not depend on VAS.

Layout written by :func:`write_cohort`::

    BIDS_DIR/
      dataset_description.json, README, participants.tsv, participants.json
      sub-XX/func/sub-XX_task-rest_bold.nii.gz, sub-XX_task-rest_bold.json
      derivatives/truth/
        dataset_description.json
        truth.json                    effect definition + per-subject planted values
        template.nii.gz               expected anatomy on the common grid (registration target)
        mask.nii.gz                   shared brain mask (uint8)
        roi-<name>.nii.gz             shared ROIs (uint8)
        network.nii.gz                planted network (seed + target ROIs, uint8)
        atlas.nii.gz, atlas.tsv       label image (int16) and its ``index``/``name`` table
        sub-XX/sub-XX_truth.json      full make_subject truth of that subject

Resting-state network: in every subject the ``seed`` (posterior-cingulate-like) and
``target`` (medial-prefrontal-like) ROIs carry band-limited signals correlated at
``fc_correlation`` = 0.9 by default (a coherent two-node network, the ground truth of group
ICA: ``network.nii.gz``). Atlas for graph analyses: ``atlas.nii.gz`` labels the five ROIs
(1-5) and splits the rest of the brain mask into boxes (labels 6 and up), names in
``atlas.tsv``.

Sessions (``sessions=("pre", "post")``): every subject gets one run per session under
``sub-XX/ses-<label>/func/`` (its own noise per session, same grid) and a
``sub-XX/sub-XX_sessions.tsv`` with the session's VAS. A planted **treatment effect**
(e.g. acupuncture between the sessions): in the last session the patients' left-insula
amplitude is ``max(0, amplitude + treatment_effect)`` and their VAS
``max(0, VAS + treatment_vas)``; controls are unchanged. ``truth.json`` records both.

Subjects on their own grids (``varied_grids=True``): every run is simulated on the common
grid, then written as a scanner would have seen that head (:mod:`simulator.grids`): its own
voxel size and field of view, RAS or LAS axes, and a head pose (rotation up to 6 degrees
per axis, translation up to 4 mm) drawn per run. Every subject also carries a shared
anatomy (a smooth pattern of +-30 % of the baseline, constant in time, so no metric sees
it) for registration to lock onto. The truth (mask, ROIs, atlas) stays on the common grid,
with ``derivatives/truth/template.nii.gz`` (the expected anatomy, the registration target)
and each run's grid and pose in ``truth.json`` (``grid``); ``t1w=True`` adds a T1w-like
image per subject (``sub-XX/anat/sub-XX_T1w.nii.gz``, opposite contrast, own pose).

Subjects are numbered patients first (``sub-01`` .. ``sub-<N>``), then controls. Nothing
here imports ``rtfb``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .grids import (
    ANATOMY_CONTRAST,
    T1W_VOXEL,
    anatomy_field,
    resample_run,
    subject_geometry,
    t1w_image,
    t1w_template,
)
from .synthetic import make_subject

__all__ = ["CohortSubject", "make_atlas", "make_cohort_plan", "write_cohort"]

BIDS_VERSION = "1.8.0"
TASK = "rest"
_GROUP_VAS = {"patient": (3.0, 9.0), "control": (0.0, 1.0)}
_AGE_RANGE = (20, 65)
_BASELINE_SD = 0.03  # relative between-subject variation of the baseline intensity
_NETWORK_CORRELATION = 0.9  # seed-target coupling: one coherent network for ICA
_ATLAS_BOXES = (3, 3, 2)  # boxes along x, y, z splitting the brain outside the ROIs
_MIN_PARCEL = 4  # voxels; smaller boxes are left unlabelled


@dataclass(frozen=True)
class CohortSubject:
    """Demographics and planted values of one cohort subject."""

    participant_id: str
    group: str
    age: int
    sex: str
    vas: float
    seed: int
    alff_amplitude: float
    baseline: float

    def as_dict(self) -> dict:
        """JSON-friendly dict."""
        return {
            "participant_id": self.participant_id, "group": self.group, "age": self.age,
            "sex": self.sex, "vas": self.vas, "seed": self.seed,
            "alff_amplitude": self.alff_amplitude, "baseline": self.baseline,
        }


def make_cohort_plan(
    n_patients: int,
    n_controls: int,
    seed: int = 0,
    null: bool = False,
    *,
    base_amplitude: float = 10.0,
    slope: float = 3.0,
    amplitude_sd: float = 2.0,
    baseline: float = 1000.0,
) -> list[CohortSubject]:
    """Draw demographics, VAS, per-subject seeds and planted amplitudes (no images).

    Parameters
    ----------
    n_patients, n_controls : int
        Group sizes (>= 0, at least one subject in all).
    seed : int
        Cohort seed; the same seed gives the same plan.
    null : bool
        No effect: the amplitude does not depend on group or VAS (``slope`` ignored).
    base_amplitude, slope, amplitude_sd : float
        ``amplitude = base_amplitude + slope * VAS + N(0, amplitude_sd)``, clipped at 0.
    baseline : float
        Mean baseline intensity; each subject's varies by ~3 % around it.

    Returns
    -------
    list of CohortSubject
        Patients first, then controls.
    """
    n_patients, n_controls = int(n_patients), int(n_controls)
    if n_patients < 0 or n_controls < 0 or n_patients + n_controls < 1:
        raise ValueError(f"need >= 0 patients and controls and at least one subject, got "
                         f"{n_patients} patients and {n_controls} controls.")
    for name, value in (("base_amplitude", base_amplitude), ("slope", slope),
                        ("amplitude_sd", amplitude_sd)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    n = n_patients + n_controls
    width = max(2, len(str(n)))
    root = np.random.SeedSequence(int(seed))
    rng = np.random.default_rng(root.spawn(1)[0])
    subject_seeds = [int(s.generate_state(1)[0]) for s in root.spawn(n)]
    groups = ["patient"] * n_patients + ["control"] * n_controls
    effective_slope = 0.0 if null else float(slope)
    plan = []
    for i, group in enumerate(groups):
        lo, hi = _GROUP_VAS[group]
        vas = round(float(rng.uniform(lo, hi)), 1)
        age = int(rng.integers(_AGE_RANGE[0], _AGE_RANGE[1] + 1))
        sex = "F" if rng.random() < 0.5 else "M"
        jitter = float(rng.normal(0.0, amplitude_sd))
        amplitude = max(0.0, base_amplitude + effective_slope * vas + jitter)
        subj_baseline = float(baseline * (1.0 + _BASELINE_SD * rng.standard_normal()))
        plan.append(CohortSubject(
            participant_id=f"sub-{i + 1:0{width}d}", group=group, age=age, sex=sex,
            vas=vas, seed=subject_seeds[i], alff_amplitude=round(amplitude, 6),
            baseline=round(subj_baseline, 6),
        ))
    return plan


def _save_nifti(array, affine, path: Path, dtype, tr: float | None = None) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(dtype)
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    img.header.set_zooms(zooms + ((float(tr),) if tr is not None else ()))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


def make_atlas(mask: np.ndarray, rois: dict[str, np.ndarray],
               boxes: Sequence[int] = _ATLAS_BOXES) -> tuple[np.ndarray, list[str]]:
    """Label image: the ROIs (1..len(rois)), then boxes of the remaining brain voxels.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Brain mask.
    rois : dict of str to numpy.ndarray of bool
        Disjoint ROIs inside ``mask``, labelled in this order.
    boxes : sequence of 3 int
        Number of equal slabs of the mask's bounding box along each axis.

    Returns
    -------
    labels : numpy.ndarray of int16, shape (X, Y, Z)
        0 outside the brain (and in boxes of fewer than 4 voxels).
    names : list of str
        Name of label ``i + 1`` at index ``i`` (ROI names, then ``box-<i>-<j>-<k>``).
    """
    labels = np.zeros(mask.shape, np.int16)
    names = []
    for name, roi in rois.items():
        names.append(name)
        labels[roi] = len(names)
    rest = mask & (labels == 0)
    idx = np.nonzero(mask)
    lo = np.array([i.min() for i in idx])
    hi = np.array([i.max() for i in idx]) + 1
    coords = np.indices(mask.shape)
    bins = [np.clip(((coords[a] - lo[a]) * boxes[a]) // (hi[a] - lo[a]), 0, boxes[a] - 1)
            for a in range(3)]
    for i in range(boxes[0]):
        for j in range(boxes[1]):
            for k in range(boxes[2]):
                box = rest & (bins[0] == i) & (bins[1] == j) & (bins[2] == k)
                if box.sum() >= _MIN_PARCEL:
                    names.append(f"box-{i}-{j}-{k}")
                    labels[box] = len(names)
    return labels, names


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def write_cohort(
    out_dir: str | Path,
    n_patients: int,
    n_controls: int,
    *,
    seed: int = 0,
    null: bool = False,
    shape: Sequence[int] = (32, 32, 20),
    n_volumes: int = 120,
    tr: float = 2.0,
    base_amplitude: float = 10.0,
    slope: float = 3.0,
    amplitude_sd: float = 2.0,
    sessions: Sequence[str] | None = None,
    treatment_effect: float = 0.0,
    treatment_vas: float = 0.0,
    varied_grids: bool = False,
    t1w: bool = False,
    **subject_kwargs,
) -> dict:
    """Write a synthetic BIDS cohort with a planted left-insula ALFF effect.

    Parameters
    ----------
    out_dir : str | pathlib.Path
        BIDS root (created if needed; existing files of the same names are replaced).
    n_patients, n_controls : int
        Group sizes.
    seed : int
        Cohort seed: same seed, same dataset (voxel for voxel).
    null : bool
        No group or VAS effect (see module docstring).
    shape, n_volumes, tr
        Grid, run length and repetition time (s), shared by all subjects.
    base_amplitude, slope, amplitude_sd : float
        Effect definition (see :func:`make_cohort_plan`).
    sessions : sequence of str | None
        Session labels (without ``ses-``), e.g. ``("pre", "post")``; None: no sessions.
    treatment_effect, treatment_vas : float
        Change of the patients' left-insula amplitude and VAS in the last session.
    varied_grids : bool
        Write each subject on its own grid, axis order and head pose (see the module
        docstring); the truth stays on the common grid.
    t1w : bool
        With ``varied_grids``: also a T1w-like image per subject,
        ``sub-XX/anat/sub-XX_T1w.nii.gz`` (the anatomy with the opposite contrast, 2 mm
        RAS grid, its own head pose; :func:`simulator.grids.t1w_image`), its grid and pose
        in ``truth.json`` (``t1w``), and ``derivatives/truth/template_T1w.nii.gz``, the
        template with that contrast (``rtfb analyze --normalise-from t1w``'s target).
    **subject_kwargs
        Further keyword arguments of :func:`simulator.synthetic.make_subject` (e.g.
        ``noise_sigma``); ``alff_amplitude``, ``baseline``, ``seed`` are set per subject;
        ``fc_correlation`` defaults to 0.9 (a coherent seed-target network).

    Returns
    -------
    dict
        The cohort truth (also saved as ``derivatives/truth/truth.json``).
    """
    forbidden = {"alff_amplitude", "seed", "shape", "n_volumes", "tr"} & set(subject_kwargs)
    if forbidden:
        raise ValueError(f"{sorted(forbidden)} are set by write_cohort, not per subject.")
    if t1w and not varied_grids:
        raise ValueError("t1w=True needs varied_grids=True (the T1w images' anatomy).")
    mean_baseline = float(subject_kwargs.pop("baseline", 1000.0))
    subject_kwargs.setdefault("fc_correlation", _NETWORK_CORRELATION)
    plan = make_cohort_plan(n_patients, n_controls, seed=seed, null=null,
                            base_amplitude=base_amplitude, slope=slope,
                            amplitude_sd=amplitude_sd, baseline=mean_baseline)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    truth_dir = root / "derivatives" / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)

    kind = "null (no group or VAS effect)" if null else "left-insula ALFF increases with VAS"
    _write_json(root / "dataset_description.json", {
        "Name": f"rtfb synthetic resting-state cohort ({kind})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["rtfb simulator"],
        "GeneratedBy": [{"Name": "rtfb simulator", "Description":
                         "python -m simulator cohort (synthetic data, no real participant)"}],
    })
    (root / "README").write_text(
        "Synthetic resting-state fMRI cohort written by `python -m simulator cohort`.\n"
        "No real participant: all images and demographics are simulated.\n"
        "The planted ground truth is in derivatives/truth/ (truth.json, masks).\n")
    with open(root / "participants.tsv", "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["participant_id", "group", "age", "sex", "vas"])
        for s in plan:
            writer.writerow([s.participant_id, s.group, s.age, s.sex, f"{s.vas:.1f}"])
    _write_json(root / "participants.json", {
        "group": {"Description": "Clinical group",
                  "Levels": {"patient": "chronic pain patient", "control": "healthy control"}},
        "age": {"Description": "Age", "Units": "year"},
        "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
        "vas": {"Description": "Pain intensity on a visual analogue scale, 0 (no pain) to "
                               "10 (worst imaginable pain)", "Units": "arbitrary",
                "Minimum": 0, "Maximum": 10},
    })

    shared = None
    subjects_truth = {}
    anatomy = soft = None
    session_list = [None] if not sessions else [str(x).removeprefix("ses-") for x in sessions]
    for index, s in enumerate(plan):
        entry = {**s.as_dict()}
        ses_rows = []
        for k, ses in enumerate(session_list):
            last = ses is not None and k == len(session_list) - 1 and k > 0
            treated = last and s.group == "patient"
            amplitude = max(0.0, s.alff_amplitude + treatment_effect) if treated \
                else s.alff_amplitude
            vas = round(max(0.0, s.vas + treatment_vas), 1) if treated else s.vas
            seed_k = s.seed if k == 0 else int(np.random.SeedSequence([s.seed, k])
                                               .generate_state(1)[0])
            subject = make_subject(shape, n_volumes, tr=tr, seed=seed_k,
                                   alff_amplitude=amplitude, baseline=s.baseline,
                                   **subject_kwargs)
            if shared is None:
                shared = subject
            elif not (np.array_equal(subject.affine, shared.affine)
                      and np.array_equal(subject.mask, shared.mask)
                      and all(np.array_equal(subject.rois[r], shared.rois[r])
                              for r in shared.rois)):  # pragma: no cover - make_subject
                raise RuntimeError("subjects do not share the grid, mask and ROIs.")
            sub_root = root / s.participant_id
            ent = s.participant_id if ses is None else f"{s.participant_id}_ses-{ses}"
            func = (sub_root if ses is None else sub_root / f"ses-{ses}") / "func"
            func.mkdir(parents=True, exist_ok=True)
            stem = f"{ent}_task-{TASK}_bold"
            data, affine, geometry = subject.data, subject.affine, None
            if varied_grids:
                if anatomy is None:
                    anatomy = anatomy_field(shared.mask.shape, seed)
                    soft = ndimage.gaussian_filter(shared.mask.astype(np.float64), 0.6)
                offset = (s.baseline * ANATOMY_CONTRAST * soft * anatomy).astype(np.float32)
                zooms = np.sqrt((subject.affine[:3, :3] ** 2).sum(axis=0))
                geometry = subject_geometry(index, seed_k, subject.mask.shape, zooms)
                data = resample_run(data + offset[..., None], subject.affine, geometry)
                affine = np.asarray(geometry["affine"])
            _save_nifti(data, affine, func / f"{stem}.nii.gz", np.float32, tr)
            del data
            _write_json(func / f"{stem}.json", {"RepetitionTime": float(tr), "TaskName": TASK})
            sub_truth_dir = truth_dir / s.participant_id
            sub_truth_dir.mkdir(exist_ok=True)
            _write_json(sub_truth_dir / f"{ent}_truth.json", subject.truth)
            bold = str((func / f"{stem}.nii.gz").relative_to(root))
            if ses is None:
                entry.update(bold=bold, alff_phase_rad=subject.truth["alff"]["phase_rad"])
                if geometry is not None:
                    entry["grid"] = geometry
            else:
                entry.setdefault("sessions", {})[f"ses-{ses}"] = {
                    "bold": bold, "alff_amplitude": round(amplitude, 6), "vas": vas,
                    "alff_phase_rad": subject.truth["alff"]["phase_rad"]}
                if geometry is not None:
                    entry["sessions"][f"ses-{ses}"]["grid"] = geometry
                ses_rows.append((f"ses-{ses}", vas))
            del subject
        if t1w:
            geometry = subject_geometry(index, int(np.random.SeedSequence([s.seed, 0x71])
                                                   .generate_state(1)[0]),
                                        shared.mask.shape, zooms,
                                        grid=((T1W_VOXEL,) * 3, "RAS"))
            template = mean_baseline * soft * (1.0 + ANATOMY_CONTRAST * anatomy)
            anat = root / s.participant_id / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            image = t1w_image(template, shared.mask, shared.affine, geometry)
            _save_nifti(image, np.asarray(geometry["affine"]),
                        anat / f"{s.participant_id}_T1w.nii.gz", np.float32)
            entry["t1w"] = {"image": f"{s.participant_id}/anat/{s.participant_id}_T1w.nii.gz",
                            "grid": geometry}
        if ses_rows:
            with open(root / s.participant_id / f"{s.participant_id}_sessions.tsv", "w",
                      newline="") as fh:
                writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
                writer.writerow(["session_id", "vas"])
                writer.writerows((label, f"{v:.1f}") for label, v in ses_rows)
        subjects_truth[s.participant_id] = entry

    _save_nifti(shared.mask, shared.affine, truth_dir / "mask.nii.gz", np.uint8)
    for name in ("template.nii.gz", "template_T1w.nii.gz"):
        if (truth_dir / name).exists():
            (truth_dir / name).unlink()
    if varied_grids:
        template = mean_baseline * soft * (1.0 + ANATOMY_CONTRAST * anatomy)
        _save_nifti(template, shared.affine, truth_dir / "template.nii.gz", np.float32)
    if t1w:
        _save_nifti(t1w_template(template, shared.mask), shared.affine,
                    truth_dir / "template_T1w.nii.gz", np.float32)
    for name, roi in shared.rois.items():
        _save_nifti(roi, shared.affine, truth_dir / f"roi-{name}.nii.gz", np.uint8)
    network = shared.rois["seed"] | shared.rois["target"]
    _save_nifti(network, shared.affine, truth_dir / "network.nii.gz", np.uint8)
    atlas, atlas_names = make_atlas(shared.mask, shared.rois)
    _save_nifti(atlas, shared.affine, truth_dir / "atlas.nii.gz", np.int16)
    with open(truth_dir / "atlas.tsv", "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "name"])
        writer.writerows((i + 1, name) for i, name in enumerate(atlas_names))
    _write_json(truth_dir / "dataset_description.json", {
        "Name": "Planted ground truth of the synthetic cohort",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "rtfb simulator"}],
    })
    alff = shared.truth["alff"]
    truth = {
        "null": bool(null),
        "seed": int(seed),
        "n_patients": int(n_patients),
        "n_controls": int(n_controls),
        "shape": list(shared.truth["shape"]),
        "n_volumes": int(n_volumes),
        "tr": float(tr),
        "voxel_size": shared.truth["voxel_size"],
        "affine": shared.affine.tolist(),
        "grids": "varied" if varied_grids else "shared",
        "template": "template.nii.gz" if varied_grids else None,
        "template_t1w": "template_T1w.nii.gz" if t1w else None,
        "space": "the truth (mask, ROIs, atlas, template) is on the common grid 'affine'; "
                 + ("each run's grid and head pose: subjects[...]['grid'] (simulator.grids)"
                    if varied_grids else "every run is on that grid"),
        "effect": {
            "metric": "ALFF",
            "roi": "left_insula",
            "control_roi": "right_insula",
            "frequency_hz": alff["frequency_hz"],
            "signal": "amplitude * sin(2 pi frequency_hz t + phase) added to every "
                      "left_insula voxel, phase random per subject",
            "definition": "amplitude = max(0, base_amplitude + slope * vas + "
                          "N(0, amplitude_sd)); slope = 0 when null",
            "base_amplitude": float(base_amplitude),
            "slope": 0.0 if null else float(slope),
            "amplitude_sd": float(amplitude_sd),
            "vas_ranges": {g: list(r) for g, r in _GROUP_VAS.items()},
        },
        "sessions": None if not sessions else [f"ses-{x}" for x in session_list],
        "treatment": None if not sessions else {
            "session": f"ses-{session_list[-1]}", "who": "patients",
            "alff_amplitude_change": float(treatment_effect),
            "vas_change": float(treatment_vas),
            "definition": "in the last session each patient's left-insula amplitude is "
                          "max(0, amplitude + alff_amplitude_change) and VAS "
                          "max(0, VAS + vas_change); controls unchanged"},
        "noise_sigma": shared.truth["noise_sigma"],
        "mask": "mask.nii.gz",
        "rois": {name: f"roi-{name}.nii.gz" for name in shared.rois},
        "roi_voxels": shared.truth["roi_voxels"],
        "network": {
            "rois": ["seed", "target"],
            "map": "network.nii.gz",
            "correlation": float(subject_kwargs["fc_correlation"]),
            "definition": "band-limited signals of SD fc_amplitude added to the seed and "
                          "target ROIs, correlated at 'correlation' over the run",
        },
        "atlas": {"image": "atlas.nii.gz", "labels": "atlas.tsv",
                  "n_labels": len(atlas_names)},
        "subjects": subjects_truth,
    }
    _write_json(truth_dir / "truth.json", truth)
    return truth
