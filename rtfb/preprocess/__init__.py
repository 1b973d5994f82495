"""Real-time preprocessing: realignment, framewise displacement, nuisance regression,
smoothing, masks and ROIs.
"""
