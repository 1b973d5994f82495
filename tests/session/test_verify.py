"""Resume and replay check the record first: same protocol, every input volume intact."""

import hashlib
import json
import shutil

import pytest

from rtfb.exceptions import RecordError
from rtfb.session.record_reader import load_record
from rtfb.session.verify import verify_inputs, verify_protocol
from tests.test_cli_errors import run_main
from tests.test_cli_installed import assert_usage_error, short_protocol


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One short simulated session (30 volumes), copied by each test that damages it."""
    from rtfb.cli import main

    root = tmp_path_factory.mktemp("verify")
    protocol = short_protocol(root, volumes=30, window=10)
    assert main(["run", str(protocol), "--simulate", "--quiet", "--speed", "200",
                 "--shape", "16", "16", "10", "--out", str(root / "sessions")]) == 0
    return next((root / "sessions").glob("sub-anon_ses-*")), protocol


@pytest.fixture
def copy(session, tmp_path):
    source, protocol = session
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target, protocol


def damage_volume(session_dir, index):
    """Flip one byte of received volume ``index`` in inputs.bin (sha256 oracle: hashlib)."""
    record = load_record(session_dir)
    position = record.input_position(index)
    entry = record.inputs[position]
    with open(session_dir / "inputs.bin", "r+b") as fh:
        fh.seek(entry["offset"] + entry["nbytes"] // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with open(session_dir / "inputs.bin", "rb") as fh:
        fh.seek(entry["offset"])
        assert hashlib.sha256(fh.read(entry["nbytes"])).hexdigest() != entry["sha256"]


def test_intact_record_passes(copy):
    session_dir, protocol = copy
    verify_protocol(session_dir)
    assert verify_inputs(session_dir) == 30


def test_replay_names_the_first_bad_volume(copy, capsys, tmp_path):
    session_dir, _ = copy
    damage_volume(session_dir, 17)
    damage_volume(session_dir, 23)
    proc = run_main(["replay", session_dir, "--out", tmp_path / "replayed"], capsys)
    assert_usage_error(proc, "inputs.bin", "received volume 17", "checksum")
    assert not (tmp_path / "replayed").exists()  # refused before anything ran


def test_resume_refuses_changed_inputs(copy, capsys):
    session_dir, _ = copy
    damage_volume(session_dir, 4)
    proc = run_main(["run", "--resume", session_dir, "--quiet"], capsys)
    assert_usage_error(proc, "received volume 4")


def test_resume_refuses_an_edited_protocol_copy(copy, capsys):
    session_dir, _ = copy
    path = session_dir / "protocol.toml"
    path.write_text(path.read_text().replace("scale = ", "scale = 0.5 #"))
    proc = run_main(["run", "--resume", session_dir, "--quiet"], capsys)
    assert_usage_error(proc, "protocol.toml", "changed since the session started")
    with pytest.raises(RecordError, match="changed since"):
        verify_protocol(session_dir)


def test_resume_refuses_another_protocol_file(copy, capsys, tmp_path):
    session_dir, protocol = copy
    other = tmp_path / "other.toml"
    other.write_text(protocol.read_text().replace("direction = ", "# \ndirection = "))
    proc = run_main(["run", str(other), "--resume", session_dir, "--quiet"], capsys)
    assert_usage_error(proc, "other.toml", "differs from the protocol")


def test_missing_checksum_record_is_refused(copy):
    session_dir, _ = copy
    info = json.loads((session_dir / "session.json").read_text())
    info.pop("protocol_sha256")
    (session_dir / "session.json").write_text(json.dumps(info))
    with pytest.raises(RecordError, match="no protocol_sha256"):
        verify_protocol(session_dir)
