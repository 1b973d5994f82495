import json
import re
from pathlib import Path

import pytest

from rtfb import __version__
from rtfb.cli import main
from rtfb.session.record_reader import load_record
from tests.session._protocols import free_port

PROTOCOLS = Path(__file__).parents[1] / "protocols"


def _short_protocol(tmp_path, name="insula_alff_downregulation", volumes=90, window=30):
    """A shipped protocol shortened to 3 blocks of volumes/3 (same keys and ROIs)."""
    text = (PROTOCOLS / f"{name}.toml").read_text()
    head, *blocks = text.split("[[blocks]]")
    last_tail = "\n[" + blocks[-1].split("\n[", 1)[1]
    blocks = [re.sub(r"volumes = \d+", f"volumes = {volumes // 3}", b.split("\n[", 1)[0])
              for b in blocks[:3]]
    text = head + "".join("[[blocks]]" + b for b in blocks) + last_tail
    text = re.sub(r"(\[session\][^\[]*?)volumes = \d+", rf"\g<1>volumes = {volumes}", text,
                  flags=re.S)
    text = re.sub(r"window = \d+", f"window = {window}", text)
    text = re.sub(r'zmq_address = "[^"]+"', f'zmq_address = "tcp://127.0.0.1:{free_port()}"',
                  text)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_commands(capsys):
    assert main([]) == 1
    out = capsys.readouterr().out
    for command in ("run", "replay", "report", "display"):
        assert command in out


def test_simulated_session_replay_and_report(tmp_path, capsys):
    protocol = _short_protocol(tmp_path)
    out = tmp_path / "sessions"
    assert main(["run", str(protocol), "--simulate", "--quiet", "--out", str(out),
                 "--speed", "100", "--shape", "20", "20", "12"]) == 0
    text = capsys.readouterr().out
    assert "90 volumes processed, 0 missing, 0 late" in text
    assert "headless display received" in text
    session_dir = next(out.glob("sub-anon_ses-*_task-insula_alff_downregulation"))
    record = load_record(session_dir)
    assert [v["index"] for v in record.volumes] == list(range(90))
    assert any(v["feedback"] is not None for v in record.volumes)
    assert (session_dir / "protocol.toml").exists()
    assert (session_dir / "rois" / "roi-left_insula.nii.gz").exists()
    truth = json.loads((session_dir / "simulation" / "truth.json").read_text())
    assert truth["participant"]["kind"] == "responder"  # --simulate's default participant

    assert main(["replay", str(session_dir), "--out", str(tmp_path / "replay")]) == 0
    assert "identical to the original (bit for bit)" in capsys.readouterr().out
    assert main(["report", str(session_dir)]) == 0
    assert (session_dir / "report.html").exists()


def test_monitoring_protocol_writes_change_maps(tmp_path, capsys):
    protocol = _short_protocol(tmp_path, "acupuncture_monitoring", volumes=90, window=20)
    out = tmp_path / "sessions"
    assert main(["run", str(protocol), "--simulate", "--quiet", "--out", str(out),
                 "--speed", "100", "--shape", "20", "20", "12",
                 "--participant-model", "non-responder"]) == 0
    session_dir = next(out.glob("sub-anon_ses-*"))
    truth = json.loads((session_dir / "simulation" / "truth.json").read_text())
    assert truth["participant"]["kind"] == "non-responder"
    assert set(truth["participant"]["alff_scale"]) == {1.0}
    maps = sorted(p.name for p in (session_dir / "maps").iterdir())
    assert any(m.startswith("alff-change_") for m in maps)
    assert any(m.startswith("reho-change_") for m in maps)
    record = load_record(session_dir)
    assert all(v["feedback"] is None for v in record.volumes)  # operator view only


def test_run_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", str(PROTOCOLS / "insula_alff_downregulation.toml")])  # no source
    assert "choose a source" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run"])
    assert "PROTOCOL" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "nothing" in err and "Traceback" not in err
