"""Bad command lines, protocols and paths: one line naming what is wrong, exit status 2.

Every case runs in-process through :func:`rtfb.cli.main` (the same code the console script
runs; tests/test_cli_installed.py runs one case per subcommand through the installed script).
"""

from __future__ import annotations

import logging
import subprocess

import pytest

from rtfb._utils.text import escape_control
from rtfb.cli import main
from tests.test_cli_installed import assert_usage_error, short_protocol


def run_main(argv, capsys) -> subprocess.CompletedProcess:
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        status = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return subprocess.CompletedProcess(argv, status, out, err)


# -------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, words", [
    (("run", "{p}", "--simulate", "--speed", "-1"), ("--speed", "-1")),
    (("run", "{p}", "--simulate", "--speed", "nan"), ("--speed", "nan")),
    (("run", "{p}", "--simulate", "--participant", "../.."), ("--participant", "../..")),
    (("run", "{p}", "--simulate", "--shape", "8", "8", "x"), ("--shape", "'x'")),
    (("run", "{p}", "--tcp", "70000"), ("--tcp", "70000")),
    (("run", "{p}", "--simulate", "--zmq", "bogus"), ("--zmq", "bogus")),
    (("run", "{p}", "--simulate", "--idle-timeout", "inf"), ("--idle-timeout",)),
    (("run", "{p}", "--watch", "{tmp}/missing"), ("--watch", "missing", "does not exist")),
    (("run", "{p}", "--simulate", "--out", "{p}"), ("--out", "is a file")),
    (("run", "{tmp}/missing.toml", "--simulate"), ("missing.toml", "not found")),
    (("run", "{p}"), ("choose a source",)),
    (("run", "--resume", "{tmp}/missing"), ("missing", "not found")),
    (("run", "{p}", "--simulate", "--bogus"), ("--bogus",)),
    (("replay", "{tmp}/missing"), ("missing",)),
    (("report", "{tmp}/missing"), ("missing", "not found")),
    (("display", "--timeout", "-1"), ("--timeout", "-1")),
    (("display", "--duration", "0"), ("--duration",)),
    (("display", "--address", "nowhere"), ("--address", "nowhere")),
    (("display", "--size", "0", "0"), ("--size",)),
    (("analyze", "{tmp}/missing", "--out", "{tmp}/deriv", "--scheduler", "synchronous"),
     ("missing",)),
    (("analyze", "{tmp}", "--out", "{tmp}/deriv", "--density", "2"), ("--density",)),
    (("bogus",), ("bogus",)),
])
def test_bad_arguments_one_line_status_2(tmp_path, monkeypatch, capsys, args, words):
    protocol = short_protocol(tmp_path)
    args = [a.format(p=protocol, tmp=tmp_path) for a in args]
    monkeypatch.chdir(tmp_path)
    assert_usage_error(run_main(args, capsys), *words)
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


BAD_PROTOCOLS = {
    "nested": ("a = " + "[" * 5000 + "]" * 5000 + "\n", ("nested too deeply",)),
    "fwhm": ("smoothing_fwhm = 0.0", "smoothing_fwhm = 1e9"),
    "tr": ("tr = 2.0", "tr = -2.0"),
    "window": ("window = 10", "window = 10000000"),
    "scale": ("scale = 0.2", "scale = 1e300"),
    "unknown": ("[metric]", "[metric]\nwindw = 3"),
    "type": ("tr = 2.0", 'tr = "two"'),
    "syntax": ("tr = 2.0", "tr = = 2"),
    "binary": (None, None),
}


@pytest.mark.parametrize("name", sorted(BAD_PROTOCOLS))
def test_bad_protocols_one_line_status_2(tmp_path, monkeypatch, capsys, name):
    path = short_protocol(tmp_path)
    old, new = BAD_PROTOCOLS[name]
    if name == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif name == "nested":
        path.write_text(old)
    else:
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    monkeypatch.chdir(tmp_path)
    proc = run_main(["run", str(path), "--simulate", "--quiet"], capsys)
    words = {"nested": ("nested too deeply",), "fwhm": ("preprocess.smoothing_fwhm", "1e+09"),
             "tr": ("session.tr", "-2"), "window": ("metric.window",),
             "scale": ("feedback.scale",), "unknown": ("metric.windw", "window"),
             "type": ("session.tr", "two"), "syntax": ("invalid TOML",),
             "binary": ("not UTF-8",)}[name]
    assert_usage_error(proc, "short.toml", *words)


def test_escape_control_characters():
    name = "vol\n\x1b[31mFAKE ERROR\x1b[0m\r\x00.dcm"
    text = escape_control(name)
    assert "\n" not in text and "\x1b" not in text and "\r" not in text
    assert text == "vol\\n\\x1b[31mFAKE ERROR\\x1b[0m\\r\\x00.dcm"
    assert escape_control("ünïcode ok") == "ünïcode ok"


def test_log_lines_escape_file_names(tmp_path, capsys):
    from rtfb.cli import _configure_logging

    _configure_logging(False)
    logging.getLogger("rtfb.ingest").warning("cannot read %s", "a\nWARNING forged\x1b[2J")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err
    assert "a\\nWARNING forged\\x1b[2J" in err


def test_participant_label_keeps_session_inside_out(tmp_path, monkeypatch, capsys):
    protocol = short_protocol(tmp_path)
    for label in ("../..", "a/b", "sub-01", "x_y", "", "a" * 65, "é"):
        proc = run_main(["run", protocol, "--simulate", "--participant", label,
                         "--out", tmp_path / "s"], capsys)
        assert_usage_error(proc, "--participant")
    assert not (tmp_path / "s").exists()
