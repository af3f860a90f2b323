"""Latency tables (fisvd.speed) and speed-aware allocation: faster ranks only, and the latency budget."""
import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import yaml

from conftest import ROOT
from fisvd.methods import ALLOCATORS as METHODS
from fisvd.allocate import TIME_UNITS, AllocationError, allocate as _allocate, min_ratio, total_size
from fisvd.params import ParamError, parse_params
from fisvd.paths import LATENCY_TABLE, STAGES
from fisvd.factorize import break_even
from fisvd.speed import (check_table, default_grid, dense_time, faster_ranks, load_table, predicted,
                         save_table, shape_key, speed_aware, time_of, times)
from test_allocate import OPTS, synthetic

MINILM = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]


def allocate(method, mats, budget=None, rank_multiple=1, **kw):
    return _allocate(method, mats, budget=budget, rank_multiple=rank_multiple, **{**OPTS.get(method, {}), **kw})


def make_table(rows: dict) -> dict:
    """rows: {(m, n): (dense_ms, {rank: ms})} → a well-formed table."""
    shapes = {}
    for (m, n), (dense, ms) in rows.items():
        ranks = sorted(ms)
        shapes[shape_key(m, n)] = {"m": m, "n": n, "rbar": break_even(m, n), "dense_ms": dense,
                                   "dense_ms_q25": dense, "dense_ms_q75": dense, "ranks": ranks,
                                   "ms": [ms[r] for r in ranks], "ratio": [ms[r] / dense for r in ranks],
                                   "ratio_q25": [ms[r] / dense for r in ranks],
                                   "ratio_q75": [ms[r] / dense for r in ranks]}
    return {"format": 1, "device": "cpu", "device_name": "test", "tokens": 4096, "batch": 32, "length": 128,
            "shapes": shapes}


def minilm_table():
    """A MiniLM-shaped table measured every 16 ranks; time ∝ FLOPs plus a per-call overhead, with a
    slow outlier at 64 for the square shape (so the faster set has a hole)."""
    rows = {}
    for m, n in set(MINILM):
        dense = m * n / 1e4
        ms = {r: 1.0 + 1.25 * r * (m + n) / 1e4 for r in default_grid(m, n, 16)}
        if m == n:
            ms[64] = dense * 1.1
        rows[(m, n)] = (dense, ms)
    return make_table(rows)


# ---------------------------------------------------------------- the table functions


def test_time_of_is_measured_or_conservative_between_grid_points():
    t = make_table({(20, 20): (10.0, {2: 3.0, 4: 5.0, 6: 4.0, 8: 12.0})})   # r̄ = 10
    shape = (20, 20)
    assert [time_of(t, shape, r) for r in (2, 4, 6, 8)] == [3.0, 5.0, 4.0, 12.0]     # measured
    assert time_of(t, shape, 1) == 3.0                                             # below the grid: first
    assert time_of(t, shape, 3) == 5.0 and time_of(t, shape, 5) == 5.0            # between: the larger
    assert time_of(t, shape, 7) == 12.0
    assert time_of(t, shape, 9) == 12.0                                            # above: max(last, dense)
    assert time_of(t, shape, 10) == 10.0 and time_of(t, shape, 99) == 10.0         # r ≥ r̄: dense
    assert dense_time(t, shape) == 10.0
    assert times(t, shape) == [3.0, 3.0, 5.0, 5.0, 5.0, 4.0, 12.0, 12.0, 12.0, 10.0]
    assert faster_ranks(t, shape) == {1, 2, 3, 4, 5, 6}                            # 7 has a slow neighbour
    assert faster_ranks(t, shape, by=0.55) == {1, 2, 6}                             # < 4.5 ms
    t2 = make_table({(20, 20): (10.0, {4: 5.0, 6: 4.0})})
    assert time_of(t2, shape, 9) == 10.0 and 7 not in faster_ranks(t2, shape)       # unmeasured top: never faster


