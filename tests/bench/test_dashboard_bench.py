from rtfb.bench.__main__ import main


def test_dashboard_bench_runs_small(capsys):
    assert main(["dashboard", "--shape", "16x16x10", "--volumes", "40", "--window", "12",
                 "--interval", "0.05", "--repeat", "1", "--modes", "off", "server"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| off") or
            line.startswith("| server")]
    assert len(rows) == 2
    assert rows[0].split("|")[4].strip() == "0"  # nothing lost
    assert int(rows[1].split("|")[5].strip()) > 0  # the client read the event stream
