"""benchmarks/beyond_thesis.py: the targets section computed from a hand-made results table."""

import pandas as pd

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
    thesis = [r for r in rows if len(r) == 7]
    # kfac at 0.3: best FI allocator (measured 77) − uniform 72; whiten: no FI cell → no row
    assert [r[1:] for r in thesis] == [["kfac", "0.3", "72.0", "76.0", "77.0", "+5.0 |"]]