def test_measured_margin_is_added_to_unmeasured_ranks_only():
    t = make_table({(20, 20): (10.0, {2: 3.0, 4: 5.0, 6: 4.0, 8: 9.0})})
    t["shapes"]["20x20"]["margin"] = 0.1                                          # + 1 ms off the grid
    shape = (20, 20)
    assert [time_of(t, shape, r) for r in (2, 4, 6, 8, 10)] == [3.0, 5.0, 4.0, 9.0, 10.0]
    assert [time_of(t, shape, r) for r in (1, 3, 5, 7, 9)] == [4.0, 6.0, 6.0, 10.0, 11.0]
    assert faster_ranks(t, shape) == {1, 2, 3, 4, 5, 6, 8}                         # 7: 9 + 1 is not < 10
    t["shapes"]["20x20"]["margin"] = -0.1
    with pytest.raises(AllocationError, match="malformed"):
        check_table(t)


def test_measure_table_smoke():
    """The measurement itself, on a tiny shape (values are noise; the structure is checked)."""
    from fisvd.speed import default_probes, measure_table
    t = measure_table([(48, 32), (48, 32)], batch=4, length=8, rounds=2, warmup=0, reps=1,
                      grid=lambda m, n: default_grid(m, n, 4), probes=lambda m, n: default_probes(m, n, 4, (2,)))
    check_table(t)
    row = t["shapes"]["48x32"]
    assert list(t["shapes"]) == ["48x32"] and row["rbar"] == 19 and t["tokens"] == 32 and t["rounds"] == 2
    assert row["ranks"] == default_grid(48, 32, 4) and row["probe_ranks"] == default_probes(48, 32, 4, (2,))
    assert row["margin"] >= 0 and len(row["cpu_ratio"]) == len(row["ranks"])
    assert all(a <= r <= b for r, a, b in zip(row["ratio"], row["ratio_q25"], row["ratio_q75"]))


def test_predicted_speed_of_an_allocation():
    t = make_table({(20, 20): (10.0, {4: 5.0}), (30, 20): (20.0, {4: 4.0})})
    p = predicted(t, [((20, 20), 4), ((30, 20), 12)])                               # 12 = r̄ of 30x20: dense
    assert p == {"dense_ms": 30.0, "ms": 25.0, "time_ratio": round(25 / 30, 6), "speedup": 1.2}


def test_default_grid_and_round_trip(tmp_path):
    assert default_grid(384, 384, 16) == [1] + [r for k in range(16, 192, 16) for r in (k, k + 1)] + [191]
    g = default_grid(1536, 384, 16)
    assert g[:3] == [1, 16, 17] and g[-3:] == [304, 305, 306]                    # r̄ = 307
    assert default_grid(20, 20, 16) == [1, 9]                                      # r̄ = 10
    assert default_grid(20, 20, 4) == [1, 4, 5, 8, 9]
    t = minilm_table()
    save_table(t, tmp_path / "t.json")
    assert load_table(tmp_path / "t.json") == json.loads(json.dumps(t))
    with pytest.raises(AllocationError, match="missing.json: latency table not found"):
        load_table(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AllocationError, match="bad.json: not valid JSON"):
        load_table(tmp_path / "bad.json")


@pytest.mark.parametrize("mutate", [
    lambda t: t.update(format=0),
    lambda t: t.pop("shapes"),
    lambda t: t["shapes"]["384x384"].update(ranks=[16, 8] + t["shapes"]["384x384"]["ranks"][2:]),
    lambda t: t["shapes"]["384x384"].update(dense_ms=0),
    lambda t: t["shapes"]["384x384"]["ms"].__setitem__(0, float("nan")),
    lambda t: t["shapes"]["384x384"]["ranks"].__setitem__(-1, 192),                 # r̄ is dense, not a rank
    lambda t: t["shapes"]["384x384"].update(m=385),
])
def test_malformed_tables_are_rejected(mutate):
    t = minilm_table()
    mutate(t)
    with pytest.raises(AllocationError, match="benchmarks/latency_table.py"):
        check_table(t)


def test_missing_shape_names_it_and_the_way_out():
    """A direct lookup of an untimed shape names it and the fix; speed_aware does not raise for the
    params budget (the next section)."""
    with pytest.raises(AllocationError, match="no timings for shape 32x64.*allocate.speed_table: null"):
        time_of(minilm_table(), (32, 64), 3)
    assert speed_aware(synthetic([(32, 64)]), minilm_table())[0].fast is None


# ---------------------------------------------------------------- the restriction


