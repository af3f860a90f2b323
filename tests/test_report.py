"""The grid report's tables (fisvd.tables) on a synthetic two-task frame built here (no DVC, no files):
paired-win ‡ and collapsed † marks, the pooled margin kept, the overview's rows, the summary's best
method per budget, and the tidy rows from loaded records. Expected values are computed by hand."""
import numpy as np
import pandas as pd
import pytest

from fisvd.tables import (markdown, method_label, overview, recovery_label, rows_from_results, shown_budgets,
                          summarise, table)

TASKS = ["mrpc", "rte"]
DENSE = {"mrpc": 90.0, "rte": 60.0}          # dense avg 75
CONST = {"mrpc": 70.0, "rte": 50.0}          # constant avg 60: pooled margin = (avg - 60) / 15
N = 1000
NOISE = {t: np.random.default_rng(i).normal(0, 1, N) for i, t in enumerate(TASKS)}   # shared: paired resamples
RAMP = np.random.default_rng(7).permutation(np.linspace(-8, 8, N))                  # unpaired extra noise

# (allocation, factorisation, budget, recovery epochs): {task: score}; "†": collapsed on that task
METHODS = {
    ("max_fi", "kfac", 50, 0): {"mrpc": 86, "rte": 59},                 # avg 72.5
    ("uniform_rank", "fwsvd", 50, 0): {"mrpc": 80, "rte": 58.5},        # 69.25 (within noise on rte: RAMP)
    ("fi_retention", "fwsvd", 50, 0): {"mrpc": 78, "rte": 56},          # 67
    ("measured", "kfac", 50, 0): {"mrpc": 82, "rte": 57},               # 69.5
    ("energy", "fwsvd", 50, 0): {"mrpc": 75, "rte": 55, "†": "rte"},    # 65, collapsed on rte
    ("uniform_rank", "svd", 50, 0): {"mrpc": 70, "rte": 52},            # 61
    ("max_fi", "kfac", 30, 0): {"mrpc": 70, "rte": 54},                 # 62
    ("uniform_rank", "fwsvd", 30, 0): {"mrpc": 72, "rte": 55},          # 63.5
    ("fi_retention", "fwsvd", 30, 0): {"mrpc": 60, "rte": 51},          # 55.5
    ("random", "fwsvd", 30, 0): {"mrpc": 99},                           # one task only
    ("energy", "fwsvd", 30, 0): {"mrpc": 50},                           # one task only
    ("max_fi", "kfac", 30, 1): {"mrpc": 84, "rte": 58},                 # 71, before recovery 62
    ("uniform_rank", "fwsvd", 30, 1): {"mrpc": 80, "rte": 57},          # 68.5, before 63.5
    ("energy", "fwsvd", 30, 1): {"mrpc": 77, "rte": 56},                # 66.5, before: on mrpc only
}


def row(task, alloc, fact, budget, epochs, score, collapsed=False):
    return {"task": task, "model": "m", "allocation": alloc, "factorisation": fact, "budget": budget / 100,
            "kept_ratio": budget / 100, "total_params": int(22e6 * budget / 100), "recovery_epochs": epochs,
            "score": score, "ci_low": score - 2, "ci_high": score + 2, "pct_of_dense": 100 * score / DENSE[task],
            "dense_score": DENSE[task],
            "collapsed": collapsed, "constant_score": CONST[task], "seeds": 1}


def frame():
    rows, boots = [], {}
    for t in TASKS:
        rows.append(row(t, "dense", "dense", 100, 0, DENSE[t]))
        boots[(t, "dense", "dense", 100, 0)] = DENSE[t] + NOISE[t]
    for (a, f, b, e), scores in METHODS.items():
        for t in TASKS:
            if t in scores:
                rows.append(row(t, a, f, b, e, scores[t], collapsed=scores.get("†") == t))
                extra = RAMP if (t, a, f, b) == ("rte", "uniform_rank", "fwsvd", 50) else 0
                boots[(t, a, f, b, e)] = scores[t] + NOISE[t] + extra
    return pd.DataFrame(rows), boots


def cells_of(lines):
    """Markdown table lines → {method: {column: cell}}."""
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    head = split(lines[0])
    return {r[0]: dict(zip(head[1:], r[1:])) for r in map(split, lines[2:])}


def test_paired_win_marks_only_the_row_beyond_noise_and_never_dense():
    df, boots = frame()
    t = cells_of(table(df, boots, 50, 0, TASKS))
    assert list(t["dense"]) == ["mrpc", "rte", "NLI", "similarity", "avg", "params (M)"]
    # mrpc: max_fi + kfac beats every other compressed row on every resample (dense, higher, is not a rival)
    assert t["max_fi + kfac"]["mrpc"] == "86.0 ± 2.0 ‡"
    assert [m for m, c in t.items() if "‡" in c["mrpc"]] == ["max_fi + kfac"]
    # rte: it is best (59 vs 58.5) but uniform_rank + fwsvd is within noise; so is the average (72.5 vs 69.25)
    assert t["max_fi + kfac"]["rte"] == "59.0 ± 2.0"
    assert not any("‡" in c["rte"] or "‡" in c["avg"] for c in t.values())
    assert t["max_fi + kfac"]["NLI"] == "59.0" and t["max_fi + kfac"]["similarity"] == "86.0"
    assert t["max_fi + kfac"]["avg"].startswith("72.5 ± ")
    # p = 0.3: random + fwsvd (mrpc only) wins mrpc, has no average; uniform_rank + fwsvd wins the average
    t = cells_of(table(df, boots, 30, 0, TASKS))
    assert t["random + fwsvd"]["mrpc"] == "99.0 ± 2.0 ‡" and t["random + fwsvd"]["rte"] == "–"
    assert t["random + fwsvd"]["avg"] == "–" and t["random + fwsvd"]["NLI"] == "–"
    assert t["uniform_rank + fwsvd"]["avg"].startswith("63.5 ± ") and t["uniform_rank + fwsvd"]["avg"].endswith(" ‡")
    assert [m for m, c in t.items() if "‡" in c["avg"]] == ["uniform_rank + fwsvd"]


