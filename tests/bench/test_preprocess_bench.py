from rtfb.bench.__main__ import main


def test_preprocess_bench_runs_small(capsys):
    assert main(["preprocess", "--shape", "20x20x12", "--volumes", "30", "--no-simpleitk",
                 "--pipeline-shapes", "20x20x12", "--pipeline-volumes", "30"]) == 0
    out = capsys.readouterr().out
    assert "rtfb Realigner (estimate)" in out and "whole preprocessing per volume" in out
