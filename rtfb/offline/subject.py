"""Maps of one run: the real-time preprocessing offline, then the batch metric kernels.

The run's volumes go through :class:`rtfb.preprocess.pipeline.Preprocessor` one by one, as in
a session (realignment, FD, optional smoothing, masking, cumulative nuisance GLM), and the
cleaned in-mask vectors of the whole run are kept. ALFF / fALFF / mALFF / zALFF, ReHo,
seed-FC, degree centrality and VMHC are then the ``rtfb.metrics`` batch kernels on that
data, with the whole run as the window.

Outputs (BIDS derivatives)::

    OUT_DIR/rtfb/sub-XX/[ses-YY/]func/<prefix>_desc-<Metric>_map.nii.gz (+ .json sidecar)
    OUT_DIR/rtfb/sub-XX/func/<prefix>_desc-brain_mask.nii.gz
    OUT_DIR/rtfb/sub-XX/func/<prefix>_desc-clean_bold.nii.gz        (cleaned series, for ICA)
    OUT_DIR/rtfb/sub-XX/func/<prefix>_desc-atlas_timeseries.tsv     (+ .json; with an atlas)
    OUT_DIR/rtfb/sub-XX/func/<prefix>_desc-confounds_timeseries.tsv  (motion, FD, censored)
    OUT_DIR/rtfb/sub-XX/<prefix>_done.json                          (resume marker)

With normalisation (``AnalysisConfig.normalise``) the maps, mask, cleaned series and atlas
series are on the template grid and named ``<prefix>_space-<label>_desc-...``, beside the
run's cached transform ``<prefix>_from-boldref_to-<label>_mode-image_xfm.npz`` (+ ``.json``)
and its warped mean EPI ``<prefix>_space-<label>_desc-mean_boldref.nii.gz``.

Every file is written to a temporary name and renamed, and the ``done`` marker last, so a
killed run leaves no half-written map that a resumed run would trust.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .._utils.checks import _check_option
from ..ingest.nifti import iter_nifti_volumes
from ..metrics import alff, degree_centralities, falff, malff, reho, seed_fc, vmhc, zalff
from ..metrics.vmhc import _check_symmetric_grid
from ..preprocess.bandpass import bandpass
from ..preprocess.pipeline import Preprocessor

__all__ = ["DEFAULT_SPHERES", "AnalysisConfig", "PIPELINE_NAME", "PIPELINES", "atlas_timeseries",
           "default_atlas", "default_seeds", "preprocess_run", "process_subject",
           "resolve_seed_masks", "subject_outputs_dir"]

PIPELINE_NAME = "rtfb"
#: ``AnalysisConfig.pipeline`` values: the order of steps and the metric conventions.
PIPELINES = ("rtfb", "dpabi")
#: MNI centres (mm) of the default insula seeds when the dataset has no ROI masks.
DEFAULT_SPHERES = {"left_insula": (-38.0, 4.0, 2.0), "right_insula": (38.0, 4.0, 2.0)}
_TRUTH_ROIS = "derivatives/truth/roi-{}.nii.gz"
_TRUTH_ATLAS = "derivatives/truth/atlas.nii.gz"


@dataclass(frozen=True)
class AnalysisConfig:
    """What the offline analysis computes and how the run is preprocessed.

    Parameters
    ----------
    band : tuple of float
        ALFF band in Hz (inclusive); with ``pipeline="dpabi"`` also the band-pass filter's.
    pipeline : {"rtfb", "dpabi"}
        ``"rtfb"``: every metric on the cleaned series, rtfb's conventions.
        ``"dpabi"``: DPARSF's order and DPABI's conventions: ALFF/fALFF (mALFF, zALFF) on
        the cleaned series, then DPABI's band-pass (linear detrend + ideal filter,
        :func:`rtfb.preprocess.bandpass`) before ReHo, seed FC, degree centrality and VMHC.
    neighborhood : {7, 19, 27}
        ReHo neighbourhood.
    dc_threshold : float
        Degree-centrality correlation threshold.
    seeds : dict of str to (path | tuple of 3 floats) | None
        Seed ROIs: a mask file on (or resampled to) the run's grid, or an MNI centre in mm
        (a sphere of ``seed_radius_mm``, taking world coordinates as MNI: the data must be
        in MNI space). ``None``: :func:`default_seeds` of the dataset.
    seed_radius_mm : float
        Radius of sphere seeds.
    atlas : str | None
        Label image (any grid, nearest-neighbour resampled; names from the ``.tsv`` beside
        it) whose regions' mean cleaned series are written for graph analyses; ``None``:
        :func:`default_atlas` of the dataset; ``""``: no atlas.
    save_clean : bool
        Write the cleaned series (``desc-clean_bold``), needed by group ICA.
    realign, interpolation, smoothing_fwhm, drift, drift_order, motion_regressors, glm,
    fd_threshold
        :class:`~rtfb.preprocess.pipeline.Preprocessor` options (``glm`` cumulative by
        default, as in a session; ``n_expected`` and ``tr`` come from the run).
    input : {"bids", "fmriprep"}
        ``"fmriprep"``: the runs are fMRIPrep derivatives, cleaned by
        :func:`rtfb.offline.fmriprep.preprocess_fmriprep_run` instead of the Preprocessor.
    confounds : str
        Confound strategy of fMRIPrep input (:data:`rtfb.offline.fmriprep.STRATEGIES`).
    normalise : str
        ``""``: maps on the run's grid; ``"mni"``: the run's mean EPI is registered to
        nilearn's MNI152 template at ``template_resolution`` mm, or a template image's path:
        to that image (:mod:`rtfb.offline.normalise`); the cleaned series are then warped
        to the template grid and every map, mask and series is computed there.
    template_resolution : int
        Voxel size (mm) of the MNI template grid.
    registration : {"syn", "affine"}
        Affine then SyN (nonlinear), or affine only.
    normalise_from : {"epi", "t1w"}
        Register the mean EPI to the template, or the subject's T1w
        (``sub-XX/[ses-YY/]anat/*_T1w.nii.gz``) to the template and the mean EPI rigidly
        to the T1w (:mod:`rtfb.offline.template_space`).
    """

    band: tuple[float, float] = (0.01, 0.08)
    pipeline: str = "rtfb"
    neighborhood: int = 27
    dc_threshold: float = 0.25
    seeds: dict | None = None
    seed_radius_mm: float = 6.0
    atlas: str | None = None
    save_clean: bool = True
    realign: bool = True
    interpolation: str = "linear"
    smoothing_fwhm: float = 0.0
    drift: str = "legendre"
    drift_order: int = 2
    motion_regressors: bool = True
    glm: str = "cumulative"
    fd_threshold: float = 0.5
    input: str = "bids"
    confounds: str = "simple"
    normalise: str = ""
    template_resolution: int = 4
    registration: str = "syn"
    normalise_from: str = "epi"

    def __post_init__(self):
        _check_option("pipeline", self.pipeline, PIPELINES)
        _check_option("registration", self.registration, ("syn", "affine"))
        _check_option("normalise_from", self.normalise_from, ("epi", "t1w"))
        if self.normalise and self.input == "fmriprep":
            raise ValueError("normalise applies to raw BIDS runs, not to fMRIPrep input "
                             "(already in MNI152NLin2009cAsym space).")

    def preprocessing(self) -> dict:
        """The Preprocessor options."""
        return {k: getattr(self, k) for k in (
            "realign", "interpolation", "smoothing_fwhm", "drift", "drift_order",
            "motion_regressors", "glm", "fd_threshold")}

    def as_dict(self) -> dict:
        """JSON-friendly dict (seed paths as strings)."""
        out = asdict(self)
        out["band"] = [float(b) for b in self.band]
        if self.seeds is not None:
            out["seeds"] = {name: (str(v) if isinstance(v, (str, os.PathLike))
                                   else [float(c) for c in v])
                            for name, v in self.seeds.items()}
        return json.loads(json.dumps(out))


def default_seeds(bids_dir) -> dict:
    """Left/right insula ROI masks of a simulator cohort if present, else MNI spheres."""
    root = Path(bids_dir)
    paths = {name: root / _TRUTH_ROIS.format(name) for name in DEFAULT_SPHERES}
    if all(p.is_file() for p in paths.values()):
        return {name: str(p) for name, p in paths.items()}
    return dict(DEFAULT_SPHERES)


def default_atlas(bids_dir) -> str:
    """The simulator cohort's atlas (``derivatives/truth/atlas.nii.gz``) if present, else ``""``."""
    path = Path(bids_dir) / _TRUTH_ATLAS
    return str(path) if path.is_file() else ""


def subject_outputs_dir(out_dir, subject: str) -> Path:
    """``OUT_DIR/rtfb/sub-XX``."""
    return Path(out_dir) / PIPELINE_NAME / subject


def _bids_root(bold_path: Path) -> Path | None:
    # BIDS_DIR/sub-XX/[ses-YY/]func/file
    for parent in bold_path.parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return None


def resolve_seed_masks(seeds: dict, mask: np.ndarray, affine, radius_mm: float) -> dict:
    """Boolean seed masks on the grid, restricted to the brain mask.

    Raises
    ------
    ValueError
        If a seed has no voxel inside the brain mask.
    """
    from ..preprocess.masks import load_mask, sphere_roi

    out = {}
    for name, spec in seeds.items():
        if isinstance(spec, (str, os.PathLike)):
            roi = load_mask(spec, affine, mask.shape, name=name)
        else:
            roi = sphere_roi(spec, radius_mm, affine, mask.shape, name=name)
        roi = np.asarray(roi, bool) & mask
        if not roi.any():
            raise ValueError(f"seed {name!r} ({spec}) has no voxel inside the brain mask.")
        out[name] = roi
    return out


def preprocess_run(bold_path, tr: float, config: AnalysisConfig) -> dict:
    """Feed a run through the real-time :class:`Preprocessor`, cleaned with the whole run.

    Realignment, smoothing and the nuisance design are the real-time ones; the nuisance
    regression uses the estimate from all the run's volumes
    (:meth:`Preprocessor.run_residuals`), i.e. a batch GLM.

    Returns
    -------
    dict
        ``data`` (n_voxels, n_volumes) cleaned in-mask series, ``mask``, ``affine``,
        ``motion`` (n_volumes, 6), ``fd``, ``censored`` (n_volumes,).
    """
    import nibabel as nib

    bold_path = Path(bold_path)
    n_volumes = int(nib.load(bold_path).shape[3])
    volumes = iter_nifti_volumes(bold_path)
    try:
        reference = next(volumes)
        pre = Preprocessor(n_expected=n_volumes, tr=tr, **config.preprocessing()).fit(reference)
        data = np.empty((n_volumes, int(pre.mask_.sum())))
        motion = np.empty((n_volumes, 6))
        fd = np.empty(n_volumes)
        censored = np.zeros(n_volumes, bool)
        for t, volume in enumerate(_chain(reference, volumes)):
            try:
                res = pre.transform(volume)
            except ValueError as err:
                raise ValueError(f"{bold_path}: volume {t}: {err}") from None
            data[t] = res.uncleaned
            motion[t], fd[t], censored[t] = res.motion, res.fd, res.censored
    finally:
        volumes.close()
    if t + 1 != n_volumes:
        raise ValueError(f"{bold_path}: read {t + 1} volumes, the header says {n_volumes}.")
    data = pre.run_residuals(data)  # whole-run nuisance fit, as a batch GLM
    return dict(data=data.T.copy(), mask=pre.mask_, affine=pre.affine_, motion=motion, fd=fd,
                censored=censored)


def _chain(first, rest):
    yield first
    yield from rest


def _desc(name: str) -> str:
    """BIDS ``desc`` label of a seed name: ``left_insula`` -> ``LeftInsula``."""
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", name))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")  # keeps the suffix (nibabel)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_map(array, affine, path: Path, dtype=np.float32) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    _atomic(path, lambda tmp: nib.save(img, tmp))


def _save_json(path: Path, obj) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def _scatter(values, mask) -> np.ndarray:
    out = np.zeros(mask.shape)
    out[mask] = values
    return out


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def process_subject(bold_path, tr: float, out_dir, config: AnalysisConfig | None = None,
                    *, overwrite: bool = False) -> dict:
    """Preprocess one run as in real time and write its metric maps.

    Parameters
    ----------
    bold_path : str | path-like
        4D BOLD NIfTI (``sub-XX[_...]_bold.nii[.gz]``).
    tr : float
        Repetition time in seconds (from the JSON sidecar).
    out_dir : str | path-like
        Derivatives root: maps go to ``out_dir/rtfb/sub-XX/func/``.
    config : AnalysisConfig | None
        Options (default :class:`AnalysisConfig`).
    overwrite : bool
        Recompute even when the outputs and the ``done`` marker exist (with the same
        configuration); otherwise such a run is skipped.

    Returns
    -------
    dict of str to pathlib.Path
        Written files by key (``ALFF``, ..., ``mask``, ``confounds``, ``done``; with
        ``config.normalise`` also ``xfm``, the cached transform, and ``boldref``, the warped
        mean EPI); the ``done`` marker also records whether the run was ``skipped``. Files
        of an earlier run that this one does not rewrite (e.g. maps in another space) are
        removed.
    """
    config = AnalysisConfig() if config is None else config
    bold_path = Path(bold_path)
    name = bold_path.name
    prefix = next((name[: -len(s)] for s in ("_bold.nii.gz", "_bold.nii") if name.endswith(s)),
                  None)
    if prefix is None or not prefix.startswith("sub-"):
        raise ValueError(f"{bold_path}: expected a BIDS name sub-<label>[_...]_bold.nii[.gz].")
    if config.input == "fmriprep":
        from .fmriprep import strip_preproc

        prefix = strip_preproc(prefix)
    subject = prefix.split("_")[0]
    sub_dir = subject_outputs_dir(out_dir, subject)
    session = next((e for e in prefix.split("_")[1:2] if e.startswith("ses-")), None)
    if session is not None:  # BIDS derivatives mirror the ses- folder
        sub_dir = sub_dir / session
    func_dir = sub_dir / "func"
    marker = sub_dir / f"{prefix}_done.json"
    config_dict = config.as_dict()

    if not overwrite and marker.is_file():
        done = _read_marker(marker)
        if done is not None and done.get("config") == config_dict and all(
                (sub_dir / rel).is_file() for rel in done.get("outputs", {}).values()):
            paths = {k: sub_dir / rel for k, rel in done["outputs"].items()}
            paths["done"] = marker
            return paths

    func_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_marker(marker) if marker.exists() else None
    if marker.exists():
        marker.unlink()
    if config.input == "fmriprep":
        from .fmriprep import preprocess_fmriprep_run

        pre = preprocess_fmriprep_run(bold_path, tr, config.confounds)
    else:
        pre = preprocess_run(bold_path, tr, config)
    space = None
    stem = prefix
    if config.normalise:
        from .normalise import load_template
        from .template_space import find_t1w, normalise_run

        template = load_template(config.normalise, config.template_resolution)
        t1w = None
        if config.normalise_from == "t1w":
            t1w = find_t1w(bold_path)
            if t1w is None:
                raise ValueError(f"{bold_path}: no T1w image in the subject's anat folder "
                                 "(normalise_from='t1w').")
        pre, space = normalise_run(pre, bold_path, template, func_dir, prefix,
                                   nonlinear=config.registration == "syn", t1w=t1w,
                                   overwrite=overwrite)
        stem = f"{prefix}_space-{template.space}"
    data, mask, affine = pre["data"], pre["mask"], pre["affine"]
    n = data.shape[1]
    grid = np.zeros(mask.shape + (n,))
    grid[mask] = data

    seeds_spec = config.seeds
    if seeds_spec is None:
        root = _bids_root(bold_path)
        seeds_spec = default_seeds(root) if root is not None else dict(DEFAULT_SPHERES)
    seed_masks = resolve_seed_masks(seeds_spec, mask, affine, config.seed_radius_mm)
    atlas = config.atlas
    if atlas is None:
        root = _bids_root(bold_path)
        atlas = default_atlas(root) if root is not None else ""

    band = [float(b) for b in config.band]
    conv = config.pipeline  # each pipeline uses its tool's metric conventions
    alff_map = _scatter(alff(data, tr, config.band, convention=conv), mask)
    falff_map = _scatter(falff(data, tr, config.band, convention=conv), mask)
    maps = {
        "ALFF": (alff_map, {"Band": band}),
        "fALFF": (falff_map, {"Band": band}),
        "mALFF": (malff(alff_map, mask, convention=conv),
                  {"Band": band, "Normalisation": "ALFF / mean ALFF in the brain mask"}),
        "zALFF": (zalff(alff_map, mask, convention=conv),
                  {"Band": band, "Normalisation": "(ALFF - mean) / std in the brain mask"
                                                  + (" (ddof 1)" if conv == "dpabi" else "")}),
    }
    if conv == "dpabi":  # DPARSF: band-pass after ALFF, before ReHo / FC / DC / VMHC
        data = bandpass(data, tr, config.band, convention="dpabi")
        grid = np.zeros(mask.shape + (n,))
        grid[mask] = data
    maps["ReHo"] = (reho(grid, mask, config.neighborhood, convention=conv),
                    {"Neighborhood": int(config.neighborhood)})
    mask_index = {}
    flat = np.flatnonzero(mask.ravel())
    for seed_name, roi in seed_masks.items():
        idx = np.searchsorted(flat, np.flatnonzero(roi.ravel()))
        mask_index[seed_name] = idx
        spec = seeds_spec[seed_name]
        maps[f"FC{_desc(seed_name)}"] = (
            _scatter(seed_fc(data[idx].mean(axis=0), data, convention=conv), mask),
            {"Seed": {"Name": seed_name, "Voxels": int(idx.size),
                      "Definition": str(spec) if isinstance(spec, (str, os.PathLike))
                      else {"CenterMNI": [float(c) for c in spec],
                            "RadiusMM": float(config.seed_radius_mm)}},
             "SeedSeries": "mean of the cleaned seed voxels", "Values": "Fisher z"})
    dc_binary, dc_weighted = degree_centralities(grid, mask, threshold=config.dc_threshold,
                                                 convention=conv)  # one correlation pass
    for kind, weighted, array in (("binary", False, dc_binary), ("weighted", True, dc_weighted)):
        maps[f"DC{kind}"] = (array, {"Threshold": float(config.dc_threshold),
                                     "Weighted": weighted})
    skipped = {}
    try:
        _check_symmetric_grid(affine, mask.shape)
    except ValueError as err:
        skipped["VMHC"] = f"grid not left-right symmetric: {err}"
    else:
        maps["VMHC"] = (vmhc(grid, mask, affine, convention=conv),
                        {"Values": "Fisher z", "Mirror": "first voxel axis (x)",
                         "Midline": "set to 0" if conv == "dpabi" or mask.shape[0] % 2
                         else "none on an even-width grid"})
    steps = _pipeline_steps(config)

    common = {
        "RepetitionTime": float(tr),
        "NumberOfVolumes": int(n),
        "Window": "whole run",
        "Sources": [str(bold_path)],
        "Convention": conv,
        "Pipeline": {"Name": config.pipeline, "Steps": steps},
        "Preprocessing": pre.get("preprocessing") or {
            "Implementation": "rtfb.preprocess.pipeline.Preprocessor "
                              "(real-time code, volume by volume)",
            **config.preprocessing(), "n_expected": int(n),
            "CensoredVolumes": int(pre["censored"].sum()),
            "CensoredVolumesUsed": True},
        "GeneratedBy": [{"Name": "rtfb", "Version": __version__}],
    }
    if space is not None:
        common["SpatialNormalisation"] = space
    outputs = {}
    for metric, (array, extra) in maps.items():
        rel = f"func/{stem}_desc-{metric}_map.nii.gz"
        _save_map(array, affine, sub_dir / rel)
        _save_json(sub_dir / rel.replace(".nii.gz", ".json"),
                   {"Metric": metric, "Kernel": f"rtfb.metrics.{_kernel(metric)}",
                    **extra, **common, "Input": _metric_input(metric, config)})
        outputs[metric] = rel
    rel = f"func/{stem}_desc-brain_mask.nii.gz"
    _save_map(mask, affine, sub_dir / rel, dtype=np.uint8)
    outputs["mask"] = rel
    if config.save_clean:
        rel = f"func/{stem}_desc-clean_bold.nii.gz"
        _save_map(grid, affine, sub_dir / rel)
        outputs["clean"] = rel
    if atlas:
        rel = f"func/{stem}_desc-atlas_timeseries.tsv"
        table, sidecar = atlas_timeseries(data, mask, affine, atlas)
        _atomic(sub_dir / rel, lambda tmp: tmp.write_text(table))
        _save_json(sub_dir / rel.replace(".tsv", ".json"), {**sidecar, **common})
        outputs["atlas"] = rel
    rel = f"func/{prefix}_desc-confounds_timeseries.tsv"
    lines = ["\t".join(["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                        "framewise_displacement", "censored"])]
    for m, f, c in zip(pre["motion"], pre["fd"], pre["censored"], strict=True):
        lines.append("\t".join([*(repr(float(v)) for v in m), repr(float(f)), str(int(c))]))
    _atomic(sub_dir / rel, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    outputs["confounds"] = rel
    if space is not None:
        from .template_space import registration_paths

        for key, path in zip(("xfm", "boldref"),
                             registration_paths(func_dir, prefix, space["Name"]), strict=True):
            outputs[key] = str(path.relative_to(sub_dir))
    if previous is not None:  # remove what this run replaces (e.g. maps of another space)
        for rel in set(previous.get("outputs", {}).values()) - set(outputs.values()):
            stale = sub_dir / rel
            if not stale.resolve().is_relative_to(sub_dir.resolve()):
                continue
            sidecar = stale.with_name(re.sub(r"(\.nii\.gz|\.nii|\.tsv|\.npz)$", ".json",
                                             stale.name))
            for path in {stale, sidecar}:
                if path.is_file():
                    path.unlink()
    _save_json(marker, {"subject": subject, "source": str(bold_path), "config": config_dict,
                        "outputs": outputs, "skipped": skipped, "rtfb_version": __version__})
    paths = {k: sub_dir / rel for k, rel in outputs.items()}
    paths["done"] = marker
    return paths


def atlas_timeseries(data: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                     atlas) -> tuple[str, dict]:
    """Mean cleaned series of every atlas region, as a BIDS ``timeseries.tsv`` text.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_voxels, n_volumes)
        Cleaned in-mask series.
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Brain mask (``data`` rows are its voxels in C order).
    affine : numpy.ndarray, shape (4, 4)
        Grid affine.
    atlas : str | path-like
        Label image (see :func:`rtfb.preprocess.masks.load_labels`).

    Returns
    -------
    table : str
        Tab-separated, one column per label (named), one row per volume; ``n/a`` for a
        region without a voxel in the brain mask.
    sidecar : dict
        Atlas file, label numbers, names and in-mask voxel counts.
    """
    from ..preprocess.masks import load_labels

    labels, names = load_labels(atlas, affine, mask.shape, name=Path(atlas).name)
    in_mask = labels[mask]
    columns, counts = [], {}
    for lab, name in names.items():
        sel = in_mask == lab
        counts[name] = int(sel.sum())
        columns.append(data[sel].mean(axis=0) if sel.any() else None)
    n = data.shape[1]
    rows = ["\t".join(names.values())]
    for t in range(n):
        rows.append("\t".join("n/a" if c is None else repr(float(c[t])) for c in columns))
    sidecar = {"Atlas": str(atlas), "Labels": {name: int(lab) for lab, name in names.items()},
               "VoxelsInMask": counts,
               "Series": "mean of the cleaned in-mask voxels of each label (n/a: none)"}
    return "\n".join(rows) + "\n", sidecar


def _pipeline_steps(config: AnalysisConfig) -> list[str]:
    """The processing steps of ``config.pipeline``, in order, for the sidecars."""
    pre = config.preprocessing()
    if config.input == "fmriprep":
        steps = [f"fMRIPrep preprocessed run, confounds regression ({config.confounds!r})"]
    else:
        nuisance = [f"{pre['drift']} drift up to order {pre['drift_order']}"]
        if pre["motion_regressors"]:
            nuisance.append("6 motion parameters")
        steps = ["realignment" if pre["realign"] else "no realignment"]
        if pre["smoothing_fwhm"]:
            steps.append(f"smoothing FWHM {pre['smoothing_fwhm']:g} mm")
        steps.append("brain mask")
        steps.append(f"nuisance regression over the whole run ({', '.join(nuisance)})")
    low, high = (float(b) for b in config.band)
    if config.pipeline == "dpabi":
        steps += [f"ALFF/fALFF (DPABI: zero-padded FFT, {low:g}-{high:g} Hz), "
                  "mALFF/zALFF (ddof 1)",
                  f"band-pass {low:g}-{high:g} Hz (DPABI: linear detrend + ideal FFT filter)",
                  "ReHo (faces 0), seed FC, degree centrality (constant voxel -1), "
                  "VMHC (zVMHC, midline 0) on the band-passed series"]
    else:
        steps += [f"ALFF/fALFF ({low:g}-{high:g} Hz, unpadded DFT), mALFF/zALFF",
                  "ReHo, seed FC, degree centrality, VMHC on the cleaned series "
                  "(no temporal filter)"]
    return steps


def _metric_input(metric: str, config: AnalysisConfig) -> str:
    """Which series a map was computed from."""
    if config.pipeline == "dpabi" and "ALFF" not in metric:
        low, high = (float(b) for b in config.band)
        return f"cleaned series band-passed {low:g}-{high:g} Hz"
    return "cleaned series (no temporal filter)"


def _kernel(metric: str) -> str:
    if metric.startswith("FC"):
        return "seed_fc"
    if metric.startswith("DC"):
        return "degree_centrality"
    return metric.lower() if metric != "ReHo" else "reho"