def test_collapsed_marks_only_the_collapsed_task():
    df, boots = frame()
    t = cells_of(table(df, boots, 50, 0, TASKS))
    assert t["energy + fwsvd"]["rte"] == "55.0 ± 2.0 †" and t["energy + fwsvd"]["mrpc"] == "75.0 ± 2.0"
    assert sum("†" in c for r in t.values() for c in r.values()) == 1
    o = cells_of(overview(df, boots, 50, 0, TASKS))
    assert o["energy + fwsvd"]["rte"] == "55.0 †" and o["energy + fwsvd"]["mrpc"] == "75.0"


def test_overview_rows_and_pooled_margin_kept():
    df, boots = frame()
    o = cells_of(overview(df, boots, 50, 0, TASKS))
    # dense, the FWSVD baselines present (in BASELINES order), then the 3 best others by average
    assert list(o) == ["dense", "uniform_rank + fwsvd", "fi_retention + fwsvd", "max_fi + kfac", "measured + kfac",
                       "energy + fwsvd"]
    assert list(o["dense"]) == ["mrpc", "rte", "avg", "% of dense", "margin kept", "params (M)"]
    assert o["dense"] == {"mrpc": "90.0", "rte": "60.0", "avg": "75.0", "% of dense": "100.0", "margin kept": "1.00",
                          "params (M)": "22.00"}
    # (avg - 60) / (75 - 60), pooled over tasks (not the mean of per-task margins: 0.8 and 0.9 → 0.85)
    want = {"uniform_rank + fwsvd": "0.62", "fi_retention + fwsvd": "0.47", "max_fi + kfac": "0.83",
            "measured + kfac": "0.63", "energy + fwsvd": "0.33"}
    assert {m: c["margin kept"] for m, c in o.items() if m != "dense"} == want
    assert o["max_fi + kfac"]["avg"].startswith("72.5 ± ")
    assert o["max_fi + kfac"]["% of dense"] == "96.9"          # mean(86/90, 59/60) × 100
    assert o["max_fi + kfac"]["params (M)"] == "11.00"


def test_overview_with_recovery_lists_every_recovered_method_and_its_score_before():
    df, boots = frame()
    o = cells_of(overview(df, boots, 30, 1, TASKS))
    assert list(o) == ["dense", "max_fi + kfac", "uniform_rank + fwsvd", "energy + fwsvd"]   # by average
    assert {m: c["avg before recovery"] for m, c in o.items()} == {
        "dense": "", "max_fi + kfac": "62.0", "uniform_rank + fwsvd": "63.5", "energy + fwsvd": "–"}
    assert {m: c["margin kept"] for m, c in o.items()} == {
        "dense": "1.00", "max_fi + kfac": "0.73", "uniform_rank + fwsvd": "0.57", "energy + fwsvd": "0.43"}


def test_summary_best_method_per_budget_on_every_task():
    df, _ = frame()
    s = summarise(df, TASKS)
    assert list(s) == ["dense_avg", "tasks", "cells", "p50", "p30", "p30_ft1"]
    assert (s["dense_avg"], s["tasks"], s["cells"]) == (75.0, 2, 12 + 8 + 6)
    assert s["p50"] == {"best": "max_fi+kfac", "best_avg": 72.5, "best_margin_kept": 0.833,
                        "uniform_rank+fwsvd_avg": 69.25, "fi_retention+fwsvd_avg": 67.0}
    # random + fwsvd (99 on mrpc only) is not on every task: not a candidate
    assert s["p30"] == {"best": "uniform_rank+fwsvd", "best_avg": 63.5, "best_margin_kept": 0.233,
                        "uniform_rank+fwsvd_avg": 63.5, "fi_retention+fwsvd_avg": 55.5}
    assert s["p30_ft1"] == {"best": "max_fi+kfac", "best_avg": 71.0, "best_margin_kept": 0.733,
                            "uniform_rank+fwsvd_avg": 68.5}


def test_markdown_headings_and_partial_header():
    df, boots = frame()
    md = markdown(df, boots, "m", ["mrpc", "rte", "cola"], [50, 30], "metrics/report-partial", partial=(7, 9),
                  headline=(50, 30, 10))    # 10: not a budget of this grid, skipped
    lines = md.splitlines()
    assert lines[0] == "# Grid results (PARTIAL)"
    assert "7 of 9 result files present; tasks not started: cola." in md
    assert "Model m; tasks mrpc, rte;" in md and "Constant predictor: mrpc 70.0, rte 50.0" in md
    assert [h for h in lines if h.startswith("#")][1:] == [
        "## Overview", "### p = 0.5, no recovery", "### p = 0.3, no recovery",
        "### p = 0.3, after 1 epoch(s) of recovery fine-tuning",
        "## p = 0.5, no recovery", "## p = 0.3, no recovery", "## p = 0.3, after 1 epoch(s) of recovery fine-tuning"]
    full = markdown(df, boots, "m", TASKS, [50, 30], "metrics/report")
    assert "### p = 0.5, no recovery" not in full and "### p = 0.3, no recovery" in full  # no headline: the recovered
    assert full.startswith("# Grid results\n") and "Partial" not in full
    assert "Produced by `dvc repro grid/dvc.yaml` (metrics/report/results.csv holds every number)." in full


