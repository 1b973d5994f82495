"""The virtual participant: effects follow the protocol's blocks after a haemodynamic lag."""

import json
from pathlib import Path

import numpy as np
import pytest

from simulator.__main__ import main
from simulator.participant import ParticipantModel, canonical_hrf, make_participant

PROTOCOLS = Path(__file__).resolve().parents[2] / "protocols"
TABLES = {"session": {"tr": 2.0, "volumes": 100},
          "blocks": [{"condition": "baseline", "volumes": 40, "feedback": False},
                     {"condition": "regulate", "volumes": 30, "feedback": True},
                     {"condition": "rest", "volumes": 30, "feedback": False}]}


def test_hrf_is_canonical():
    h = canonical_hrf(1.0)
    assert h.sum() == pytest.approx(1.0)
    assert 4 <= int(np.argmax(h)) <= 6  # peak about 5 s after onset
    assert h[12:20].min() < 0  # undershoot


def test_regulation_follows_blocks_with_lag():
    r = ParticipantModel("responder").regulation(TABLES["blocks"], 2.0)
    assert np.all(r[:41] == 0)  # nothing before (or at the first volume of) regulation
    assert r[41] < 0.1  # lagged onset
    assert np.allclose(r[50:70], 1.0, atol=0.05)  # plateau after ~10 s
    assert r[78] < 0.1  # back at rest after the lag
    assert ParticipantModel("non-responder").regulation(TABLES["blocks"], 2.0).max() == 0
    gains = [ParticipantModel("learner", run=k).gain for k in (1, 2, 3, 4)]
    assert gains == pytest.approx([1 / 3, 2 / 3, 1, 1])  # improves across runs


def test_monitoring_protocols_plant_the_effect_in_non_rest_blocks():
    blocks = [{"condition": "baseline", "volumes": 20, "feedback": False},
              {"condition": "needling", "volumes": 20, "feedback": False},
              {"condition": "post", "volumes": 20, "feedback": False}]
    r = ParticipantModel().regulation(blocks, 2.0)
    assert r[:21].max() == 0 and r[30:40].min() > 0.9 and r[55:].max() < 0.1


def test_planted_effects_in_the_truth_series():
    resp = make_participant(TABLES, "responder", shape=(16, 16, 10), seed=1)
    null = make_participant(TABLES, "non-responder", shape=(16, 16, 10), seed=1)
    part = resp.truth["participant"]
    assert part["kind"] == "responder" and len(part["regulation"]) == 100
    # PSC: +2 % of the baseline in the insula on the plateau, none for the non-responder
    psc_only = make_participant(TABLES, ParticipantModel("responder", alff_change=0.0),
                                shape=(16, 16, 10), seed=1)
    diff = (psc_only.series["left_insula"] - null.series["left_insula"]).mean(axis=0)
    base = null.series["left_insula"].mean()
    assert diff[:40] == pytest.approx(0, abs=1e-3)
    assert 100 * diff[55:70].mean() / base == pytest.approx(2.0, rel=0.05)
    assert np.allclose(null.truth["participant"]["alff_scale"], 1.0)
    plateau = slice(55, 70)  # after the HRF's overshoot
    assert np.array(part["alff_scale"])[plateau] == pytest.approx(0.7, abs=0.01)
    assert np.array(part["fc_z_shift"])[plateau] == pytest.approx(0.5, abs=0.02)


def test_cli_writes_participant_truth(tmp_path, capsys):
    out = tmp_path / "subj"
    assert main(["subject", "--out", str(out), "--shape", "16", "16", "10",
                 "--protocol", str(PROTOCOLS / "insula_alff_downregulation.toml"),
                 "--participant-model", "learner", "--participant-run", "2"]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["participant"]["gain"] == pytest.approx(2 / 3)
    assert truth["n_volumes"] == 450 and (out / "truth_series.npz").exists()
    assert "participant learner" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["subject", "--out", str(out), "--participant-model", "responder"])
    assert info.value.code == 2
    assert "--participant-model needs --protocol" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["subject", "--out", str(out), "--participant-model", "responder",
              "--protocol", str(tmp_path / "missing.toml")])
    assert info.value.code == 2
