"""The dashboard's HTTP server on the real loopback network (no browser)."""

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from rtfb.dashboard.commands import CommandQueue, OperatorCommand
from rtfb.dashboard.model import DashboardModel
from rtfb.dashboard.server import DashboardServer, check_address


def _msg(i, **kw):
    msg = {"schema_version": "1.1", "type": "feedback", "session_id": "s", "volume_index": i,
           "acquisition_time": None, "time_received": 1.0, "time_published": 2.0,
           "value": 0.5, "raw": {"alff": 1.0 + i}, "fd": 0.1, "flags": [], "target": 0.75,
           "block": {"index": 0, "condition": "regulate", "cue": "", "feedback": True},
           "display": {"show_bar": True, "state": "feedback"},
           "qa": {"tsnr": {"brain": 50.0}, "dvars": 3.0, "dvars_z": 0.1, "spike": False},
           "baseline": 1.5}
    msg.update(kw)
    return msg


def _request(url, method="GET", token=None, body=None, host=None):
    req = urllib.request.Request(url, data=body, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if host is not None:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def live():
    model, queue = DashboardModel("live"), CommandQueue()
    state = {"accepting": True}
    server = DashboardServer(model, port=0, commands=queue,
                             accepting=lambda: state["accepting"]).start()
    try:
        yield server, model, queue, state
    finally:
        server.stop()


def test_status_page_and_static_files(live):
    server, model, _, _ = live
    model.ingest_message("feedback", _msg(0))
    model.ingest_message("feedback", _msg(1))
    model.ingest_volume({"index": 1, "motion": [0.1] * 6, "latency_ms": 12.5, "flags": ["stale"],
                         "block": {"index": 0, "condition": "regulate", "feedback": True}})
    code, body = _request(server.url + "api/status")
    status = json.loads(body)
    assert code == 200
    assert status["processed"] == 2 and status["index"] == 1
    assert status["block"] == "regulate" and status["latency_ms"] == 12.5
    assert status["mode"] == "live" and status["done"] is False
    snap = json.loads(_request(server.url + "api/snapshot")[1])
    assert [r["i"] for r in snap["rows"]] == [0, 1]
    assert snap["rows"][1]["motion"] == [0.1] * 6 and snap["rows"][1]["qa"]["tsnr"]["brain"] == 50
    assert [e["kind"] for e in snap["events"]] == ["stale"]
    code, page = _request(server.url)
    assert code == 200 and b"rtfb dashboard" in page
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "dashboard.js", "uPlot.LICENSE"):
        assert _request(server.url + "static/" + name)[0] == 200


def test_controls_need_the_token(live):
    server, _, queue, state = live
    url = server.url + "api/mark"
    body = json.dumps({"label": "needle in"}).encode()
    assert _request(url, "POST", None, body)[0] == 401
    assert _request(url, "POST", "wrong", body)[0] == 403
    assert _request(server.url + "api/stop", "POST", "", b"")[0] == 401
    assert queue.drain() == []  # nothing reached the session
    code, reply = _request(url, "POST", server.token, body)
    assert code == 202 and json.loads(reply)["label"] == "needle in"
    for kind in ("pause", "resume", "stop"):
        assert _request(server.url + f"api/{kind}", "POST", server.token, b"")[0] == 202
    assert [c.kind for c in queue.drain()] == ["mark", "pause", "resume", "stop"]
    assert _request(url, "POST", server.token, b'{"label": ""}')[0] == 400
    assert _request(url, "POST", server.token, b"not json")[0] == 400
    assert _request(url, "POST", server.token, json.dumps({"label": "x" * 300}).encode())[0] \
        == 400
    assert _request(server.url + "api/reboot", "POST", server.token, b"")[0] == 404
    state["accepting"] = False  # the session ended
    assert _request(url, "POST", server.token, body)[0] == 409
    assert queue.drain() == []


def test_only_loopback_unless_asked():
    with pytest.raises(ValueError, match="loopback"):
        DashboardServer(DashboardModel(), host="0.0.0.0", port=0)
    model = DashboardModel()
    server = DashboardServer(model, port=0).start()  # default: 127.0.0.1
    try:
        assert server.url.startswith("http://127.0.0.1:")
        sock = server._sock.getsockname()
        assert sock[0] == "127.0.0.1"
        # a page served under another host name (DNS rebinding) is refused
        assert _request(server.url + "api/status", host="evil.example")[0] == 400
        with pytest.raises(OSError):  # the port is taken
            check_address("127.0.0.1", server.port)
        assert server.token is None  # no command queue: no controls at all
    finally:
        server.stop()
    with pytest.raises(ValueError, match="port"):
        check_address("127.0.0.1", 70000)


def test_event_stream_sends_snapshot_then_patches(live):
    server, model, _, _ = live
    model.ingest_message("feedback", _msg(0))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/api/stream")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")

    def next_event():
        lines = []
        while True:
            line = resp.fp.readline().decode()
            if line == "\n" and lines:
                return json.loads("".join(lines))
            if line.startswith("data: "):
                lines.append(line[6:])

    snap = next_event()
    assert snap["type"] == "snapshot" and [r["i"] for r in snap["rows"]] == [0]
    model.ingest_message("feedback", _msg(1, qa={"tsnr": {"brain": 40.0}, "dvars": 9.0,
                                                 "dvars_z": 8.0, "spike": True}))
    row = next_event()
    assert row["type"] == "row" and row["row"]["i"] == 1
    event = next_event()
    assert event["type"] == "event" and event["event"]["kind"] == "spike"
    model.ingest_event({"kind": "mark", "message": "needle in", "index": 1, "time": time.time()})
    assert next_event()["event"]["message"] == "needle in"
    conn.close()


def test_command_validation():
    with pytest.raises(ValueError, match="mark"):
        OperatorCommand("reboot")
    with pytest.raises(ValueError, match="label"):
        OperatorCommand("mark", "   ")
    assert OperatorCommand("mark", " needle\n in ").label == "needle in"
    a, b = OperatorCommand("pause"), OperatorCommand("resume")
    assert b.id > a.id


def test_free_port_is_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        taken = s.getsockname()[1]
        s.listen(1)
        with pytest.raises(OSError):
            DashboardServer(DashboardModel(), port=taken).start()


def test_status_says_whether_a_participant_display_is_connected():
    model = DashboardModel()
    assert model.snapshot()["status"]["display"] is None  # not known yet
    model.ingest_event({"kind": "display", "code": "display_connected", "index": 3,
                        "message": "participant display connected", "time": time.time()})
    assert model.snapshot()["status"]["display"] is True
    model.ingest_event({"kind": "warning", "code": "display_lost", "index": 9,
                        "message": "participant display disconnected", "time": time.time()})
    status = model.snapshot()["status"]
    assert status["display"] is False
    kinds = [e["kind"] for e in model.snapshot()["events"]]
    assert kinds == ["display", "warning"]  # both listed for the operator
