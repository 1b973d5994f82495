"""Session protocols: TOML files -> validated, frozen dataclasses.

>>> from rtfb.config import load_protocol
>>> protocol = load_protocol("protocols/insula_alff_downregulation.toml")  # doctest: +SKIP
>>> protocol.metric.kind, protocol.feedback.direction  # doctest: +SKIP
('alff', 'down')

Keys, defaults and the shipped protocols: ``docs/protocols.md``.
"""

from ..exceptions import ProtocolError
from .model import (
    Block,
    FeedbackConfig,
    FrozenMap,
    MetricConfig,
    MniSphere,
    OutputConfig,
    PreprocessConfig,
    Protocol,
    RoiConfig,
    SessionConfig,
)
from .protocol import load_protocol, loads_protocol, parse_protocol

__all__ = [
    "Block",
    "FeedbackConfig",
    "FrozenMap",
    "MetricConfig",
    "MniSphere",
    "OutputConfig",
    "PreprocessConfig",
    "Protocol",
    "ProtocolError",
    "RoiConfig",
    "SessionConfig",
    "load_protocol",
    "loads_protocol",
    "parse_protocol",
]
