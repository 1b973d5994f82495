import hashlib
import json

import numpy as np
import pytest

from rtfb.session.record_reader import SessionRecord, load_record, read_jsonl

from ._fake_record import MISSING, N_EXPECTED, SHAPE, write_fake_session


@pytest.fixture
def fake(tmp_path):
    return write_fake_session(tmp_path)


# ---------------------------------------------------------------- read_jsonl
def test_read_jsonl_complete_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"b": null, "c": [1, 2]}\n')
    assert read_jsonl(path) == [{"a": 1}, {"b": None, "c": [1, 2]}]


def test_read_jsonl_ignores_cut_last_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    # a last line that happens to be valid JSON but lacks its newline is still cut
    path.write_text('{"a": 1}\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}]


@pytest.mark.parametrize("text", ["", '{"a": 1', "\n"])
def test_read_jsonl_empty_or_only_cut(tmp_path, text):
    path = tmp_path / "a.jsonl"
    path.write_text(text)
    assert read_jsonl(path) == []


def test_read_jsonl_bad_complete_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected a JSON object"):
        read_jsonl(path)


def test_read_jsonl_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_jsonl(tmp_path / "nothing.jsonl")


# ---------------------------------------------------------------- load_record
def test_load_record_parses_everything(fake):
    record = load_record(fake["dir"])
    assert isinstance(record, SessionRecord)
    assert record.path == fake["dir"]
    assert record.session == fake["session"]
    assert record.session_id == fake["session"]["session_id"]
    assert record.inputs == fake["inputs"]
    assert record.volumes == fake["volumes"]
    assert record.events == fake["events"]
    assert record.messages == fake["messages"]
    assert len(record.inputs) == N_EXPECTED - 1
    assert record.volumes[0]["feedback"] is None  # warm-up null kept as None
    assert record.map_files() == []


def test_load_record_accepts_str_path(fake):
    assert load_record(str(fake["dir"])).path == fake["dir"]


def test_load_record_ignores_cut_last_lines(tmp_path):
    fake = write_fake_session(tmp_path, cut_last_line=True)
    record = load_record(fake["dir"])
    assert len(record.volumes) == len(fake["volumes"])
    assert len(record.inputs) == len(fake["inputs"])
    assert len(record.events) == len(fake["events"])
    assert len(record.messages) == len(fake["messages"])


def test_load_record_missing_session_json(fake):
    (fake["dir"] / "session.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"session\.json"):
        load_record(fake["dir"])


@pytest.mark.parametrize("name", ["inputs.jsonl", "volumes.jsonl", "events.jsonl",
                                  "messages.jsonl"])
def test_load_record_missing_jsonl_names_it(fake, name):
    (fake["dir"] / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        load_record(fake["dir"])


def test_load_record_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_session"):
        load_record(tmp_path / "no_such_session")


def test_load_record_bad_session_json(fake):
    path = fake["dir"] / "session.json"
    path.write_text(json.dumps({**fake["session"], "format_version": 2}))
    with pytest.raises(ValueError, match="format_version 2"):
        load_record(fake["dir"])
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"session\.json"):
        load_record(fake["dir"])


# ---------------------------------------------------------------- input volumes
def test_input_volume_round_trip(fake):
    record = load_record(fake["dir"])
    for i in (0, 5, len(record.inputs) - 1, -1):
        volume = record.input_volume(i, verify=True)
        assert volume.dtype == np.float32
        assert volume.shape == SHAPE
        np.testing.assert_array_equal(volume, fake["arrays"][i])
    volume = record.input_volume(3)
    assert hashlib.sha256(volume.tobytes()).hexdigest() == record.inputs[3]["sha256"]


def test_input_position_by_scanner_index(fake):
    record = load_record(fake["dir"])
    position = record.input_position(MISSING + 1)
    assert position == MISSING  # volume MISSING was never received
    np.testing.assert_array_equal(record.input_volume(position), fake["arrays"][MISSING])
    with pytest.raises(KeyError, match=str(MISSING)):
        record.input_position(MISSING)


def test_input_volume_out_of_range(fake):
    record = load_record(fake["dir"])
    with pytest.raises(IndexError, match="out of range"):
        record.input_volume(len(record.inputs))


def test_input_volume_verify_detects_corruption(fake):
    path = fake["dir"] / "inputs.bin"
    raw = bytearray(path.read_bytes())
    raw[4] ^= 0xFF
    path.write_bytes(bytes(raw))
    record = load_record(fake["dir"])
    record.input_volume(0)  # no check by default
    with pytest.raises(ValueError, match="sha256 mismatch"):
        record.input_volume(0, verify=True)


def test_input_volume_truncated_or_missing_bin(fake):
    path = fake["dir"] / "inputs.bin"
    record = load_record(fake["dir"])
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 10)
    record.input_volume(0)
    with pytest.raises(ValueError, match="too short"):
        record.input_volume(-1)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"inputs\.bin"):
        record.input_volume(0)


def test_input_volume_inconsistent_entry(fake):
    record = load_record(fake["dir"])
    record.inputs[0] = {**record.inputs[0], "nbytes": 12}
    with pytest.raises(ValueError, match="does not match float32 shape"):
        record.input_volume(0)
    del record.inputs[0]["offset"]
    with pytest.raises(ValueError, match="offset"):
        record.input_volume(0)


def test_mean_input(fake, tmp_path):
    record = load_record(fake["dir"])
    expected = np.mean(np.stack(fake["arrays"]).astype(np.float64), axis=0)
    np.testing.assert_allclose(record.mean_input(), expected, rtol=1e-6)
    empty = SessionRecord(path=tmp_path, session={})
    assert empty.mean_input() is None