def test_restricted_matrix_rounds_within_the_faster_set():
    t = minilm_table()
    M = speed_aware(synthetic([(384, 384)]), t)[0]
    fast = faster_ranks(t, (384, 384))       # 1 + 0.096 r ms < 14.75 up to 129 (144 is slower); 64 slow
    assert fast == set(range(1, 50)) | set(range(65, 130))                       # 50–63 have 64 as neighbour
    assert M.allowed() == sorted(fast) + [192] and M.rmin == 1
    assert M.floor(60) == 49 and M.ceil(60) == 65 and M.next(49) == 65
    assert M.floor(190) == 129 and M.ceil(130) == 192 and M.floor(500) == 192
    k16 = dataclasses.replace(M, step=16)
    assert k16.allowed() == [16, 32, 48, 80, 96, 112, 128, 192]
    assert k16.floor(70) == 48 and k16.ceil(50) == 80 and k16.next(128) == 192 and k16.floor(5) == 16
    assert faster_ranks(t, (1536, 384)) == set(range(1, 242))


def curves(mats, seed=0):
    """Decreasing loss curves ending in 0 (what fisvd.calibrate fills in for `measured`)."""
    rng = np.random.default_rng(seed)
    out = []
    for M in mats:
        c = np.sort(rng.gamma(1.0, 1.0, M.rbar))[::-1].cumsum()[::-1]
        c = c - c[-1]
        out.append(dataclasses.replace(M, loss=c))
    return out


@pytest.mark.parametrize("kind", ["params", "latency"])
@pytest.mark.parametrize("k", [1, 16])
@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_every_method_picks_only_faster_ranks_or_dense(method, k, kind):
    t = minilm_table()
    mats = speed_aware(curves(synthetic(MINILM * 2, seed=4)), t, kind)
    fast = {shape: faster_ranks(t, shape) for shape in set(MINILM)}
    budgets = [None] if method == "fi_retention" else [0.3, 0.55, 0.8]
    for p in budgets:
        kw = dict(calibrate=False) if method == "fi_retention" else {}
        ranks, _ = allocate(method, mats, budget=p, rank_multiple=k, **kw)
        for M, r in zip(mats, ranks):
            assert r == M.rbar or (r in fast[(M.m, M.n)] and r % k == 0), (M.name, r)
        if p is not None:
            assert total_size(mats, ranks) <= _budget_of(mats, p)
    if method == "fi_retention":   # calibrated to the budget, too
        ranks, _ = allocate(method, mats, budget=0.5, rank_multiple=k, calibrate=True)
        assert all(r == M.rbar or (r in fast[(M.m, M.n)] and r % k == 0) for M, r in zip(mats, ranks))


def _budget_of(mats, p):
    total = sum(M.dense_size for M in mats)
    return p * total if mats[0].cost is not None else math.floor(p * total + 1e-6)


def test_restriction_changes_ranks_only_where_they_were_slow():
    """A table in which every rank is faster changes nothing; the restriction only ever removes ranks."""
    mats = synthetic(MINILM * 2, seed=6)
    all_fast = make_table({s: (1e9, {r: 1.0 for r in default_grid(*s, 16)}) for s in set(MINILM)})
    for method in ("max_fi", "uniform_ratio", "energy"):
        plain, _ = allocate(method, mats, budget=0.5)
        assert allocate(method, speed_aware(mats, all_fast), budget=0.5)[0] == plain


# ---------------------------------------------------------------- the latency budget

TINY = [(12, 8), (10, 10), (16, 6), (9, 12)]                                       # r̄ = 4, 5, 4, 5


def tiny_rows(seed, integer):
    """{(m, n): (dense ms, {rank: ms})}, every rank below r̄ measured."""
    rng = np.random.default_rng(seed)
    rows = {}
    for m, n in sorted(set(TINY)):
        rbar = break_even(m, n)
        dense = float(rng.integers(20, 40))
        ms = {r: (float(rng.integers(1, dense + 8)) if integer else float(rng.uniform(1, dense + 8)))
              for r in range(1, rbar)}
        rows[(m, n)] = (dense, ms)
    return rows


def tiny_table(seed, integer):
    return make_table(tiny_rows(seed, integer))


