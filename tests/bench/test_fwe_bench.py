"""FWE calibration benchmark (``python -m rtfb.bench fwe``), both sources of null cohorts."""

import argparse
import re
import time

import pytest
from scipy import stats

from rtfb.bench import fwe as fwe_bench
from rtfb.bench.__main__ import main


def _run(argv):
    parser = argparse.ArgumentParser()
    fwe_bench.add_arguments(parser)
    return fwe_bench.run(parser.parse_args(argv))


# ----------------------------------------------------------------------------- random maps


def test_fwe_bench_runs_small(capsys):
    assert _run(["--cohorts", "3", "--voxels", "50", "--permutations", "20",
                 "--covariate"]) == 0
    out = capsys.readouterr().out
    assert "family-wise false positives" in out and "binomial interval" in out


@pytest.mark.slow
def test_fwe_rate_calibrated_on_null_cohorts():
    start = time.perf_counter()
    for covariate in (False, True):
        res = fwe_bench.fwe_calibration(n_cohorts=200, n_subjects=20, n_voxels=500,
                                        n_permutations=200, smoothing=2.0, alpha=0.05,
                                        covariate=covariate, seed=0)
        lo, hi = stats.binom.interval(0.95, 200, 0.05)
        print(f"covariate={covariate}: FWE rate {res['rate']:.3f} "
              f"({res['n_false_positive']}/200, CI {res['rate_ci']}), {res['seconds']:.1f} s")
        assert lo <= res["n_false_positive"] <= hi
    print(f"total {time.perf_counter() - start:.1f} s")


# ----------------------------------------------------------------------- simulator cohorts


def test_fwe_bench_simulator_small(capsys):
    assert main(["fwe", "--source", "simulator", "--cohorts", "2", "--patients", "5",
                 "--controls", "4", "--permutations", "100"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("# rtfb.bench fwe --source simulator  (2 null cohorts, 5 patients "
                          "+ 4 controls")
    assert "fwe: 2/2 cohorts" in captured.err  # progress line
    lines = out.splitlines()
    for label in fwe_bench.CONTRASTS.values():
        i = next(i for i, line in enumerate(lines) if line.startswith(label))
        m = re.fullmatch(r".*: family-wise false positives: (\d+) / 2 = ([\d.]+) "
                         r"\(exact 95% CI ([\d.]+)-([\d.]+)\)", lines[i])
        assert m is not None, lines[i]
        count, rate, lo, hi = int(m[1]), *map(float, m.group(2, 3, 4))
        assert 0 <= count <= 2 and rate == count / 2 and 0 <= lo <= rate <= hi <= 1
        assert re.fullmatch(r"  expected count at alpha 0.05: 95% binomial interval "
                            r"\[0, 1\] -> (within|OUTSIDE)", lines[i + 1]), lines[i + 1]
    assert re.search(r"^time: [\d.]+ s \([\d.]+ s per cohort\)$", out, re.M)


def test_fwe_bench_simulator_result():
    res = fwe_bench.simulator_calibration(1, 5, 2, n_permutations=20, seed=3,
                                          progress=False)
    assert res["seconds"] > 0
    for key in fwe_bench.CONTRASTS:
        r = res[key]
        assert isinstance(r["n_false_positive"], int) and r["n_cohorts"] == 1
        assert r["n_false_positive"] == int(r["min_p_fwe"][0] <= 0.05)
        assert 1 / 20 <= r["min_p_fwe"][0] <= 1  # identity permutation included


def test_fwe_bench_errors(capsys):
    with pytest.raises(SystemExit):
        main(["fwe", "--cohorts", "0"])
    assert "--cohorts: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fwe", "--source", "simulator", "--patients", "4"])
    assert "--patients: must be >= 5, got 4" in capsys.readouterr().err
    assert main(["fwe", "--source", "simulator", "--voxels", "10"]) == 2
    assert "--voxels: only with --source random" in capsys.readouterr().err
    assert main(["fwe", "--patients", "6", "--cohorts", "1"]) == 2
    assert "--patients: only with --source simulator" in capsys.readouterr().err
    assert main(["fwe", "--alpha", "1.5", "--cohorts", "1"]) == 2
    assert "--alpha must be in (0, 1)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n_patients must be >= 5"):
        fwe_bench.simulator_calibration(1, 4, 4)
    with pytest.raises(ValueError, match="n_cohorts must be >= 1"):
        fwe_bench.fwe_calibration(0)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fwe_rate_calibrated_on_simulator_null_cohorts():
    n = 100
    res = fwe_bench.simulator_calibration(n_cohorts=n, n_patients=8, n_controls=8,
                                          n_permutations=1000, alpha=0.05, seed=0)
    lo, hi = stats.binom.interval(0.95, n, 0.05)
    for key, label in fwe_bench.CONTRASTS.items():
        r = res[key]
        print(f"{label}: FWE rate {r['rate']:.3f} ({r['n_false_positive']}/{n}, "
              f"CI {r['rate_ci']})")
        assert lo <= r["n_false_positive"] <= hi, label
    print(f"total {res['seconds']:.1f} s")
