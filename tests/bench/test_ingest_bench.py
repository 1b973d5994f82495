from rtfb.bench.__main__ import main


def test_ingest_bench_runs_small(capsys):
    assert main(["ingest", "--shape", "8x8x6", "--volumes", "5", "--interval", "0.02",
                 "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "NIfTI .nii 8x8x6" in out and "detection latency" in out and "TCP receiver" in out
