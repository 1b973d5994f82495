from rtfb.bench.__main__ import main


def test_session_bench_runs_small(capsys):
    assert main(["session", "--shapes", "24x24x16", "--volumes", "40", "--intervals", "0.1",
                 "--window", "12", "--conditions", "quiet"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 24x24x16"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "quiet"
    assert cells[-1] == "0"  # nothing lost
    assert cells[-2] == "0"  # no stale value shown as fresh
