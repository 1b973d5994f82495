"""Benchmarks, run as ``python -m rtfb.bench NAME`` (see ``docs/benchmarks.md``)."""
