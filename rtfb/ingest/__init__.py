"""Ingest: volumes from the scanner's export folder or a TCP stream, as :class:`Volume`."""

from .volume import ALLOWED_HEADER_FIELDS, Volume

__all__ = ["ALLOWED_HEADER_FIELDS", "Volume"]