def test_shown_budgets_order_filter_and_fallback():
    # recovered at 20 and 10 (1 epoch) and at 10 and 30 (3 epochs; 30 only after recovery); 90 ran without recovery only
    df = pd.DataFrame({"budget": [0.9, 0.5, 0.2, 0.1, 0.2, 0.1, 0.1, 0.3],
                       "recovery_epochs": [0, 0, 0, 0, 1, 1, 3, 3]})
    # without recovery: shown + every recovered percent, highest first; after each recovery: its own percents
    assert shown_budgets(df, (10, 50)) == [(50, 0), (30, 0), (20, 0), (10, 0), (20, 1), (10, 1), (30, 3), (10, 3)]
    # a shown percent also recovered is listed once; one the grid does not run is dropped when budgets are given
    assert shown_budgets(df, (20, 70), budgets=[90, 50, 20, 10]) == [(20, 0), (10, 0), (20, 1), (10, 1), (30, 3), (10, 3)]
    # nothing shown and nothing recovered among the grid's budgets: every budget, highest first
    plain = df[df.recovery_epochs == 0]
    assert shown_budgets(plain, (70,), budgets=[50, 90]) == [(90, 0), (50, 0)]
    assert shown_budgets(plain) == []


def test_recovery_and_method_labels_name_the_teacher():
    from fisvd.paths import KD
    assert recovery_label(0) == recovery_label(0, "kfac" + KD) == "none"
    assert recovery_label(1) == "1 epoch" and recovery_label(3, "kfac") == "3 epochs"
    assert recovery_label(1, "kfac" + KD) == "1 epoch, teacher"
    assert method_label("max_fi", "kfac") == "max_fi + kfac"
    assert method_label("max_fi", "kfac_seq" + KD) == "max_fi + kfac_seq, teacher"


def record(score, preds, collapsed=False, **extra):
    return {"score": score, "collapsed": collapsed, "metrics": {"accuracy": score / 100},
            "predictions": {s: list(y) for s, y in preds.items()}, "total_params": 1000, **extra}


def test_rows_from_results_average_seeds_and_keep_the_margin():
    lab = {"mrpc": {"dev": [1, 0] * 10}, "rte": {"dev": [0, 1, 1, 0] * 5}}
    dense = {t: [record(s, lab[t], labels=lab[t], constant_score=c) for s, c in zip(scores, consts)]
             for t, scores, consts in (("mrpc", (80, 84), (60, 99)), ("rte", (50, 52), (55, 0)))}
    cells = {"mrpc": {("max_fi", "kfac", 50): [record(70, lab["mrpc"], kept_ratio=0.49, total_params=500),
                                               record(72, lab["mrpc"], True, kept_ratio=0.47, total_params=501)],
                      ("uniform_rank", "svd", 50): []},          # --partial: no seed present
             "rte": {("max_fi", "kfac", 50): [record(54, lab["rte"])]}}
    recovered = {"mrpc": {("max_fi", "kfac", 50): [record(77, lab["mrpc"])]}}
    df, boots = rows_from_results(dense, cells, recovered, 2, "m")
    assert list(zip(df.task, df.allocation, df.recovery_epochs)) == [
        ("mrpc", "dense", 0), ("mrpc", "max_fi", 0), ("mrpc", "max_fi", 2), ("rte", "dense", 0), ("rte", "max_fi", 0)]
    assert set(boots) == {("mrpc", "dense", "dense", 100, 0), ("mrpc", "max_fi", "kfac", 50, 0),
                          ("mrpc", "max_fi", "kfac", 50, 2), ("rte", "dense", "dense", 100, 0),
                          ("rte", "max_fi", "kfac", 50, 0)}
    cell = df.iloc[1]
    assert (cell.score, cell.total_params, cell.seeds, cell.collapsed) == (71, 500, 2, True)
    assert cell.kept_ratio == pytest.approx(0.48)
    assert cell.accuracy == pytest.approx(0.71) and cell.budget == 0.5 and cell.model == "m"
    assert cell.margin_kept == 0.5                      # (71 - 60) / (82 - 60); the first seed's constant
    assert cell.pct_of_dense == 86.59                   # 100 × 71 / 82
    assert df.iloc[0].margin_kept == 1.0 and df.iloc[0].pct_of_dense == 100.0 and df.iloc[0].kept_ratio == 1.0
    assert df.iloc[2].margin_kept == round(17 / 22, 4)
    assert df.iloc[4].margin_kept is None or np.isnan(df.iloc[4].margin_kept)   # rte dense 51 ≤ constant 55
    assert df.iloc[4].pct_of_dense == round(100 * 54 / 51, 2)
    # perfect predictions: every resample scores 100
    assert (df.ci_low == 100).all() and (df.ci_high == 100).all()
    assert (boots[("rte", "max_fi", "kfac", 50, 0)] == 100).all()


def test_no_better_than_constant_is_the_interval_reaching_the_constant_score():
    """° comes from the cell's bootstrap interval over dev examples: 100 rte pairs (accuracy), constant 50:
    always "1" scores 50 (interval about ±10: reaches 50), 55 % right reaches it too (±~10), 80 % does not."""
    y = [1, 0] * 50
    right = lambda k: [y[i] if i < k else 1 - y[i] for i in range(100)]        # noqa: E731  first k right
    dense = {"rte": [record(90, {"dev": right(90)}, labels={"dev": y}, constant_score=50.0)]}
    cells = {"rte": {("a", "f", 50): [record(50, {"dev": [1] * 100})], ("b", "f", 50): [record(55, {"dev": right(55)})],
                     ("c", "f", 50): [record(80, {"dev": right(80)})]}}
    df, _ = rows_from_results(dense, cells, {}, 1, "m")
    got = dict(zip(df.allocation, df.no_better_than_constant))
    assert got == {"dense": False, "a": True, "b": True, "c": False}
    assert df.set_index("allocation").ci_low["c"] > 70 and df.set_index("allocation").ci_high["b"] > 50


