import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from rtfb.session.record_reader import load_record  # noqa: E402
from rtfb.session.report import (  # noqa: E402
    build_report_html,
    feedback_targets,
    find_fd_threshold,
    write_report,
)

from ._fake_record import (  # noqa: E402
    FD_THRESHOLD,
    MISSING,
    N_EXPECTED,
    TARGET,
    write_fake_session,
)

PNG_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}


class _TagChecker(HTMLParser):
    """Checks that every non-void element is closed, in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.seen = [], [], []

    def handle_starttag(self, tag, attrs):
        self.seen.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def check_html(text):
    assert text.startswith("<!DOCTYPE html>")
    checker = _TagChecker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, checker.errors
    assert checker.stack == []
    assert {"html", "head", "title", "body"} <= set(checker.seen)
    images = PNG_URI.findall(text)
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    return images


def summary(text, label):
    match = re.search(rf"<th>{re.escape(label)}</th><td>([^<]*)</td>", text)
    assert match, label
    return match.group(1)


def section_titles(text):
    return re.findall(r"<h2>([^<]+)</h2>", text)


def test_full_report(tmp_path):
    fake = write_fake_session(tmp_path)
    out = write_report(fake["dir"])
    assert out == fake["dir"] / "report.html"
    text = out.read_text(encoding="utf-8")
    images = check_html(text)
    assert len(images) == 4  # feedback, metrics, motion, latency; no maps
    assert section_titles(text) == ["Summary", "Feedback", "Per block", "ROI metrics", "Motion",
                                    "Latency", "Events"]

    volumes = fake["volumes"]
    latency = np.array([v["latency_ms"] for v in volumes])
    n_censored = sum(v["censored"] for v in volumes)
    assert n_censored == 2
    assert summary(text, "Session id") == fake["session"]["session_id"]
    assert summary(text, "Protocol") == "insula_alff_down"
    assert summary(text, "Started") == fake["session"]["started"]
    assert summary(text, "rtfb version (recorded)") == "0.1.0.dev0"
    assert summary(text, "Volumes expected") == str(N_EXPECTED)
    assert summary(text, "Volumes received") == str(N_EXPECTED - 1)
    assert summary(text, "Volumes processed") == str(N_EXPECTED - 1)
    assert summary(text, "Missing volumes") == f"1 (indices {MISSING})"
    assert summary(text, "Late volumes") == "1"
    assert summary(text, "Censored volumes").startswith(f"{n_censored} (")
    assert summary(text, "Latency median") == f"{np.median(latency):.1f} ms"
    assert summary(text, "Latency p95") == f"{np.percentile(latency, 95):.1f} ms"
    assert summary(text, "Warnings / errors") == "1 / 0"
    assert "did not finish cleanly" not in text

    events = text.split('<section id="events">')[1]
    for kind in ("start", "missing", "late", "warning", "end"):
        assert f'<tr class="{kind}">' in events
    assert '<tr class="block">' not in events  # blocks are in the plots
    assert "queue &lt;backlog&gt; of 2 volumes" in events  # escaped


def test_report_with_maps(tmp_path):
    fake = write_fake_session(tmp_path, maps=True)
    out = write_report(fake["dir"], out=tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html"
    assert not (fake["dir"] / "report.html").exists()
    text = out.read_text(encoding="utf-8")
    images = check_html(text)
    assert len(images) == 5
    assert section_titles(text)[-1] == "Maps"
    assert 'alt="map alff_needle_vol-00059.nii.gz"' in text
    assert f"mean of the {N_EXPECTED - 1} recorded input volumes" in text


def test_report_maps_without_inputs_bin_names_it(tmp_path):
    fake = write_fake_session(tmp_path, maps=True)
    (fake["dir"] / "inputs.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"inputs\.bin"):
        write_report(fake["dir"])


def test_report_unreadable_map_is_noted(tmp_path):
    fake = write_fake_session(tmp_path, maps=True)
    (fake["dir"] / "maps" / "psc_needle_vol-00030.nii.gz").write_bytes(b"\x1f\x8b cut")
    text = write_report(fake["dir"]).read_text(encoding="utf-8")
    assert len(check_html(text)) == 5
    assert "Could not plot psc_needle_vol-00030.nii.gz" in text


def test_cut_last_line_ignored(tmp_path):
    fake = write_fake_session(tmp_path, cut_last_line=True, ended=False)
    text = write_report(fake["dir"]).read_text(encoding="utf-8")
    assert len(check_html(text)) == 4
    assert summary(text, "Volumes processed") == str(N_EXPECTED - 1)
    assert summary(text, "Volumes received") == str(N_EXPECTED - 1)
    assert "did not finish cleanly" in text


def test_partial_session_in_warm_up(tmp_path):
    # killed after 6 volumes: every feedback and metric value is still null
    fake = write_fake_session(tmp_path, n_volumes=6, ended=False, cut_last_line=True)
    assert all(v["feedback"] is None for v in fake["volumes"])
    text = write_report(fake["dir"]).read_text(encoding="utf-8")
    assert len(check_html(text)) == 4
    assert summary(text, "Volumes processed") == "6"
    assert summary(text, "Missing volumes") == "0"


def test_empty_record(tmp_path):
    fake = write_fake_session(tmp_path, n_volumes=0, ended=False)
    for name in ("inputs", "volumes", "events", "messages"):
        (fake["dir"] / f"{name}.jsonl").write_text("")
    (fake["dir"] / "inputs.bin").write_bytes(b"")
    text = write_report(fake["dir"]).read_text(encoding="utf-8")
    assert check_html(text) == []
    assert section_titles(text) == ["Summary", "Feedback", "ROI metrics", "Motion", "Latency",
                                    "Events"]
    assert summary(text, "Volumes processed") == "0"
    assert summary(text, "Latency median") == "n/a"
    assert "No volume was processed." in text
    assert "No events recorded." in text


def test_no_motion(tmp_path):
    fake = write_fake_session(tmp_path, motion=False)
    text = write_report(fake["dir"]).read_text(encoding="utf-8")
    assert len(check_html(text)) == 3
    assert "No motion parameters recorded (realignment off)." in text
    assert summary(text, "Censored volumes").startswith("0 (")


def test_missing_session_json_raises(tmp_path):
    fake = write_fake_session(tmp_path)
    (fake["dir"] / "session.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(fake["dir"] / "session.json"))):
        write_report(fake["dir"])
    assert not (fake["dir"] / "report.html").exists()


def test_missing_events_raises(tmp_path):
    fake = write_fake_session(tmp_path)
    (fake["dir"] / "events.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"events\.jsonl"):
        write_report(fake["dir"])


def test_html_is_escaped(tmp_path):
    fake = write_fake_session(tmp_path, protocol_name="x")
    path = fake["dir"] / "session.json"
    path.write_text(json.dumps({**fake["session"], "protocol_name": "<script>x</script>"}))
    text = write_report(fake["dir"]).read_text(encoding="utf-8")
    check_html(text)
    assert "<script>" not in text
    assert summary(text, "Protocol") == "&lt;script&gt;x&lt;/script&gt;"


def test_fd_threshold_and_target_found(tmp_path):
    fake = write_fake_session(tmp_path)
    record = load_record(fake["dir"])
    assert find_fd_threshold(record) == FD_THRESHOLD
    (fake["dir"] / "protocol.toml").write_text('name = "x"\n')
    assert find_fd_threshold(record) is None
    assert "FD censoring threshold is not recorded" in build_report_html(record)
    assert "FD censoring threshold is not recorded" not in build_report_html(
        record, fd_threshold=0.3)
    targets = feedback_targets(record.messages)
    assert len(targets) == len(record.messages)
    assert {t for _, t in targets} == {TARGET}
    assert feedback_targets([{"topic": "status", "message": {"state": "ok"}}]) == []
    assert feedback_targets([{"topic": "f", "message": {"feedback": {"target": {"value": 2}},
                                                "index": 4}}]) == [(4, 2.0)]


def test_no_target_line_without_feedback_blocks(tmp_path, monkeypatch):
    from rtfb.session import report

    fake = write_fake_session(tmp_path)
    seen = []
    original = report.plot_feedback

    def spy(series, runs, colors, targets, *args):
        seen.append(targets)
        return original(series, runs, colors, targets, *args)

    monkeypatch.setattr(report, "plot_feedback", spy)
    record = load_record(fake["dir"])
    build_report_html(record)
    assert seen[-1] and {t for _, t in seen[-1]} == {TARGET}
    for volume in record.volumes:  # a monitoring protocol: no block shows feedback
        volume["block"]["feedback"] = False
        volume["feedback"] = None
    text = build_report_html(record)
    assert seen[-1] == []
    assert len(check_html(text)) == 4
