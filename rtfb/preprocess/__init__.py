"""Real-time preprocessing: realignment, framewise displacement, nuisance regression,
smoothing, masks and ROIs; and the offline band-pass filter of other tools' pipelines.
"""

from .bandpass import bandpass

__all__ = ["bandpass"]
