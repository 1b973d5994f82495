"""Offline analysis mode: per-subject maps with the real-time kernels, group statistics,
graph metrics, ICA and classification over a BIDS cohort, scaled out with Dask.
"""
