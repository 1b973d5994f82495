"""Orthogonal slices of the mean EPI, the ROIs and the latest change map, for the page.

The mean EPI is a running sum of the received volumes read from the record's
``inputs.bin`` (only the volumes appended since the last request are read); the ROIs and the
brain mask are the record's ``rois/*.nii.gz``; the change map is the newest file in
``maps/``. Everything is reoriented to RAS+ voxel axes and cut through the centre of mass of
the fed-back ROI. The page draws the slices itself (canvas), so the server only sends small
8-bit images: computing a payload costs a few milliseconds and happens only when a page
asks for it.
"""

from __future__ import annotations

import base64
import re
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .sources import JsonlTail

__all__ = ["SliceSource"]

#: maps written by the session: ``<metric>-<change|map>_<condition>_vol-<index>.nii.gz``
_MAP_NAMES = (re.compile(r"^(?P<name>[^-]+)-(?P<kind>change|map)_(?P<cond>.+)_vol-(?P<vol>\d+)"
                         r"\.nii(\.gz)?$"),
              re.compile(r"^(?P<name>[^_]+)_(?P<cond>.+)_vol-(?P<vol>\d+)\.nii(\.gz)?$"))
_VIEWS = ("sagittal", "coronal", "axial")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _cut(volume: np.ndarray, view: str, pos: tuple[int, int, int]) -> np.ndarray:
    """2D image (rows from top) of one view of a RAS-oriented volume."""
    x, y, z = pos
    if view == "sagittal":  # rows: superior -> inferior, columns: posterior -> anterior
        img = volume[x, :, :].T
    elif view == "coronal":  # columns: left -> right
        img = volume[:, y, :].T
    else:  # axial, rows: anterior -> posterior
        img = volume[:, :, z].T
    return img[::-1, :]


def _aspect(view: str, zooms: np.ndarray) -> float:
    """Height of a pixel over its width."""
    col, row = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}[view]
    return float(zooms[row] / zooms[col])


