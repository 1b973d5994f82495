"""Operator commands are applied by the processing thread between volumes and recorded."""

import threading
from types import SimpleNamespace

from rtfb.dashboard.commands import CommandQueue, OperatorCommand
from rtfb.session.operator import apply_commands
from rtfb.session.record import SessionRecorder
from rtfb.session.record_reader import read_jsonl


def test_commands_are_applied_in_order_and_recorded(tmp_path):
    recorder = SessionRecorder(tmp_path)
    session = SimpleNamespace(commands=CommandQueue(), feedback_paused=False,
                              status=SimpleNamespace(index=-1), recorder=recorder)
    stop = threading.Event()
    assert apply_commands(session, stop) == 0
    session.commands.put(OperatorCommand("mark", "before the first volume"))
    apply_commands(session, stop)
    session.status.index = 41
    for cmd in (OperatorCommand("mark", "needle in"), OperatorCommand("pause")):
        session.commands.put(cmd)
    assert apply_commands(session, stop) == 2
    assert session.feedback_paused and not stop.is_set()
    session.status.index = 42
    session.commands.put(OperatorCommand("resume"))
    session.commands.put(OperatorCommand("stop", "patient moved"))
    apply_commands(session, stop)
    assert not session.feedback_paused and stop.is_set()
    recorder.close()
    events = read_jsonl(tmp_path / "events.jsonl")
    assert [(e["kind"], e.get("index")) for e in events] == [
        ("mark", None), ("mark", 41), ("feedback_pause", 41), ("feedback_resume", 42),
        ("stop", 42)]
    assert events[1]["message"] == "needle in" and events[1]["source"] == "dashboard"
    assert events[-1]["message"].endswith("patient moved")
    assert all(e["time_requested"] <= e["time"] for e in events)
    assert len({e["command_id"] for e in events}) == 5
