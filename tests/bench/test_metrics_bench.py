from rtfb.bench.__main__ import main


def test_metrics_bench_runs_small(capsys):
    assert main(["metrics", "--shapes", "10x10x8", "--windows", "16", "--updates", "3",
                 "--batch-repeats", "1", "--memory-updates", "5"]) == 0
    out = capsys.readouterr().out
    for name in ("ALFF+fALFF", "ReHo27", "seed-FC", "PSC", "all", "RSS after"):
        assert name in out
