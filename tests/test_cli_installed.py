"""The INSTALLED ``rtfb`` console script, run as users run it (a subprocess per command).

Every subcommand answers ``--help``; its main options work end to end; bad arguments,
protocols and paths give ONE line on stderr naming what is wrong and exit status 2, never a
traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtfb.cli import COMMANDS, build_parser
from tests.session._protocols import free_port

RTFB = Path(sys.executable).parent / "rtfb"
PROTOCOLS = Path(__file__).parents[1] / "protocols"
SUBCOMMANDS = tuple(COMMANDS)


def rtfb(*args, timeout=120, env=None, cwd=None) -> subprocess.CompletedProcess:
    assert RTFB.is_file(), f"the rtfb console script is not installed next to {sys.executable}"
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(RTFB), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def assert_usage_error(proc, *words):
    """Exit status 2 and exactly one line on stderr that names ``words``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert re.match(r"rtfb( \w+)?: error: ", lines[0]), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


def short_protocol(tmp_path, volumes=30, window=10, port=None):
    """The shipped ALFF protocol shortened to 3 blocks (simulator ROI, free ZeroMQ port)."""
    text = (PROTOCOLS / "insula_alff_downregulation.toml").read_text()
    head, *blocks = text.split("[[blocks]]")
    tail = "\n[" + blocks[-1].split("\n[", 1)[1]
    blocks = [re.sub(r"volumes = \d+", f"volumes = {volumes // 3}", b.split("\n[", 1)[0])
              for b in blocks[:3]]
    text = head + "".join("[[blocks]]" + b for b in blocks) + tail
    text = re.sub(r"(\[session\][^\[]*?)volumes = \d+", rf"\g<1>volumes = {volumes}", text,
                  flags=re.S)
    text = re.sub(r"window = \d+", f"window = {window}", text)
    text = re.sub(r"band = \[[^\]]*\]", "band = [0.01, 0.24]", text)
    text = re.sub(r'zmq_address = "[^"]+"',
                  f'zmq_address = "tcp://127.0.0.1:{port or free_port()}"', text)
    path = tmp_path / "short.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ --help
def test_every_subcommand_is_covered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS) >= {"run", "replay", "report", "display",
                                                    "analyze"}


@pytest.mark.parametrize("command", [(), ("--version",)] + [(c, "--help") for c in SUBCOMMANDS])
def test_help(command):
    proc = rtfb(*command, *(() if command and command[-1] in ("--help", "--version")
                             else ("--help",)))
    assert proc.returncode == 0, proc.stderr
    assert ("usage: rtfb" in proc.stdout) or proc.stdout.startswith("rtfb ")
    if command and command[0] == "display":  # every display option of README and docs
        for option in ("--headless", "--fullscr", "--screen", "--address", "--duration",
                       "--exit-on-end", "--timeout", "--size"):
            assert option in proc.stdout


# -------------------------------------------------------------------------- bad input
# (every case runs in-process in tests/test_cli_errors.py; one per subcommand runs here)
@pytest.mark.parametrize("args, words", [
    (("run", "{p}", "--simulate", "--speed", "nan"), ("--speed", "nan")),
    (("run", "{tmp}/missing.toml", "--simulate"), ("missing.toml", "not found")),
    (("run", "{p}", "--watch", "{tmp}", "--wait-display", "5"), ("--wait-display", "--simulate")),
    (("replay", "{tmp}/missing"), ("missing",)),
    (("report", "{tmp}/missing"), ("missing", "not found")),
    (("display", "--headless", "--timeout", "-1"), ("--timeout", "-1")),
    (("analyze", "{tmp}/missing", "--out", "{tmp}/deriv", "--scheduler", "synchronous"),
     ("missing",)),
])
def test_bad_arguments_one_line_status_2(tmp_path, args, words):
    protocol = short_protocol(tmp_path)
    args = [a.format(p=protocol, tmp=tmp_path) for a in args]
    assert_usage_error(rtfb(*args, cwd=tmp_path), *words)


def test_port_in_use_is_reported_before_the_session_starts(tmp_path):
    with socket.socket() as other:  # another program holds the feedback port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        protocol = short_protocol(tmp_path, port=port)
        proc = rtfb("run", protocol, "--simulate", "--quiet", "--out", tmp_path / "s",
                    cwd=tmp_path)
        assert_usage_error(proc, "zmq_address", str(port), "already in use")
        proc = rtfb("run", protocol, "--tcp", port, "--zmq", f"tcp://127.0.0.1:{free_port()}",
                    "--out", tmp_path / "s", cwd=tmp_path)
        assert_usage_error(proc, "--tcp", str(port), "already in use")
    assert not any((tmp_path / "s").iterdir())  # no session folder was created


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([str(RTFB), "--debug", "report", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


# --------------------------------------------------------------------- main options
def test_display_headless_runs(tmp_path):
    proc = rtfb("display", "--headless", "--duration", "1", "--timeout", "0.5",
                "--address", f"tcp://127.0.0.1:{free_port()}")
    assert proc.returncode == 0, proc.stderr
    assert "waiting" in proc.stdout


def test_run_simulate_with_headless_display_then_replay_and_report(tmp_path):
    port = free_port()
    protocol = short_protocol(tmp_path, volumes=30, window=10, port=port)
    display = subprocess.Popen(
        [str(RTFB), "display", "--headless", "--exit-on-end", "--duration", "300",
         "--address", f"tcp://127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the simulated scanner waits for the display (slow to start on a busy machine):
        # otherwise 30 volumes at 50x could be over before it connects
        run = rtfb("run", protocol, "--simulate", "--quiet", "--speed", "50", "--shape", "16",
                   "16", "10", "--out", tmp_path / "sessions", "--participant", "p01",
                   "--wait-display", "200", timeout=300, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "display connected" in run.stdout, run.stdout
        assert "30 volumes processed, 0 missing" in run.stdout
        out, err = display.communicate(timeout=60)
    finally:
        if display.poll() is None:
            display.kill()
            display.communicate()
    assert display.returncode == 0, err
    assert "Traceback" not in out + err
    assert re.search(r"feedback +vol=\d+ level=", out), out  # the participant saw feedback
    assert re.search(r"^\S+ end", out, re.M), out
    session = next((tmp_path / "sessions").glob("sub-p01_ses-*"))
    # the record says when a participant display was connected
    assert '"display_connected"' in (session / "events.jsonl").read_text()
    replay = rtfb("replay", session, "--out", tmp_path / "replayed", timeout=300)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "identical to the original" in replay.stdout
    report = rtfb("report", session, timeout=300)
    assert report.returncode == 0, report.stderr
    assert (session / "report.html").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs xvfb-run (Debian xvfb)")
def test_psychopy_display_options_as_in_readme(tmp_path):
    pytest.importorskip("psychopy")
    start = time.monotonic()
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 800x600x24", str(RTFB), "display", "--fullscr",
         "--screen", "0", "--duration", "2", "--address", f"tcp://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start >= 2