class SliceSource:
    """Builds the slice payload of ``GET /api/slices`` from a session record.

    Parameters
    ----------
    session_dir : path
        The session folder (read only).
    roi : str | None
        ROI whose centre of mass sets the cuts (default: the first ROI).
    """

    def __init__(self, session_dir, roi: str | None = None):
        self.session_dir = Path(session_dir)
        self.roi = roi
        self._inputs = JsonlTail(self.session_dir / "inputs.jsonl")
        self._sum: np.ndarray | None = None
        self._affine: np.ndarray | None = None
        self._n = 0
        self._lock = threading.Lock()
        self._cache_key: tuple | None = None
        self._cache: dict[str, Any] | None = None

    def _update_mean(self) -> None:
        entries = [e for e in self._inputs.read() if not e.get("late")]
        if not entries:
            return
        path = self.session_dir / "inputs.bin"
        with open(path, "rb") as fh:
            for entry in entries:
                shape = tuple(int(s) for s in entry["shape"])
                fh.seek(int(entry["offset"]))
                data = np.frombuffer(fh.read(int(entry["nbytes"])), dtype=np.float32)
                if data.size != int(np.prod(shape)):
                    continue
                if self._sum is None:
                    self._sum = np.zeros(shape)
                    self._affine = np.asarray(entry["affine"], dtype=float)
                if self._sum.shape != shape:
                    continue  # another geometry: not part of the mean
                self._sum += data.reshape(shape)
                self._n += 1

    def _masks(self) -> dict[str, np.ndarray]:
        folder = self.session_dir / "rois"
        out = {}
        for path in sorted(folder.glob("*.nii*")) if folder.is_dir() else []:
            name = path.name.split(".nii")[0]
            name = name[4:] if name.startswith("roi-") else name
            try:
                out[name] = np.asarray(nib.load(path).dataobj) > 0
            except Exception:  # being written; next request
                continue
        return out

    def _latest_map(self) -> tuple[Path, dict[str, str]] | None:
        folder = self.session_dir / "maps"
        best = None
        for path in folder.glob("*.nii*") if folder.is_dir() else []:
            m = _MAP_NAMES[0].match(path.name) or _MAP_NAMES[1].match(path.name)
            if m is None:
                continue
            found = {"kind": "map", **m.groupdict()}
            key = (int(m["vol"]), found["kind"] == "change", found["name"] == "alff", path.name)
            if best is None or key > best[0]:
                best = (key, path, found)
        return None if best is None else (best[1], best[2])

    def payload(self) -> dict[str, Any]:
        """Mean EPI, ROI labels and change-map slices (JSON-ready; cached until new data)."""
        with self._lock:
            self._update_mean()
            latest = self._latest_map()
            key = (self._n, latest[0].name if latest else None,
                   len(list((self.session_dir / "rois").glob("*.nii*")))
                   if (self.session_dir / "rois").is_dir() else 0)
            if key == self._cache_key and self._cache is not None:
                return self._cache
            out = self._build(latest)
            self._cache_key, self._cache = key, out
            return out

    def _build(self, latest) -> dict[str, Any]:
        if self._sum is None or self._n == 0:
            return {"n": 0}
        affine = self._affine
        ornt = nib.orientations.io_orientation(affine)
        mean = nib.orientations.apply_orientation(self._sum / self._n, ornt)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        zooms_ras = np.empty(3)
        zooms_ras[ornt[:, 0].astype(int)] = zooms
        masks = {k: nib.orientations.apply_orientation(v, ornt)
                 for k, v in self._masks().items() if v.shape == self._sum.shape}
        brain = masks.pop("brain_mask", None)
        rois = list(masks)
        centre_roi = self.roi if self.roi in masks else (rois[0] if rois else None)
        if centre_roi is not None and masks[centre_roi].any():
            pos = tuple(int(round(c)) for c in np.argwhere(masks[centre_roi]).mean(axis=0))
        else:
            pos = tuple(s // 2 for s in mean.shape)
        inside = mean[brain] if brain is not None and brain.any() else mean.ravel()
        lo, hi = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        gray = np.clip((mean - lo) * scale, 0, 255).astype(np.uint8)
        labels = np.zeros(mean.shape, np.uint8)
        for k, name in enumerate(rois, start=1):
            labels[masks[name] & (labels == 0)] = k
        out: dict[str, Any] = {"n": self._n, "cut": list(pos), "rois": rois,
                               "centre_roi": centre_roi, "views": {}}
        change = None
        if latest is not None:
            try:
                img = nib.load(latest[0])
                change = nib.orientations.apply_orientation(
                    np.asarray(img.dataobj, dtype=np.float32), ornt)
            except Exception:  # being written; next request
                change = None
            if change is not None and change.shape == mean.shape:
                vals = np.abs(change[brain] if brain is not None else change)
                vals = vals[np.isfinite(vals) & (vals > 0)]
                vmax = float(np.percentile(vals, 99)) if vals.size else 0.0
                out["map"] = {"file": latest[0].name, "name": latest[1]["name"],
                              "kind": latest[1]["kind"], "condition": latest[1]["cond"],
                              "volume": int(latest[1]["vol"]), "vmax": vmax}
                q = np.clip(np.nan_to_num(change) / vmax * 127, -127, 127) if vmax > 0 \
                    else np.zeros(change.shape)
                change = np.round(q).astype(np.int8)
            else:
                change = None
        for view in _VIEWS:
            g = _cut(gray, view, pos)
            entry = {"w": int(g.shape[1]), "h": int(g.shape[0]),
                     "aspect": _aspect(view, zooms_ras), "gray": _b64(g),
                     "labels": _b64(_cut(labels, view, pos))}
            if change is not None:
                entry["map"] = _b64(_cut(change, view, pos))
            out["views"][view] = entry
        return out
