"""benchmarks/beyond_thesis.py: the targets section computed from a hand-made results table."""

import pandas as pd
import pytest

from conftest import load_bench


def _bench():
    return load_bench("beyond_thesis")


def _rows():
    r = [("dense", "dense", 1.0, 80.0)]
    r += [("uniform_rank", "fwsvd", 0.5, 60.0), ("max_fi", "fwsvd", 0.5, 70.0), ("max_fi", "kfac", 0.5, 79.0),
          ("uniform_rank", "kfac", 0.5, 79.5), ("measured", "svd", 0.5, 50.0)]
    r += [("uniform_rank", "fwsvd", 0.3, 40.0), ("max_fi", "fwsvd", 0.3, 45.0), ("max_fi", "kfac", 0.3, 76.0),
          ("uniform_rank", "kfac", 0.3, 72.0), ("measured", "kfac", 0.3, 77.0), ("uniform_rank", "whiten", 0.3, 50.0)]
    r += [("max_fi", "kfac", 0.9, 80.0), ("uniform_rank", "fwsvd", 0.9, 80.0), ("max_fi", "fwsvd", 0.9, 80.0)]
    return pd.DataFrame([{"task": "mrpc", "model": "m", "allocation": a, "factorisation": f, "budget": b, "score": s,
                          "constant_score": 60.0} for a, f, b, s in r])


def test_targets_rows_against_hand_computed_values():
    lines = _bench().targets(_rows())
    rows = [line.split(" | ") for line in lines if line.startswith("| mrpc")]
    main = [r for r in rows if len(r) == 12]
    assert [r[1] for r in main] == ["0.5", "0.3"]               # p ≤ 0.7 only, largest first
    p5, p3 = main
    # p = 0.5: preset 79 (98.75 % → met), dev-best uniform_rank + kfac 79.5, baselines 60 / 70
    assert p5[2:8] == ["79.0", "79.5 (uniform_rank + kfac)", "60.0", "70.0", "+9.0", "+9.5"]
    assert p5[8:11] == ["98.8", "99.4", "0.95"] and p5[11].startswith("met")
    # p = 0.3: preset 76 (95 % < 97 → missed), dev-best measured + kfac 77, margin (76 − 60) / 20
    assert p3[2:8] == ["76.0", "77.0 (measured + kfac)", "40.0", "45.0", "+31.0", "+32.0"]
    assert p3[10] == "0.80" and p3[11].startswith("missed (97 %)")
    thesis = [r for r in rows if len(r) == 8]
    # kfac at 0.3: best FI allocator (measured 77) − uniform 72; whiten: no FI cell → no row; no
    # paired intervals in these rows → none shown
    assert [r[1:] for r in thesis] == [["kfac", "0.3", "72.0", "76.0", "77.0", "+5.0", " |"]]


def test_targets_show_the_paired_intervals_of_the_rows():
    df = _rows()
    pre3 = (df.allocation == "max_fi") & (df.factorisation == "kfac") & (df.budget == 0.3)
    meas3 = (df.allocation == "measured") & (df.factorisation == "kfac") & (df.budget == 0.3)
    df.loc[pre3, ["d_fwsvd_lo", "d_fwsvd_hi"]] = [25.04, 36.96]
    df.loc[meas3, ["d_uniform_lo", "d_uniform_hi"]] = [-0.5, 10.26]
    df["collapsed"] = (df.allocation == "max_fi") & (df.factorisation == "fwsvd") & (df.budget == 0.3)
    lines = _bench().targets(df)
    p3 = [line.split(" | ") for line in lines if line.startswith("| mrpc | 0.3")][0]
    assert p3[6] == "+31.0 [+25.0, +37.0]" and p3[5] == "45.0 †" and p3[4] == "40.0"
    thesis = [line.split(" | ") for line in lines if line.startswith("| mrpc | kfac | 0.3")][0]
    assert thesis[6:] == ["+5.0 [-0.5, +10.3]", "no |"]          # the interval includes 0


def test_paired_deltas_against_a_brute_force_bootstrap():
    """Accuracy cells on 50 examples: the paired interval of score(a) − score(b) over the shared
    resamples equals the 2.5 / 97.5 % quantiles of a per-resample loop of mean(correct_a − correct_b)."""
    import numpy as np
    from fisvd.report import resample_indices
    bench = _bench()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    preds = {("dense", "dense", 1.0): y.copy(), ("uniform_rank", "kfac", 0.3): np.where(rng.random(50) < .3, 1 - y, y),
             ("max_fi", "kfac", 0.3): np.where(rng.random(50) < .2, 1 - y, y),
             ("uniform_rank", "fwsvd", 0.3): np.where(rng.random(50) < .5, 1 - y, y),
             ("max_fi", "fwsvd", 0.3): np.zeros(50, int)}
    idx = resample_indices({"dev": 50})
    boots = {k: bench.bootstrap("rte", {"dev": (p, y)}, idx) for k, p in preds.items()}
    rows = [{"allocation": a, "factorisation": f, "budget": b, "score": 100 * (p == y).mean()}
            for (a, f, b), p in preds.items()]
    bench.paired_deltas(rows, boots)
    got = {(r["allocation"], r["factorisation"]): r for r in rows}

    def brute(a, b):
        d = [100 * ((preds[a][i] == y[i]).mean() - (preds[b][i] == y[i]).mean()) for i in idx["dev"]]
        return tuple(np.quantile(d, [0.025, 0.975]))
    m = got[("max_fi", "kfac")]
    assert (m["d_uniform_lo"], m["d_uniform_hi"]) == pytest.approx(brute(("max_fi", "kfac", 0.3),
                                                                          ("uniform_rank", "kfac", 0.3)))
    better = max([("uniform_rank", "fwsvd", 0.3), ("max_fi", "fwsvd", 0.3)], key=lambda k: (preds[k] == y).mean())
    assert (m["d_fwsvd_lo"], m["d_fwsvd_hi"]) == pytest.approx(brute(("max_fi", "kfac", 0.3), better))
    assert "d_uniform_lo" not in got[("uniform_rank", "kfac")]          # no Δ against itself
    assert "d_fwsvd_lo" not in got[("max_fi", "fwsvd")] and "d_uniform_lo" not in got[("dense", "dense")]
