"""A virtual participant: a synthetic subject whose target signal follows the protocol's blocks.

While the participant regulates (blocks with ``feedback = true``; in a protocol without any
feedback block, every block whose condition is not ``baseline``, ``rest`` or ``post``, e.g.
``needling``), its planted signals change by a known effect, delayed and smoothed by a
haemodynamic response (SPM's canonical double-gamma HRF, normalised to a unit step
response):

- ALFF: the left-insula oscillation's amplitude is scaled by ``1 + alff_change``
  (default -30 %);
- seed FC: ``fc_z_change`` (default +0.5) is added to the Fisher z of the seed-target
  correlation of the planted signals;
- PSC: ``psc_change`` percent (default +2 %) of its baseline is added to the left insula.

``responder``: the full effect in every run. ``non-responder``: none. ``learner``: the
effect grows with the run number, ``min(1, run / learning_runs)`` of the full effect (run 1
of 3: a third), so that a participant improves across sessions.

The block design comes from the protocol's TOML (read with :mod:`tomllib`: the simulator
does not import rtfb). The truth (model, effect sizes, the per-volume regulation time course
and the planted per-volume factors) goes into ``truth["participant"]`` of the subject, which
:func:`simulator.write_subject` saves in ``truth.json``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from .synthetic import SyntheticSubject, make_subject

# the standard library's TOML reader (tomli, its backport, on Python 3.10)
tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

__all__ = ["PARTICIPANT_MODELS", "ParticipantModel", "canonical_hrf", "make_participant",
           "protocol_blocks"]

PARTICIPANT_MODELS = ("responder", "non-responder", "learner")
_PASSIVE = ("baseline", "rest", "post")


def canonical_hrf(tr: float, duration: float = 32.0) -> np.ndarray:
    """SPM's canonical HRF (peak ~5 s, undershoot ~15 s) sampled every ``tr``, unit sum."""
    t = np.arange(0.0, duration, tr)
    h = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6.0
    return h / h.sum()


def protocol_blocks(protocol) -> tuple[float, list[dict]]:
    """TR and blocks (``condition``, ``volumes``, ``feedback``) of a protocol TOML file.

    Parameters
    ----------
    protocol : str | pathlib.Path | dict
        Protocol file, or its parsed tables.

    Returns
    -------
    tuple of (float, list of dict)
    """
    data = protocol if isinstance(protocol, dict) else tomllib.loads(
        Path(protocol).read_text(encoding="utf-8"))
    session = data.get("session", {})
    tr = float(session["tr"])
    blocks = data.get("blocks")
    if not blocks:
        return tr, [{"condition": "run", "volumes": int(session["volumes"]),
                     "feedback": bool(session.get("participant_feedback", True))}]
    return tr, [{"condition": b["condition"], "volumes": int(b["volumes"]),
                 "feedback": bool(b.get("feedback", False))} for b in blocks]


@dataclass
class ParticipantModel:
    """How a virtual participant regulates.

    Parameters
    ----------
    kind : {"responder", "non-responder", "learner"}
        Behaviour.
    alff_change : float
        Relative change of the insula oscillation amplitude while regulating.
    fc_z_change : float
        Fisher z added to the seed-target correlation while regulating.
    psc_change : float
        Percent signal change of the left insula while regulating.
    run : int
        Run (session) number of this participant, from 1 (learner only).
    learning_runs : int
        Runs a learner needs to reach the full effect.
    """

    kind: str = "responder"
    alff_change: float = -0.30
    fc_z_change: float = 0.5
    psc_change: float = 2.0
    run: int = 1
    learning_runs: int = 3

    def __post_init__(self):
        if self.kind not in PARTICIPANT_MODELS:
            raise ValueError(f"participant model must be one of {PARTICIPANT_MODELS}, got "
                             f"{self.kind!r}.")
        if int(self.run) < 1 or int(self.learning_runs) < 1:
            raise ValueError(f"run and learning_runs must be >= 1, got {self.run}, "
                             f"{self.learning_runs}.")
        if not -1.0 < self.alff_change:
            raise ValueError(f"alff_change must be > -1, got {self.alff_change}.")

    @property
    def gain(self) -> float:
        """Fraction of the full effect expressed in this run."""
        if self.kind == "non-responder":
            return 0.0
        if self.kind == "learner":
            return min(1.0, int(self.run) / int(self.learning_runs))
        return 1.0

    def regulation(self, blocks: list[dict], tr: float) -> np.ndarray:
        """Per-volume regulation in [0, 1]: the active blocks convolved with the HRF."""
        any_feedback = any(b["feedback"] for b in blocks)
        box = np.concatenate([
            np.full(b["volumes"], float(b["feedback"] if any_feedback
                                        else b["condition"] not in _PASSIVE))
            for b in blocks])
        return np.convolve(box, canonical_hrf(tr))[:box.size] * self.gain


def make_participant(protocol, model: ParticipantModel | str = "responder", *,
                     seed: int = 0, **subject_kwargs) -> SyntheticSubject:
    """A synthetic subject whose signals follow ``protocol``'s blocks as ``model`` says.

    Parameters
    ----------
    protocol : str | pathlib.Path | dict
        Protocol TOML file (or its tables): TR, volumes and blocks are taken from it.
    model : ParticipantModel | str
        The participant (a kind name uses the default effect sizes).
    seed : int
        Seed of the subject.
    **subject_kwargs
        Further arguments of :func:`simulator.make_subject` (shape, motion, ...).

    Returns
    -------
    SyntheticSubject
        With ``truth["participant"]``.
    """
    if isinstance(model, str):
        model = ParticipantModel(kind=model)
    tr, blocks = protocol_blocks(protocol)
    n = sum(b["volumes"] for b in blocks)
    r = model.regulation(blocks, tr)
    alff_scale = 1.0 + model.alff_change * r
    fc_shift = model.fc_z_change * r
    psc = model.psc_change * r
    subject_kwargs.setdefault("signal_margin", 2)  # smooth activation: ROI edges keep it
    subject = make_subject(n_volumes=n, tr=tr, seed=seed, alff_scale=alff_scale,
                           fc_z_shift=fc_shift, psc_change=psc, **subject_kwargs)
    subject.truth["participant"] = {
        **asdict(model), "gain": model.gain,
        "blocks": blocks,
        "effect_blocks": ("feedback = true" if any(b["feedback"] for b in blocks) else
                          f"conditions other than {', '.join(_PASSIVE)}"),
        "hrf": "SPM canonical double gamma (peaks 6 s and 16 s, ratio 1/6), unit sum",
        "regulation": [round(float(v), 6) for v in r],
        "alff_scale": [round(float(v), 6) for v in alff_scale],
        "fc_z_shift": [round(float(v), 6) for v in fc_shift],
        "psc_change_percent": [round(float(v), 6) for v in psc],
        "effects": {"alff": f"left_insula oscillation amplitude x (1 + {model.alff_change:g} "
                            f"r(t))",
                    "seed_fc": f"seed-target Fisher z + {model.fc_z_change:g} r(t)",
                    "psc": f"left_insula + {model.psc_change:g} % r(t) of its baseline"},
    }
    return subject
