"""What a session builds from its protocol once the reference volume is known.

Pure factories (no session state): the preprocessor fitted on the reference, the metric
engine, the running QA and the feedback mapper. :class:`rtfb.session.runner.Session` calls
them when its reference is accepted (or rebuilt from the record on resume and replay).
"""

from __future__ import annotations

import numpy as np

from ..feedback.mapping import FeedbackMapper
from ..ingest import Volume
from ..metrics.qa import RunningQA
from ..preprocess.pipeline import Preprocessor
from .metric_engine import MetricEngine

__all__ = ["build_engine", "build_mapper", "build_preprocessor", "build_qa"]


def build_preprocessor(protocol, reference: Volume, mask=None) -> Preprocessor:
    """The protocol's preprocessing fitted on ``reference`` (``mask``: a fixed brain mask,
    None to compute it from the reference).
    """
    pp = protocol.preprocess
    return Preprocessor(
        realign=pp.realign, interpolation=pp.interpolation,
        smoothing_fwhm=pp.smoothing_fwhm, drift=pp.drift, drift_order=pp.drift_order,
        motion_regressors=pp.motion_regressors, glm=pp.glm, window=pp.glm_window,
        n_expected=protocol.session.volumes, tr=protocol.session.tr,
        fd_threshold=pp.fd_threshold, mask=mask,
    ).fit(reference)


def build_engine(protocol, preprocessor: Preprocessor, rois: dict) -> MetricEngine:
    """The protocol's metric (and maps) on windows cleaned by ``preprocessor``."""
    m = protocol.metric
    return MetricEngine(
        m.kind, preprocessor.mask_, rois, roi=m.roi, seed=m.seed, target=m.target,
        window=m.window, tr=protocol.session.tr, band=tuple(m.band),
        neighborhood=m.neighborhood, maps=tuple(m.maps), cleaner=preprocessor,
        subtract_roi=getattr(m, "subtract_roi", None), convention=m.convention)


def build_qa(mask: np.ndarray, rois: dict) -> RunningQA:
    """Running QA of the brain and of each ROI (positions of their voxels in the in-mask
    vectors).
    """
    in_mask = np.cumsum(mask.ravel()) - 1  # voxel -> position in the in-mask vector
    return RunningQA({name: in_mask[np.flatnonzero(roi.ravel() & mask.ravel())]
                      for name, roi in rois.items()})


def build_mapper(feedback) -> FeedbackMapper:
    """The protocol's metric -> display value mapping (``feedback`` None: monitoring, whose
    values are recorded with a zero baseline and never shown).
    """
    if feedback is None:
        mapper = FeedbackMapper()
        mapper.set_baseline(0.0)
        return mapper
    mapper = FeedbackMapper(direction=feedback.direction, scale=feedback.scale,
                            clip=tuple(feedback.clip), smoothing=feedback.smoothing,
                            target=feedback.target, change=feedback.change)
    if feedback.baseline == "none":
        mapper.set_baseline(0.0)
    return mapper