def test_a_cell_on_fewer_seeds_is_measured_against_dense_on_the_same_seeds():
    lab = {"dev": [1, 0] * 10}
    dense = {"mrpc": [record(80, lab, labels=lab, constant_score=60, seed=42),
                      record(90, lab, labels=lab, constant_score=60, seed=43)]}
    cells = {"mrpc": {("energy", "fwsvd", 50): [record(75, lab, seed=42)],                  # seed 42 only
                      ("max_fi", "kfac", 50): [record(75, lab, seed=42), record(85, lab, seed=43)]}}
    df, _ = rows_from_results(dense, cells, {}, 1, "m")
    one, both = df.iloc[1], df.iloc[2]
    assert one.pct_of_dense == round(100 * 75 / 80, 2) and one.margin_kept == 0.75      # vs seed 42's dense
    assert both.pct_of_dense == round(100 * 80 / 85, 2) and both.margin_kept == 0.8     # vs the mean of both
    assert (one.dense_score, both.dense_score) == (80, 85)
    # the pooled margins too: the overview's, vs_default.csv's (against) and summary.json's best method
    per_seed = {}
    df, boots = rows_from_results(dense, cells, {}, 1, "m", per_seed)
    from fisvd.tables import against
    vs = against(df, boots, per_seed, ["mrpc"], ("max_fi", "kfac")).set_index("allocation")
    assert vs.margin_kept["energy"] == 0.75 and vs.margin_kept["max_fi"] == 0.8
    rows = cells_of(overview(df, boots, 50, 0, ["mrpc"])[0:])
    assert rows["energy + fwsvd"]["margin kept"] == "0.75" and rows["max_fi + kfac"]["margin kept"] == "0.80"
    cells["mrpc"][("energy", "fwsvd", 50)] = [record(79, lab, seed=42)]   # 1 below its dense; max_fi: 5 below
    df, _ = rows_from_results(dense, cells, {}, 1, "m")
    s = summarise(df, ["mrpc"])["p50"]
    assert s["best"] == "energy+fwsvd" and s["best_avg"] == 79 and s["best_margin_kept"] == 0.95  # (79-60)/(80-60)


def test_no_better_than_constant_and_noisy_margin_marks():
    df, boots = frame()
    t = cells_of(table(df, boots, 50, 0, TASKS))
    # mrpc constant 70: uniform_rank + svd's 70 ± 2 reaches it (°); collapsed cells keep † alone
    assert t["uniform_rank + svd"]["mrpc"] == "70.0 ± 2.0 °" and t["max_fi + kfac"]["mrpc"] == "86.0 ± 2.0 ‡"
    assert [(m, c) for m, r in t.items() for c, v in r.items() if "°" in v] == [
        ("uniform_rank + svd", "mrpc"), ("uniform_rank + svd", "rte")]            # rte: 52 - 2 reaches 50
    o = cells_of(overview(df, boots, 30, 0, TASKS))
    assert o["fi_retention + fwsvd"]["rte"] == "51.0 °" and o["uniform_rank + fwsvd"]["rte"] == "55.0"
    assert not any("~" in c["margin kept"] for c in o.values())     # dense avg 75 ± noise, far above 60
    # a dense model whose average interval reaches the constant average: every margin is flagged
    for task in TASKS:
        boots[(task, "dense", "dense", 100, 0)] = CONST[task] + 1 + NOISE[task]
    o = cells_of(overview(df, boots, 30, 0, TASKS))
    assert all(c["margin kept"].endswith(" ~") for c in o.values()), o
    at_constant = (df.task == "rte") & (df.allocation == "energy") & (df.budget == 0.5)   # collapsed on rte
    df.loc[at_constant, ["score", "ci_low", "ci_high"]] = [51.0, 49.0, 53.0]
    assert cells_of(table(df, boots, 50, 0, TASKS))["energy + fwsvd"]["rte"] == "51.0 ± 2.0 †"


