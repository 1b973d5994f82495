"""Operator marks (dashboard) appear in the session report with their volume index."""

import json

import pytest

pytest.importorskip("matplotlib")

from rtfb.session.record_reader import load_record  # noqa: E402
from rtfb.session.report import build_report_html  # noqa: E402

from ._fake_record import write_fake_session  # noqa: E402


def test_marks_and_feedback_pauses_are_listed(tmp_path):
    rec = write_fake_session(tmp_path)
    with open(rec["dir"] / "events.jsonl", "a") as fh:
        for kind, index, message in (("mark", 23, "needle <in>"),
                                     ("feedback_pause", 30, "paused by the operator"),
                                     ("mark", 41, "needle out")):
            fh.write(json.dumps({"time": 1.8e9, "kind": kind, "index": index,
                                 "message": message, "source": "dashboard"}) + "\n")
    html = build_report_html(load_record(rec["dir"]))
    # listed in the events table with their volume index (label escaped)
    assert "<td>mark</td><td>23</td><td>needle &lt;in&gt;</td>" in html
    assert "<td>mark</td><td>41</td><td>needle out</td>" in html
    assert "<td>feedback_pause</td><td>30</td>" in html
    assert "events marked by the operator" in html
