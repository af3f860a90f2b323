"""benchmarks/default_select.py: the per-row Δ against scipy, the bootstrap ratios against a loop,
the held-out rows against fisvd.data.subset, and the decision rule on constructed intervals."""
import numpy as np
import pytest
from scipy.stats import entropy

from conftest import load_bench
from fisvd.data import SLICE_SEED, subset

bench = load_bench("default_select")


def test_row_deltas_are_kl_per_row_and_scaled_squared_error():
    rng = np.random.default_rng(0)
    z, zh = rng.normal(size=(9, 3)) * 3, rng.normal(size=(9, 3)) * 3
    soft = lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)
    want = [entropy(p, q) for p, q in zip(soft(z), soft(zh))]
    assert np.allclose(bench.row_deltas(z, zh), want, rtol=1e-10)
    assert np.allclose(bench.row_deltas(z, z), 0, atol=1e-12)
    y, yh = rng.normal(size=(7, 1)), rng.normal(size=(7, 1))
    var = sum((v - y.mean()) ** 2 for v in y[:, 0]) / 7
    assert np.allclose(bench.row_deltas(y, yh), [(b - a) ** 2 / var for a, b in zip(y[:, 0], yh[:, 0])])


def test_boot_ratios_match_a_loop_and_tasks_draw_independently():
    rng = np.random.default_rng(1)
    num = {"a": rng.random(5) + 0.1, "b": rng.random(8) + 0.1}
    den = {"a": rng.random(5) + 0.1, "b": rng.random(8) + 0.1}
    per, pooled = bench.boot_ratios(num, den, n=50)
    for t in num:
        idx = np.random.default_rng([0, *t.encode()]).integers(0, len(num[t]), (50, len(num[t])))
        want = [num[t][i].sum() / den[t][i].sum() for i in idx]
        assert np.allclose(per[t], want)
    assert np.allclose(pooled, np.sqrt(per["a"] * per["b"]))
    alone, _ = bench.boot_ratios({"a": num["a"]}, {"a": den["a"]}, n=50)
    assert np.array_equal(alone["a"], per["a"])


def test_held_rows_avoid_the_calibration_subset():
    train = [{"i": i} for i in range(100)]
    idx = bench.held_rows(train, 30, 20)
    calib = {r["i"] for r in subset(train, 30, SLICE_SEED)}
    assert len(idx) == 20 == len(set(idx)) and idx == sorted(idx)
    assert not calib & set(idx)
    assert len(bench.held_rows(train, 30, 500)) == 70           # every free row, no more


@pytest.mark.parametrize("case, verdict", [
    ("switch", True), ("pooled_reaches_1", False), ("one_task_worse", False), ("worse_at_half", False),
    ("missing_task", None), ("half_may_reach_1", True), ("pooled_exactly_1", False), ("task_at_1", True)])
def test_decision_rule(case, verdict):
    tasks = ["a", "b"]
    good = (0.5, 0.9)
    pooled = {p: good for p in bench.BUDGETS}
    per = {p: {t: good for t in tasks} for p in bench.BUDGETS}
    if case == "pooled_reaches_1":
        pooled[10] = (0.6, 1.01)
    if case == "one_task_worse":
        per[20]["b"] = (1.05, 1.4)
    if case == "worse_at_half":
        pooled[50] = (1.02, 1.3)
    if case == "missing_task":
        per = {p: {"a": good} for p in bench.BUDGETS}
    if case == "half_may_reach_1":          # p = 0.5 only needs not worse beyond its interval
        pooled[50] = (0.9, 1.3)
    if case == "pooled_exactly_1":          # p ≤ 0.3: the interval must stay below 1
        pooled[30] = (0.5, 1.0)
    if case == "task_at_1":                 # a task blocks only when worse beyond its interval (lo > 1)
        per[20]["a"] = (1.0, 1.3)
    assert bench.decide(pooled, per, tasks)[0] is verdict
    # worse on one task at the default budget alone (pooled fine) does not block the switch
    per[50] = {t: (1.1, 1.2) for t in per[50]}
    assert bench.decide(pooled, per, tasks)[0] is verdict