def brute_latency(mats, rows, p, value):
    """Best value over every allocation of ranks faster than dense (or dense), costed by the rows' own
    times, whose total is ≤ p of the dense total: independent of speed_aware / time_of."""
    opts = [[(r, ms[r]) for r in range(1, M.rbar) if ms[r] < dense] + [(M.rbar, dense)]
            for M in mats for dense, ms in [rows[(M.m, M.n)]]]
    budget = p * sum(rows[(M.m, M.n)][0] for M in mats)
    return max(value([r for r, _ in combo]) for combo in itertools.product(*opts)
               if sum(c for _, c in combo) <= budget + 1e-9)


def brute(mats, budget, value):
    best = None
    for rk in itertools.product(*[M.allowed() for M in mats]):
        if total_size(mats, rk) <= budget:
            v = value(rk)
            best = v if best is None else max(best, v)
    return best


def fi(mats, ranks):
    return sum(M.g.sum() if r >= M.rbar else M.g[:r].sum() for M, r in zip(mats, ranks))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", [0.7, 0.8, 0.9])
def test_latency_knapsack_equals_brute_force(seed, p):
    rows = tiny_rows(seed, integer=True)      # integer times: the DP is exact (gcd unit)
    t = make_table(rows)
    mats = speed_aware(curves(synthetic(TINY, seed)), t, "latency")
    total = sum(M.dense_size for M in mats)
    assert min_ratio(mats) < p
    ranks, info = allocate("max_fi", mats, budget=p)
    assert info["solver"] == "dp"
    share = sum(time_of(t, (M.m, M.n), r) for M, r in zip(mats, ranks)) / sum(dense_time(t, (M.m, M.n)) for M in mats)
    assert share <= p + 1e-12
    assert fi(mats, ranks) == pytest.approx(brute(mats, p * total, lambda rk: fi(mats, rk)), rel=1e-12)
    assert fi(mats, ranks) == pytest.approx(brute_latency(mats, rows, p, lambda rk: fi(mats, rk)), rel=1e-12)
    ranks, info = allocate("measured", mats, budget=p)                             # the same DP with −Δ
    loss = lambda rk: -sum(M.loss[r - 1] for M, r in zip(mats, rk))               # noqa: E731
    assert loss(ranks) == pytest.approx(brute(mats, p * total, loss), abs=1e-12)
    assert loss(ranks) == pytest.approx(brute_latency(mats, rows, p, loss), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", [0.75, 0.9])
def test_latency_knapsack_with_real_valued_times_stays_within_p(seed, p):
    t = tiny_table(seed, integer=False)       # times rounded up to budget / 2^16: feasible, near-optimal
    mats = speed_aware(synthetic(TINY, seed), t, "latency")
    total = sum(M.dense_size for M in mats)
    assert min_ratio(mats) < p
    ranks, info = allocate("max_fi", mats, budget=p)
    assert info["solver"] == "dp" and total_size(mats, ranks) <= p * total
    value = lambda rk: fi(mats, rk)                                              # noqa: E731
    assert value(ranks) <= brute(mats, p * total, value) + 1e-9
    # every allocation within budget·(1 − N/2^16) survives the rounding up, so the DP is at least as good
    assert value(ranks) >= brute(mats, p * total * (1 - len(mats) / TIME_UNITS), value) - 1e-9


@pytest.mark.parametrize("method", sorted(set(METHODS.names()) - {"fi_retention"}) + ["fi_retention"])
@pytest.mark.parametrize("p", [0.35, 0.6, 0.9])
def test_latency_budget_keeps_time_share_at_most_p(method, p):
    t = minilm_table()
    mats = speed_aware(curves(synthetic(MINILM * 2, seed=8)), t, "latency")
    kw = dict(calibrate=True) if method == "fi_retention" else {}
    ranks, _ = allocate(method, mats, budget=p, **kw)
    shares = [time_of(t, (M.m, M.n), r) for M, r in zip(mats, ranks)]
    share = sum(shares) / sum(dense_time(t, (M.m, M.n)) for M in mats)
    assert share <= p + 1e-12
    assert predicted(t, [((M.m, M.n), r) for M, r in zip(mats, ranks)])["time_ratio"] == pytest.approx(share, abs=1e-6)
    if method == "uniform_ratio":      # each matrix keeps at most p of its own time (or its smallest rank)
        assert all(M.size(r) <= p * M.dense_size or r == M.rmin for M, r in zip(mats, ranks))
    if method in ("random", "inter_layer_fi", "energy", "fi_retention"):
        # filled: no single allowed step up still fits
        left = p * sum(M.dense_size for M in mats) - total_size(mats, ranks)
        assert all(M.size(M.next(r)) - M.size(r) > left for M, r in zip(mats, ranks) if r < M.rbar)


def test_latency_budget_below_minimum_names_the_time_share():
    mats = speed_aware(synthetic(MINILM), minilm_table(), "latency")
    with pytest.raises(AllocationError, match="minimum reachable kept time share"):
        allocate("max_fi", mats, budget=0.01)


def test_mixed_cost_kinds_are_refused():
    t = minilm_table()
    mats = speed_aware(synthetic(MINILM[:2]), t, "latency") + speed_aware(synthetic(MINILM[:2]), t)
    with pytest.raises(AllocationError, match="allocate.budget_kind"):
        allocate("max_fi", mats, budget=0.5)


# ---------------------------------------------------------------- params and the stage


def defaults():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("change,needle", [
    (dict(budget_kind="time"), "allocate.budget_kind: 'time' is not allowed; choose one of params, latency"),
    (dict(budget_kind="latency", speed_table=None), "allocate.speed_table: null, but allocate.budget_kind latency"),
    (dict(speed_table=""), "allocate.speed_table: empty"),
    (dict(speed_table=3), "allocate.speed_table: 3 has the wrong type"),
])
def test_validation_names_the_key(change, needle):
    raw = defaults()
    raw["allocate"].update(change)
    with pytest.raises(ParamError) as err:
        parse_params(raw)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_latency_with_a_table_is_valid():
    raw = defaults()
    raw["allocate"].update(budget_kind="latency", speed_table=LATENCY_TABLE)
    p = parse_params(raw)
    assert p.allocate.budget_kind == "latency" and p.allocate.speed_table == LATENCY_TABLE


def test_stage_reads_only_a_table_that_is_its_dvc_dep(monkeypatch):
    from stages.allocate import speed_table
    assert LATENCY_TABLE in STAGES["allocate"][0]
    assert speed_table(None) is None
    with pytest.raises(ParamError, match="allocate.speed_table: other/table.json is not a dependency"):
        speed_table("other/table.json")
    monkeypatch.chdir(ROOT)
    assert speed_table("./" + LATENCY_TABLE)["device"] == "cpu"


# ---------------------------------------------------------------- the committed CPU table


def test_committed_cpu_table():
    table = load_table(ROOT / LATENCY_TABLE)
    params = defaults()
    assert table["device"] == "cpu" and table["device_name"] and table["dtype"] == "float32"
    assert table["tokens"] == table["batch"] * table["length"] == \
        params["evaluate"]["batch_size"] * params["finetune"]["max_length"]     # the evaluate stage's workload
    assert table["rounds"] >= 5
    assert set(table["shapes"]) == {"384x384", "1536x384", "384x1536"}           # MiniLM-L6's Linears
    for key, row in table["shapes"].items():
        shape = (row["m"], row["n"])
        fast = faster_ranks(table, shape)
        assert fast, f"{key}: no rank faster than dense"
        assert all(a <= r <= b for r, a, b in zip(row["ratio"], row["ratio_q25"], row["ratio_q75"]))
        assert time_of(table, shape, 1) < dense_time(table, shape)               # rank 1 beats dense
    md = (ROOT / LATENCY_TABLE).with_suffix(".md").read_text()
    assert "Machine:" in md and "ranks faster than dense" in md
    mats = speed_aware(synthetic(MINILM * 6, seed=1), table, "latency")           # usable by every allocator
    ranks, _ = allocate("max_fi", mats, budget=0.6)
    assert all(r == M.rbar or r in M.fast for M, r in zip(mats, ranks))


# ---------------------------------------------------------------- another model than the table's


def test_shapes_the_table_lacks_take_any_rank_and_are_recorded_not_an_error():
    """Issue 21: a model whose shapes the shipped table never timed (768x768 for BERT-base) works on
    the default params: those matrices take any rank, as with speed_table: null; the others stay
    restricted to their faster ranks; ranks.json names the missing shapes and predicts time over the
    timed Linears only. The latency budget, which needs every time, fails naming the shapes and fix."""
    from fisvd.plan import ranks_record
    table = minilm_table()
    mats = synthetic([(384, 384), (768, 768), (1536, 384)])
    aware = speed_aware(mats, table, "params")
    assert aware[1] == mats[1] and aware[1].fast is None                     # untimed: unrestricted
    assert aware[0].fast == frozenset(faster_ranks(table, (384, 384)))       # timed: restricted as before
    assert aware[0].allowed() != mats[0].allowed()
    ranks, info = _allocate("max_fi", aware, budget=0.5, rank_multiple=1, objective="total")
    assert ranks[1] < aware[1].rbar and all(r in aware[0].allowed() for r in ranks[:1])
    rec = ranks_record(aware, ranks, info, 10 ** 6, method="max_fi", spectrum_of="kfac", budget=0.5,
                       rank_multiple=1, opts=None, table=table, budget_kind="params", speed_table="t.json")
    t = rec["totals"]
    assert t["speed_missing"] == ["768x768"]
    timed = [((384, 384), ranks[0]), ((1536, 384), ranks[2])]
    assert t["predicted_linears"] == predicted(table, timed)
    assert t["predicted_linears"]["dense_ms"] == pytest.approx(384 * 384 / 1e4 + 1536 * 384 / 1e4, abs=1e-3)
    with pytest.raises(AllocationError, match=r"no timings for shape 768x768.*budget_kind: params"):
        speed_aware(mats, table, "latency")
    full = ranks_record(speed_aware(synthetic([(384, 384)]), table), [1], {}, 10 ** 6, method="max_fi",
                        spectrum_of="kfac", budget=0.5, rank_multiple=1, opts=None, table=table,
                        budget_kind="params", speed_table="t.json")
    assert "speed_missing" not in full["totals"]                             # MiniLM's ranks.json: same keys
    assert list(full["totals"])[-4:] == ["budget_kind", "speed_table", "speed_device", "predicted_linears"]


def test_latency_table_merge_adds_a_models_shapes_and_refuses_another_machine(tmp_path):
    """benchmarks/latency_table.py --merge: the shapes of both tables (a shared shape: the new timings),
    the models named; a table from another machine or workload is refused, naming the field."""
    from conftest import load_bench
    bench = load_bench("latency_table")
    a = make_table({(20, 20): (10.0, {2: 3.0, 4: 5.0}), (20, 40): (12.0, {2: 4.0})}) | {"model": "small"}
    b = make_table({(20, 40): (11.0, {2: 3.5}), (40, 40): (30.0, {4: 9.0})}) | {"model": "big"}
    m = bench.merge_tables(a, b)
    assert sorted(m["shapes"]) == ["20x20", "20x40", "40x40"] and m["model"] == "small+big"
    assert m["shapes"]["20x40"]["dense_ms"] == 11.0 and m["shapes"]["20x20"] == a["shapes"]["20x20"]
    save_table(m, tmp_path / "t.json")
    assert time_of(load_table(tmp_path / "t.json"), (40, 40), 4) == 9.0
    assert bench.merge_tables(m, b)["model"] == "small+big"               # merging again names each model once
    with pytest.raises(ValueError, match="the table's length is 128, this run's 256"):
        bench.merge_tables(a, b | {"length": 256})


def test_latency_table_refuses_before_measuring(tmp_path, monkeypatch):
    """Overwriting a table of another model needs --replace; --merge with another workload is refused
    before any timing (measure_table is never reached)."""
    from conftest import load_bench
    bench = load_bench("latency_table")
    out = tmp_path / "t.json"
    save_table(make_table({(20, 20): (10.0, {2: 3.0})}) | {"model": "minilm-l6"}, out)
    monkeypatch.setattr(bench, "measure_table", lambda *a, **k: pytest.fail("measured"))
    monkeypatch.setattr("sys.argv", ["latency_table.py", "--model", "other", "--out", str(out)])
    with pytest.raises(SystemExit, match="times minilm-l6; --merge adds other's shapes to it, --replace"):
        bench.main()
    monkeypatch.setattr("sys.argv", ["latency_table.py", "--model", "other", "--out", str(out), "--merge",
                                     "--batch", "16"])
    with pytest.raises(ValueError, match="--merge: the table's"):
        bench.main()
