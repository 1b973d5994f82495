"""Fuzzing (hypothesis, bounded example counts) of what comes from outside: protocol files,
command lines and TCP frames. Never a traceback, always the documented exit status, and the
receiver keeps serving the real sender."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import math
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtfb.config import ProtocolError, loads_protocol, parse_protocol
from rtfb.ingest.tcp import TCPReceiver, TCPSender, encode_frame
from tests.test_cli_errors import run_main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROTOCOLS = Path(__file__).parents[1] / "protocols"
SHIPPED = sorted(PROTOCOLS.glob("*.toml"))
def fuzz(n: int) -> settings:
    """Bounded, reproducible runs (no example database written into the repository)."""
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=True, database=None)

# -------------------------------------------------------------------------- protocol values
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e4, 1e4),
    st.sampled_from([0, -1, 1e9, 1e308, 2**63, 10**400, 0.5, 64, "none", "block:rest", "up",
                     "alff", "reho", "", "../../etc/passwd", "\x1b[31m\n"]),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


BASES = [tomllib.loads(p.read_text()) for p in SHIPPED]


@st.composite
def mutated_protocols(draw):
    base = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(base))
        path = draw(st.sampled_from(paths))
        parent = base
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if action == "set":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return base


@fuzz(120)
@given(mutated_protocols())
def test_protocol_mappings_give_protocol_errors_only(mapping):
    try:
        parse_protocol(mapping, source="fuzz.toml", base_dir=PROTOCOLS)
    except ProtocolError as err:
        assert str(err).startswith("fuzz.toml: ")
        assert "\n" not in str(err) and "\x1b" not in str(err)  # one line, whatever the keys


@fuzz(80)
@given(st.sampled_from(SHIPPED), st.data())
def test_protocol_texts_give_protocol_errors_only(path, data):
    text = path.read_text()
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    insert = data.draw(st.text(max_size=30) | st.sampled_from(["[", "]]", '"', "=", "\n[[",
                                                               "{a={b={c=1}}}", "[" * 3000]))
    mutated = text[:start] + insert + text[end:]
    try:
        loads_protocol(mutated, source="fuzz.toml", base_dir=PROTOCOLS)
    except ProtocolError as err:
        assert str(err).startswith("fuzz.toml: ")


# ---------------------------------------------------------------------------- command lines
weird = st.sampled_from(["-1", "0", "nan", "inf", "-inf", "1e999", "", " ", "abc", "../..",
                         "a/b", "tcp://", "tcp://127.0.0.1:0", "tcp://h:70000", "99999",
                         "\x1b[2J", "é", "--", "-", "3", "7", "0.5", "1e-9"])
run_options = st.lists(st.tuples(
    st.sampled_from(["--speed", "--participant", "--zmq", "--idle-timeout", "--out",
                     "--listen", "--key", "--feedback-key", "--resume", "--shape"]),
    st.lists(weird, min_size=1, max_size=3)), max_size=4)


@fuzz(60)
@given(protocol=st.sampled_from(["good", "missing", "garbage", "dir"]), options=run_options)
def test_run_command_lines(tmp_path_factory, capsys, protocol, options):
    tmp = tmp_path_factory.mktemp("argv")
    path = {"good": str(SHIPPED[0]), "missing": str(tmp / "missing.toml"),
            "garbage": str(tmp / "garbage.toml"), "dir": str(tmp)}[protocol]
    (tmp / "garbage.toml").write_bytes(b"\xff\x00[[[ = \n")
    argv = ["run", path, "--watch", str(tmp / "no-such-folder"), "--quiet"]
    for option, vals in options:
        argv += [option, *vals]
    proc = run_main(argv, capsys)  # the watch folder never exists: nothing may start
    assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], (argv, proc.stderr)
    assert "\x1b" not in proc.stderr


@fuzz(40)
@given(command=st.sampled_from(["replay", "report", "display"]),
       args=st.lists(weird | st.sampled_from(["--out", "--timeout", "--duration", "--size",
                                              "--address", "--screen", "--key"]), max_size=5))
def test_other_command_lines(tmp_path_factory, capsys, command, args):
    tmp = tmp_path_factory.mktemp("argv")
    argv = [command, *args]
    if command == "display":  # never a window, never more than a moment
        argv += ["--headless", "--duration", "0.2", "--address",
                 "tcp://127.0.0.1:9" if "--address" not in args else "tcp://127.0.0.1:9"]
    else:
        argv.insert(1, str(tmp / "no-such-session"))
    proc = run_main(argv, capsys)
    assert proc.returncode in (0, 2), (argv, proc.stdout, proc.stderr)
    if proc.returncode == 2:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "error:" in lines[0], (argv, proc.stderr)


# ------------------------------------------------------------------------------- TCP frames
KEY = bytes(range(50, 82))
SHAPE = (6, 5, 4)


@pytest.fixture(scope="module")
def live_receiver():
    with TCPReceiver(key=KEY, gap_timeout=60.0, auth_timeout=2.0, idle_timeout=2.0,
                     max_connections=4, first_index=None) as receiver:
        yield receiver


def _fresh_frame(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_frame(rng.normal(size=SHAPE).astype(np.float32), np.eye(4), 0, 2.0,
                        series="fuzz", key=KEY, nonce=bytes(16))


@st.composite
def hostile_bytes(draw):
    kind = draw(st.sampled_from(["random", "flip", "cut", "splice", "prefix"]))
    good = _fresh_frame(draw(st.integers(0, 3)))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "flip":
        i = draw(st.integers(0, len(good) - 1))
        return good[:i] + bytes([good[i] ^ draw(st.integers(1, 255))]) + good[i + 1:]
    if kind == "cut":
        return good[:draw(st.integers(0, len(good) - 1))]
    if kind == "splice":
        return good[:8] + draw(st.binary(max_size=200)) + good[8:]
    return b"RTFB" + draw(st.binary(min_size=4, max_size=4)) + draw(st.binary(max_size=64))


json_headers = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["version", "seq", "index", "shape", "dtype", "nbytes", "affine", "tr",
                         "acquisition_time", "series", "x"]), inner, max_size=10),
    max_leaves=20)


@fuzz(60)
@given(payload=hostile_bytes(), signed_header=st.none() | json_headers,
       tail=st.binary(max_size=100))
def test_tcp_frames_never_stop_the_receiver(live_receiver, caplog, payload, signed_header,
                                            tail):
    r = live_receiver
    caplog.set_level(logging.WARNING, logger="rtfb.ingest")
    with socket.create_connection(r.address, timeout=5) as sock:
        nonce = sock.recv(24)[8:]  # greeting
        if signed_header is not None:  # a key holder sending nonsense: authenticated header
            text = json.dumps(signed_header).encode()[:65536]
            prefix = b"RTFB" + struct.pack(">I", len(text))
            tag = hmac.new(KEY, b"rtfb tcp v2 header\0" + nonce + prefix + text,
                           hashlib.sha256).digest()
            payload = prefix + text + tag + tail
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(3)
            while sock.recv(4096):
                pass
        except OSError:
            pass
    # the real sender is served at once, and the volume gets through
    test_tcp_frames_never_stop_the_receiver.index += 1
    index = test_tcp_frames_never_stop_the_receiver.index
    with TCPSender(r.address, KEY) as sender:
        seq = sender.send(np.full(SHAPE, index, np.float32), np.eye(4), index, 2.0,
                          series="fuzz")
        assert sender.wait_for(seq, 10)["status"] == "accepted"
    item = r.get(timeout=10)
    assert item.index == index  # nothing else got in
    assert float(np.asarray(item.data).mean()) == index
    assert r.running
    assert not any("unexpected error" in rec.getMessage() for rec in caplog.records)
    assert not any(math.isnan(t.complete) for t in r.stats.timings)


test_tcp_frames_never_stop_the_receiver.index = 0


def test_tcp_fuzz_refused_everything_hostile(live_receiver):
    # after the fuzz run (module scope): no fuzz frame was ever accepted
    assert live_receiver.stats.other_series == 0
    assert live_receiver.stats.malformed > 0