def test_against_the_default_pairs_on_common_seeds_and_matches_a_written_out_loop():
    from fisvd.report import resample_indices, seed_draws
    from fisvd.tables import against, against_md
    rng = np.random.default_rng(3)
    ACC = ["rte", "sst2"]                   # accuracy tasks: the loop below scores accuracy
    y = {t: np.array([1, 0] * 15) for t in ACC}

    def noisy(t, errors):                   # predictions with `errors` wrong answers at random places
        p = y[t].copy()
        p[rng.choice(len(p), errors, replace=False)] ^= 1
        return p

    def rec(t, pred, seed, **extra):
        return record(100 * float(np.mean(pred == y[t])), {"dev": pred}, seed=seed, **extra)

    preds = {(m, t, s): noisy(t, e) for m, e in (("dense", 2), ("default", 6), ("energy", 9)) for t in ACC
             for s in (42, 43)}
    preds.update({("perfect", t, s): y[t].copy() for t in ACC for s in (42, 43)})
    dense = {t: [rec(t, preds[("dense", t, s)], s, labels={"dev": list(y[t])}, constant_score=50.0)
                 for s in (42, 43)] for t in ACC}
    cells = {t: {("max_fi", "kfac", 50): [rec(t, preds[("default", t, s)], s) for s in (42, 43)],
                 ("uniform_rank", "kfac", 50): [rec(t, preds[("perfect", t, s)], s) for s in (42, 43)],
                 ("energy", "fwsvd", 50): [rec(t, preds[("energy", t, 42)], 42)]} for t in ACC}   # seed 42 only
    per_seed = {}
    df, boots = rows_from_results(dense, cells, {}, 1, "m", per_seed)
    vs = against(df, boots, per_seed, ACC, ("max_fi", "kfac")).set_index(["allocation", "factorisation"])

    idx = resample_indices({"dev": 30})["dev"]                       # [n, 30], the report's resamples
    acc = lambda m, t, s: 100 * (preds[(m, t, s)][idx] == y[t][idx]).mean(axis=1)  # noqa: E731  [n] per replicate
    n = len(idx)
    # energy (seed 42) vs the default on seed 42 alone: a plain paired bootstrap over dev examples
    diff = np.mean([acc("energy", t, 42) - acc("default", t, 42) for t in ACC], axis=0)
    point = np.mean([100 * np.mean(preds[("energy", t, 42)] == y[t]) - 100 * np.mean(preds[("default", t, 42)] == y[t])
                     for t in ACC])
    e = vs.loc[("energy", "fwsvd")]
    assert e.seeds_compared == 1 and e["diff"] == pytest.approx(point, abs=1e-4)
    assert (e.diff_low, e.diff_high) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), abs=1e-4)
    # both seeds: each replicate draws two seeds with replacement, the same draw for both methods
    draws = np.array([42, 43])[seed_draws(n, 2)]                      # [n, 2]
    per = lambda m, t: np.mean([np.where(draws[:, j] == 42, acc(m, t, 42), acc(m, t, 43)) for j in range(2)], axis=0)  # noqa: E731
    diff2 = np.mean([per("perfect", t) - per("default", t) for t in ACC], axis=0)
    u = vs.loc[("uniform_rank", "kfac")]
    assert u.seeds_compared == 2 and (u.diff_low, u.diff_high) == pytest.approx(tuple(np.quantile(diff2, [0.025, 0.975])), abs=1e-4)
    from fisvd.tables import paired                                   # the same pairing, per task too
    per_t, pooled = paired(per_seed, ACC, ("energy", "fwsvd", 50, 0), ("max_fi", "kfac", 50, 0))
    for t in ACC:
        dt = acc("energy", t, 42) - acc("default", t, 42)
        assert per_t[t]["seeds"] == 1 and (per_t[t]["low"], per_t[t]["high"]) == pytest.approx(
            tuple(np.quantile(dt, [0.025, 0.975])), abs=1e-4)
        assert per_t[t]["diff"] == pytest.approx(100 * np.mean(preds[("energy", t, 42)] == y[t])
                                                 - 100 * np.mean(preds[("default", t, 42)] == y[t]), abs=1e-4)
    assert pooled["diff"] == pytest.approx(point, abs=1e-4) and pooled["seeds"] == 1
    assert (pooled["low"], pooled["high"]) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), abs=1e-4)
    none, nothing = paired(per_seed, ACC, ("energy", "fwsvd", 50, 0), ("energy", "fwsvd", 30, 0))   # no such cell
    assert all(v["seeds"] == 0 and np.isnan(v["diff"]) for v in none.values()) and np.isnan(nothing["low"])
    lo, hi = np.quantile(diff, [0.025, 0.975])
    assert u.verdict == "better" and u.diff_low > 0 and e.verdict == ("worse" if hi < 0 else "")
    d = vs.loc[("max_fi", "kfac")]
    assert bool(d.default) and d["diff"] == 0 and d.verdict == ""
    # pooled margin kept: (avg - constant avg) / (dense avg - constant avg), its interval from the same replicates
    dense_avg = np.mean([np.mean([r["score"] for r in dense[t]]) for t in ACC])
    avg = np.mean([np.mean([r["score"] for r in cells[t][("max_fi", "kfac", 50)]]) for t in ACC])
    assert d.margin_kept == pytest.approx((avg - 50) / (dense_avg - 50), abs=1e-4)
    ratio = (np.mean([per("default", t) for t in ACC], axis=0) - 50) / (np.mean([per("dense", t) for t in ACC], axis=0) - 50)
    assert (d.margin_low, d.margin_high) == pytest.approx(tuple(np.quantile(ratio, [0.025, 0.975])), abs=1e-4)
    md = "\n".join(against_md(vs.reset_index(), ("max_fi", "kfac")))
    lo2, hi2 = np.quantile(diff2, [0.025, 0.975])
    gain = np.mean([100 - np.mean([r["score"] for r in cells[t][("max_fi", "kfac", 50)]]) for t in ACC])
    assert f"| uniform_rank + kfac | {gain:+.2f} [{lo2:+.2f}, {hi2:+.2f}] ‡ |" in md.splitlines()
    assert f"| max_fi + kfac (default) | {avg:.2f} |" in md.splitlines()
    s = summarise(df, ACC, vs.reset_index())["p50"]
    assert s["default"] == "max_fi+kfac" and s["default_margin_kept"] == round(d.margin_kept, 3)

    # recovered cells pair on (fine-tune seed, recovery seed): the teacher run against the plain one at the
    # same recovery; a run on a recovery seed the default lacks has nothing to be paired with
    recovered = {t: {("max_fi", "kfac", 50): [rec(t, preds[("energy", t, 42)], 42, recovery_seed=42)],
                     ("max_fi", "kfac+kd", 50): [rec(t, preds[("perfect", t, 42)], 42, recovery_seed=42)],
                     ("uniform_rank", "kfac", 50): [rec(t, preds[("perfect", t, 42)], 42, recovery_seed=7)]}
                 for t in ACC}
    per_seed = {}
    df, boots = rows_from_results(dense, cells, recovered, 1, "m", per_seed)
    vs = against(df, boots, per_seed, ACC, ("max_fi", "kfac"))
    rec1 = vs[vs.recovery_epochs == 1].set_index(["allocation", "factorisation"])
    kd = rec1.loc[("max_fi", "kfac+kd")]
    want = np.mean([acc("perfect", t, 42) - acc("energy", t, 42) for t in ACC], axis=0)
    assert kd.seeds_compared == 1 and (kd.diff_low, kd.diff_high) == pytest.approx(tuple(np.quantile(want, [0.025, 0.975])), abs=1e-4)
    lone = rec1.loc[("uniform_rank", "kfac")]
    assert lone.seeds_compared == 0 and np.isnan(lone.diff_low) and lone.verdict == ""
    md = "\n".join(against_md(vs, ("max_fi", "kfac")))
    assert "| uniform_rank + kfac | –" in md.split("after 1 epoch(s)")[1]


def test_pareto_draws_every_factorisation_each_with_its_own_line_style(tmp_path):
    """The grid has six factorisations (svd … kfac_seq) and more may join: every one gets a line in its
    own style (a fixed list of five once dropped the sixth and crashed the report)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fisvd.tables import pareto
    facts = ["svd", "fwsvd", "tfwsvd", "whiten", "kfac", "kfac_seq", "f7", "f8", "f9"]
    rows = [row("mrpc", "dense", "dense", 100, 0, 90.0)]
    rows += [row("mrpc", "max_fi", f, b, 0, 80.0 + i) for i, f in enumerate(facts) for b in (50, 20)]
    drawn = []
    real = plt.Axes.plot
    plt.Axes.plot = lambda ax, *a, **k: drawn.append((k["label"], str(k["ls"]))) or real(ax, *a, **k)
    try:
        recs = pareto(pd.DataFrame(rows), tmp_path)
    finally:
        plt.Axes.plot = real
    assert [label for label, _ in drawn] == sorted(f"max_fi + {f}" for f in facts)
    assert len({ls for _, ls in drawn}) == 8                       # 8 styles, then they repeat
    assert len(recs) == 1 + 2 * len(facts) and (tmp_path / "png/pareto_mrpc.png").stat().st_size > 0


def test_headline_rows_cells_and_marks():
    """headline.md: the recovered methods before and after recovery at the recovered budgets; % of dense
    from the task rows, the margin and its interval and verdict from `against`'s frame, †n / °n counted
    per task, a teacher row only after recovery, a method with no result in it left out."""
    from fisvd.tables import headline
    df, boots = frame()
    df["no_better_than_constant"] = df.ci_low <= df.constant_score     # as rows_from_results sets it
    df.loc[(df.task == "rte") & (df.allocation == "uniform_rank") & (df.budget == 0.3) & (df.recovery_epochs == 1),
           "collapsed"] = True
    vs = pd.DataFrame([
        {"budget": 0.3, "recovery_epochs": 0, "allocation": "max_fi", "factorisation": "kfac", "default": True,
         "verdict": "", "margin_kept": 0.1333, "margin_low": 0.05, "margin_high": 0.21},
        {"budget": 0.3, "recovery_epochs": 0, "allocation": "uniform_rank", "factorisation": "fwsvd", "default": False,
         "verdict": "better", "margin_kept": 0.2333, "margin_low": 0.15, "margin_high": 0.31},
        {"budget": 0.3, "recovery_epochs": 1, "allocation": "max_fi", "factorisation": "kfac", "default": True,
         "verdict": "", "margin_kept": 0.7333, "margin_low": 0.65, "margin_high": 0.81},
        {"budget": 0.3, "recovery_epochs": 1, "allocation": "uniform_rank", "factorisation": "fwsvd", "default": False,
         "verdict": "worse", "margin_kept": 0.5667, "margin_low": 0.49, "margin_high": 0.64},
        {"budget": 0.5, "recovery_epochs": 0, "allocation": "max_fi", "factorisation": "kfac", "default": True,
         "verdict": "", "margin_kept": 0.8333, "margin_low": 0.75, "margin_high": 0.91}])   # not recovered at 0.5
    vs = pd.concat([vs, pd.DataFrame([        # a teacher-only method: its plain cell before recovery; no margin
        {"budget": 0.3, "recovery_epochs": 0, "allocation": "fi_retention", "factorisation": "fwsvd", "default": False,
         "verdict": "worse", "margin_kept": np.nan, "margin_low": np.nan, "margin_high": np.nan}])], ignore_index=True)
    md = headline(df, boots, vs, TASKS, [("uniform_rank", "fwsvd"), ("max_fi", "kfac"), ("max_fi", "kfac+kd"),
                                         ("fi_retention", "fwsvd+kd")], ("max_fi", "kfac"))
    lines = md.splitlines()
    assert lines[0].startswith("Dense average 75.0 over mrpc, rte (1 fine-tune seed), the constant predictor's 60.0")
    table = lines[lines.index("") + 1:]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
    assert rows[0] == ["method", "recovery", "runs per task", "p = 0.3"]
    body = {(r[0], r[1]): r[2:] for r in rows[2:]}
    # mrpc 72 - 2 reaches its constant 70 (°); % of dense: mean of 72/90 and 55/60
    assert body[("uniform_rank + fwsvd", "none")] == ["1", "86 % · 0.23 [0.15, 0.31] ‡ °1"]
    assert body[("max_fi + kfac (default)", "none")] == ["1", f"{(70 / 90 + 54 / 60) * 50:.0f} % · 0.13 [0.05, 0.21] °1"]
    assert body[("uniform_rank + fwsvd", "1 epoch")] == ["1", f"{(80 / 90 + 57 / 60) * 50:.0f} % · 0.57 [0.49, 0.64] ⁻ †1"]
    assert body[("max_fi + kfac (default)", "1 epoch")] == ["1", f"{(84 / 90 + 58 / 60) * 50:.0f} % · 0.73 [0.65, 0.81]"]
    # fi_retention's teacher run has no result after recovery; before it, its plain cell (no margin: –)
    assert body[("fi_retention + fwsvd", "none")] == ["1", f"{(60 / 90 + 51 / 60) * 50:.0f} % · – ⁻ °2"]   # 58 ≤ 70, 49 ≤ 50
    assert len(body) == 5                   # no teacher row after recovery: no result in the frame
    assert [k[1] for k in body] == ["none", "none", "none", "1 epoch", "1 epoch"]
    # a percent shown without recovery (grid.headline): its column, "–" where a method has no result there
    wide = headline(df, boots, vs, TASKS, [("uniform_rank", "fwsvd"), ("max_fi", "kfac")], ("max_fi", "kfac"), (50, 20))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in wide.splitlines() if line.startswith("|")]
    assert rows[0] == ["method", "recovery", "runs per task", "p = 0.5", "p = 0.3"]     # 20: not run, skipped
    body = {(r[0], r[1]): r[2:] for r in rows[2:]}
    assert body[("max_fi + kfac (default)", "none")][1].startswith(f"{(86 / 90 + 59 / 60) * 50:.0f} % · 0.83 [0.75, 0.91]")
    assert body[("uniform_rank + fwsvd", "none")][1] == "–"
    assert body[("max_fi + kfac (default)", "1 epoch")][1] == "–"       # recovered at 0.3 only
    # a grid without recovery: the `shown` percents it ran, or (none) every budget; tables.md's overview alike
    plain = vs[vs.recovery_epochs == 0]
    cols = lambda md: [line for line in md.splitlines() if line.startswith("| method")][0].split("|")[4:-1]  # noqa: E731
    assert [c.strip() for c in cols(headline(df, boots, plain, TASKS, [("max_fi", "kfac")], ("max_fi", "kfac"), (30,)))] \
        == ["p = 0.3"]
    assert [c.strip() for c in cols(headline(df, boots, plain, TASKS, [("max_fi", "kfac")], ("max_fi", "kfac"), (10,)))] \
        == ["p = 0.5", "p = 0.3"]
    over = markdown(df[df.recovery_epochs == 0], boots, "m", TASKS, [50, 30], "metrics/report", headline=(10,))
    assert [h for h in over.splitlines() if h.startswith("### ")] == ["### p = 0.5, no recovery", "### p = 0.3, no recovery"]
    assert headline(df, boots, vs.iloc[:0], TASKS, [("max_fi", "kfac")], ("max_fi", "kfac")).startswith(
        "No headline table: the default (max_fi + kfac) did not run on every task")
    three = headline(df.assign(seeds=3), boots, vs, TASKS, [("max_fi", "kfac")], ("max_fi", "kfac"))
    assert three.startswith("Dense average 75.0 over mrpc, rte (3 fine-tune seeds), the constant")
    # a teacher recovery: its own row after recovery, named by its plain factorisation; before recovery
    # it is the plain cell's row (listed once); its runs per task from its own cells (3 here)
    kd = pd.DataFrame([row(t, "max_fi", "kfac+kd", 30, 1, sc) | {"seeds": 3, "no_better_than_constant": False}
                       for t, sc in (("mrpc", 87), ("rte", 59))])
    vs_kd = pd.concat([vs, pd.DataFrame([{"budget": 0.3, "recovery_epochs": 1, "allocation": "max_fi",
                                          "factorisation": "kfac+kd", "default": False, "verdict": "better",
                                          "margin_kept": 0.8667, "margin_low": 0.8, "margin_high": 0.93}])],
                      ignore_index=True)
    md = headline(pd.concat([df, kd], ignore_index=True), boots, vs_kd, TASKS,
                  [("max_fi", "kfac"), ("max_fi", "kfac+kd")], ("max_fi", "kfac"))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]
    assert [r[:3] for r in rows[2:]] == [["max_fi + kfac (default)", "none", "1"], ["max_fi + kfac (default)", "1 epoch", "1"],
                                         ["max_fi + kfac", "1 epoch, teacher", "3"]]
    assert rows[-1][3] == f"{(87 / 90 + 59 / 60) * 50:.0f} % · 0.87 [0.80, 0.93] ‡"


def test_collect_partial_reads_present_current_files_and_counts_the_left_out(tmp_path, monkeypatch):
    """--partial: only the files present, less those of an out-of-date stage and those being computed
    (fisvd.grid.out_of_date, stubbed here), each counted; without --partial every expected file is read."""
    import json

    import fisvd.tables as tables
    from conftest import ROOT
    from fisvd.grid import cell_result, cells, recover_cells, run_dir
    from fisvd.params import load_params
    p = load_params(ROOT / "grid" / "params.yaml")
    mrpc = [c for c in cells(p, task="mrpc", seed=42) if c.factorisation == "kfac" and c.allocation == "max_fi"][:3]
    current, stale, busy = (cell_result(c) for c in mrpc)
    for i, path in enumerate([f"{run_dir('mrpc', 42)}/results/dense.json", current, stale, busy]):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps({"n": i}))
    asked = []
    monkeypatch.setattr(tables, "out_of_date", lambda folders, root: asked.append((list(folders), root)) or ({stale}, {busy}))
    dense, cells_, recovered, counts = tables.collect(p, tmp_path, partial=True)
    expected = len(p.grid.tasks) * len(p.grid.seeds) + len(cells(p)) + len(recover_cells(p))
    assert counts == [2, expected, 1, 1]
    assert dense == {"mrpc": [{"n": 0}]} and list(cells_) == ["mrpc"] and not any(recovered["mrpc"].values())
    assert [recs for recs in cells_["mrpc"].values() if recs] == [[{"n": 1}]]
    assert asked == [([run_dir(t, s) for t in p.grid.tasks for s in p.grid.seeds], tmp_path.resolve())]
    with pytest.raises(FileNotFoundError):                # a full report needs every expected file
        tables.collect(p, tmp_path)


def test_standing_ranks_the_default_per_task_and_pairs_it_with_the_best_other():
    """standing.md: per task, the default's rank by score less dense on the same seeds (a method run on
    one seed is ranked against dense on that seed), the best other method, and the paired difference
    checked against a written-out bootstrap loop; budgets the default did not run are left out."""
    from fisvd.report import resample_indices, seed_draws
    from fisvd.tables import standing
    rng = np.random.default_rng(5)
    ACC = ["rte", "sst2"]
    y = {t: np.array([1, 0] * 20) for t in ACC}

    def noisy(t, errors):
        p = y[t].copy()
        p[rng.choice(len(p), errors, replace=False)] ^= 1
        return p

    def rec(t, pred, seed, **extra):
        return record(100 * float(np.mean(pred == y[t])), {"dev": pred}, seed=seed, **extra)

    errs = {("dense", 42): 2, ("dense", 43): 8, ("default", 42): 6, ("default", 43): 6,
            ("uniform", 42): 0, ("uniform", 43): 0, ("energy", 42): 4}
    preds = {(m, t, s): noisy(t, e) for (m, s), e in errs.items() for t in ACC}
    preds[("uniform", "sst2", 42)] = noisy("sst2", 12)              # on sst2 uniform_rank is worse
    preds[("uniform", "sst2", 43)] = noisy("sst2", 12)
    dense = {t: [rec(t, preds[("dense", t, s)], s, labels={"dev": list(y[t])}, constant_score=50.0)
                 for s in (42, 43)] for t in ACC}
    cells = {t: {("max_fi", "kfac", 50): [rec(t, preds[("default", t, s)], s) for s in (42, 43)],
                 ("uniform_rank", "kfac", 50): [rec(t, preds[("uniform", t, s)], s) for s in (42, 43)],
                 ("energy", "fwsvd", 50): [rec(t, preds[("energy", t, 42)], 42)],      # seed 42 only
                 ("uniform_rank", "kfac", 30): [rec(t, preds[("uniform", t, s)], s) for s in (42, 43)]}
             for t in ACC}                                          # the default did not run p = 0.3
    per_seed = {}
    recovered = {t: {("max_fi", "kfac", 20): [rec(t, preds[("default", t, 42)], 42, recovery_seed=42)]} for t in ACC}
    df, _ = rows_from_results(dense, cells, recovered, 1, "m", per_seed)
    md = standing(df, per_seed, ACC, ("max_fi", "kfac"), (50, 30))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]
    assert rows[0] == ["task", "p", "recovery", "dense", "default", "rank", "best other", "default − best other"]
    rows = {(r[0], r[1], r[2]): r[3:] for r in rows[2:]}
    # p = 0.3: the default has no result; p = 0.2 (recovered only): no result without recovery
    assert list(rows) == [(t, p, e) for t in ACC for p, e in (("0.5", "none"), ("0.2", "1 epoch"))]
    assert rows[("rte", "0.2", "1 epoch")][2:] == ["1 of 1", "–", "–"]    # nothing to rank it against
    body = {(t, p): [e, *v] for (t, p, e), v in rows.items() if e == "none"}
    acc = lambda e: 100 * (40 - e) / 40                             # noqa: E731
    # rte: uniform_rank (no errors) is best; energy (4 errors, seed 42 only: dense 95) scores above the
    # default (6 errors, both seeds: dense (95 + 80) / 2) but trails it by gap: 90 - 95 = -5 vs 85 - 87.5 = -2.5
    # (ranked by score the default would be 3 of 3)
    r = body[("rte", "0.5")]
    assert r[:5] == ["none", f"{(acc(2) + acc(8)) / 2:.1f}", f"{acc(6):.1f}", "2 of 3", "uniform_rank + kfac 100.0"]
    idx = resample_indices({"dev": 40})["dev"]
    n = len(idx)
    draws = np.array([42, 43])[seed_draws(n, 2)]
    a = lambda m, t, s: 100 * (preds[(m, t, s)][idx] == y[t][idx]).mean(axis=1)                      # noqa: E731
    per = lambda m, t: np.mean([np.where(draws[:, j] == 42, a(m, t, 42), a(m, t, 43)) for j in range(2)], axis=0)  # noqa: E731
    lo, hi = np.quantile(per("default", "rte") - per("uniform", "rte"), [0.025, 0.975])
    assert hi < 0 and r[5] == f"{acc(6) - 100:+.1f} [{lo:+.1f}, {hi:+.1f}] ⁻ (2 runs)"
    # sst2: the default (gap -2.5) ranks first, above energy (-5; its score 90 is higher) and uniform_rank (70 - 87.5)
    s = body[("sst2", "0.5")]
    assert s[3:5] == ["1 of 3", f"energy + fwsvd {acc(4):.1f}"]
    lo, hi = np.quantile(a("default", "sst2", 42) - a("energy", "sst2", 42), [0.025, 0.975])
    mark = " ‡" if lo > 0 else " ⁻" if hi < 0 else ""
    assert s[5] == f"{acc(6) - acc(4):+.1f} [{lo:+.1f}, {hi:+.1f}]{mark} (1 run)"
    plain = df[df.recovery_epochs == 0]                             # no recovery, `shown` not run: every budget
    assert [line.split("|")[2].strip() for line in standing(plain, per_seed, ACC, ("max_fi", "kfac"), (10,)).splitlines()
            if line.startswith("| rte")] == ["0.5"]
    assert standing(df, per_seed, ACC, ("max_fi", "whiten"), (50,)).startswith(
        "No standing table: the default (max_fi + whiten) has no result in this grid")
