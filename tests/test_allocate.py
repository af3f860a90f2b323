"""Rank allocation against brute force and the definitions in methods.md §5–§7."""
import itertools
import math

import numpy as np
import pytest
import torch

from fisvd.allocate import (AllocationError, Matrix, allocate as _allocate, equivalent_uniform_rank, min_ratio,
                            ranks_for_tau, report, total_size)
from fisvd.methods import ALLOCATORS as METHODS
from fisvd.plan import make_matrix

CONTROLS = ["uniform_rank", "uniform_ratio"]
FILLED = ["energy", "random", "inter_layer_fi", "max_fi"]
# test options per method (the product's defaults live in params.yaml alone)
OPTS = {"fi_retention": dict(tau=0.95, calibrate=True), "inter_layer_fi": dict(score="total", alpha=1.0, r_min=1),
        "max_fi": dict(objective="total"), "random": dict(seed=1),
        "measured": dict(points=3, metric="kl", slice=24, swaps=3)}


def allocate(method, mats, budget=None, rank_multiple=1, **kw):
    return _allocate(method, mats, budget=budget, rank_multiple=rank_multiple, **{**OPTS.get(method, {}), **kw})


def test_every_registered_method_is_tested_here():
    assert set(METHODS.names()) == set(CONTROLS + FILLED + ["fi_retention", "measured"])  # measured: test_calibrate.py
    assert set(METHODS.with_params()) == set(OPTS)


def synthetic(shapes, seed=0):
    rng = np.random.default_rng(seed)
    mats = []
    for i, (m, n) in enumerate(shapes):
        g = np.sort(rng.gamma(0.5, 1.0, min(m, n)) * rng.uniform(0.1, 10))[::-1]
        e = np.sort(rng.gamma(1.0, 1.0, min(m, n)))[::-1]
        mats.append(Matrix(f"m{i}", i // 2, "q", m, n, g, e, float(rng.uniform(0.1, 5)), float(rng.uniform(0.1, 5))))
    return mats


SMALL = [(12, 8), (10, 10), (16, 6), (9, 12)]


def all_allocations(mats, k=1):
    """Every allocation whose ranks are multiples of k below r̄, or r̄ (dense), built from the rule."""
    return itertools.product(*[[r for r in range(1, M.rbar + 1) if r % k == 0 or r == M.rbar] for M in mats])


def dense_total(mats):
    return sum(M.dense_size for M in mats)


def value(mats, ranks, objective):
    v = 0.0
    for M, r in zip(mats, ranks):
        kept = M.g.sum() if r >= M.rbar else M.g[:r].sum()
        v += kept / M.g.sum() if objective == "layerwise" else kept
    return v


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("objective", ["total", "layerwise"])
@pytest.mark.parametrize("p", [0.35, 0.6, 0.85])
def test_max_fi_equals_brute_force(seed, objective, p):
    mats = synthetic(SMALL, seed)
    B = math.floor(p * dense_total(mats) + 1e-6)
    best = max(value(mats, rk, objective) for rk in all_allocations(mats) if total_size(mats, rk) <= B)
    ranks, info = allocate("max_fi", mats, budget=p, objective=objective)
    assert total_size(mats, ranks) <= B
    assert value(mats, ranks, objective) == pytest.approx(best, rel=1e-12)
    assert info["solver"] == "dp"


@pytest.mark.parametrize("seed", range(3))
def test_max_fi_greedy_fallback_is_within_one_step_of_the_brute_force_optimum(seed, monkeypatch):
    """Too large for the DP (forced here): the greedy by gain per parameter meets the budget and, the
    spectra being descending (concave gains), is short of the optimum by less than one step's gain."""
    import fisvd.allocate as alloc
    monkeypatch.setattr(alloc, "_max_fi_dp", lambda *a, **k: None)
    mats = synthetic(SMALL, seed + 40)
    p = 0.5
    B = math.floor(p * dense_total(mats) + 1e-6)
    best = max(value(mats, rk, "total") for rk in all_allocations(mats) if total_size(mats, rk) <= B)
    ranks, info = allocate("max_fi", mats, budget=p, objective="total")
    assert info["solver"] == "greedy" and total_size(mats, ranks) <= B
    biggest = max(float(M.g[r:].sum() if r + 1 >= M.rbar else M.g[r]) for M in mats for r in range(1, M.rbar))
    assert best - biggest <= value(mats, ranks, "total") <= best + 1e-12


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", [0.3, 0.5, 0.75])
def test_calibrated_fi_retention_equals_max_min(seed, p):
    mats = synthetic(SMALL, seed + 10)
    B = math.floor(p * dense_total(mats) + 1e-6)
    best = max(min(M.rho(r) for M, r in zip(mats, rk)) for rk in all_allocations(mats) if total_size(mats, rk) <= B)
    ranks, info = allocate("fi_retention", mats, budget=p, calibrate=True)
    assert total_size(mats, ranks) <= B
    assert min(M.rho(r) for M, r in zip(mats, ranks)) == pytest.approx(best, abs=1e-12)
    assert info["tau"] == pytest.approx(best, abs=1e-12)


def test_fixed_tau_is_smallest_rank_reaching_tau_and_monotone():
    mats = synthetic(SMALL, 3)
    prev = -1
    for tau in np.linspace(0.05, 1.0, 40):
        ranks, info = allocate("fi_retention", mats, tau=float(tau), calibrate=False)
        for M, r in zip(mats, ranks):
            brute = next((k for k in range(1, M.rbar) if M.cum_g[k - 1] >= tau - 1e-12), M.rbar)
            assert r == brute
        size = total_size(mats, ranks)
        assert size >= prev  # larger tau never gives fewer params
        prev = size
    assert ranks_for_tau(mats, 1.0) == [M.rbar for M in mats]  # tau = 1 keeps all dense
    assert ranks_for_tau(mats, 1e-9) == [1] * len(mats)


@pytest.mark.parametrize("k", [1, 16])
@pytest.mark.parametrize("method", FILLED + ["fi_retention"])
@pytest.mark.parametrize("p", [0.2, 0.45, 0.7, 0.95])
def test_budget_met_from_below_within_one_step(method, p, k):
    mats = synthetic([(384, 384)] * 4 + [(1536, 384), (384, 1536)] * 2, seed=5)
    B = math.floor(p * dense_total(mats) + 1e-6)
    ranks, _ = allocate(method, mats, budget=p, rank_multiple=k)
    used = total_size(mats, ranks)
    assert used <= B
    # one step = k ranks more (or the jump to dense when fewer than k remain below r̄)
    steps = [M.size(min(r + k, M.rbar)) - M.size(r) for M, r in zip(mats, ranks) if r < M.rbar]
    assert not steps or B - used < min(steps)
    assert all(1 <= r <= M.rbar and (r % k == 0 or r == M.rbar) for M, r in zip(mats, ranks))


ALIGNED_SMALL = [(24, 16), (20, 20), (30, 12), (18, 24)]  # r̄ = 9, 10, 8, 10


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("objective", ["total", "layerwise"])
@pytest.mark.parametrize("p", [0.35, 0.55, 0.8])  # k = 3 everywhere is p = 0.31
def test_aligned_max_fi_equals_brute_force(k, objective, p):
    mats = synthetic(ALIGNED_SMALL, seed=7 + k)
    B = math.floor(p * dense_total(mats) + 1e-6)
    best = max(value(mats, rk, objective) for rk in all_allocations(mats, k) if total_size(mats, rk) <= B)
    ranks, info = allocate("max_fi", mats, budget=p, objective=objective, rank_multiple=k)
    assert total_size(mats, ranks) <= B and info["solver"] == "dp"
    assert value(mats, ranks, objective) == pytest.approx(best, rel=1e-12)
    assert all(r % k == 0 or r == M.rbar for M, r in zip(mats, ranks))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("p", [0.35, 0.6])
def test_aligned_calibrated_fi_retention_equals_max_min(k, p):
    mats = synthetic(ALIGNED_SMALL, seed=20 + k)
    B = math.floor(p * dense_total(mats) + 1e-6)
    best = max(min(M.rho(r) for M, r in zip(mats, rk)) for rk in all_allocations(mats, k)
               if total_size(mats, rk) <= B)
    ranks, _ = allocate("fi_retention", mats, budget=p, calibrate=True, rank_multiple=k)
    assert total_size(mats, ranks) <= B
    assert min(M.rho(r) for M, r in zip(mats, ranks)) == pytest.approx(best, abs=1e-12)


def test_aligned_fixed_tau_rounds_up_to_the_next_multiple():
    mats = synthetic(ALIGNED_SMALL, seed=4)
    for tau in np.linspace(0.1, 0.99, 12):
        exact, _ = allocate("fi_retention", mats, tau=float(tau), calibrate=False)
        aligned, _ = allocate("fi_retention", mats, tau=float(tau), calibrate=False, rank_multiple=4)
        for M, r1, r4 in zip(mats, exact, aligned):
            want = M.rbar if r1 == M.rbar or math.ceil(r1 / 4) * 4 >= M.rbar else math.ceil(r1 / 4) * 4
            assert r4 == want and M.rho(r4) >= tau - 1e-12


def test_rank_multiple_larger_than_break_even_means_dense():
    tiny = synthetic([(32, 32), (64, 32)])                              # r̄ = 16, 21
    assert allocate("uniform_ratio", tiny, budget=1.0, rank_multiple=32)[0] == [16, 21]
    with pytest.raises(AllocationError, match="minimum reachable kept ratio 1.0000"):
        allocate("max_fi", tiny, budget=0.9, rank_multiple=32)       # only dense is allowed
    with pytest.raises(AllocationError, match="rank_multiple"):
        allocate("max_fi", tiny, budget=0.9, rank_multiple=0)


MINILM = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]                 # one MiniLM layer: r̄ = 192 ×4, 307 ×2


@pytest.mark.parametrize("k", [1, 16])
@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.81, 0.95])
def test_uniform_ratio_is_exactly_floor_p_rbar(p, k):
    mats = synthetic(MINILM * 2 + [(300, 200)], seed=3)
    ranks, _ = allocate("uniform_ratio", mats, budget=p, rank_multiple=k)
    for M, r in zip(mats, ranks):                                     # no leftover fill: the definition
        want = math.floor(p * M.rbar)
        want = max(k if k < M.rbar else M.rbar, want - want % k)
        assert r == want, (M.m, M.n, r, want)


@pytest.mark.parametrize("k", [1, 16])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.7, 0.81, 0.9])
def test_uniform_rank_is_one_rank_for_all_dense_above_break_even(p, k):
    mats = synthetic(MINILM * 2, seed=3)
    B = math.floor(p * dense_total(mats) + 1e-6)
    ranks, info = allocate("uniform_rank", mats, budget=p, rank_multiple=k)
    r = info["uniform_rank"]
    assert r % k == 0
    assert ranks == [M.rbar if r >= M.rbar else r for M in mats]       # the same rank everywhere, no fill
    assert total_size(mats, ranks) <= B
    assert total_size(mats, [M.rbar if r + k >= M.rbar else r + k for M in mats]) > B  # the largest such r


def test_uniform_rank_keeps_attention_dense_at_high_budget():
    mats = synthetic(MINILM, seed=1)        # p = 0.81: (589824 + 3840 r) / 1769472 ≤ 0.81 → r = 219 ≥ 192
    ranks, info = allocate("uniform_rank", mats, budget=0.81)
    assert info["uniform_rank"] == 219 and ranks == [192] * 4 + [219, 219]


def test_equivalent_uniform_rank_counts_break_even():
    mats = synthetic(MINILM * 6)
    at = lambda r: total_size(mats, [min(r, M.rbar) for M in mats])
    kept = round(0.81297 * dense_total(mats))   # the committed fi_retention τ = 0.95 allocation's p
    assert at(221) <= kept < at(222)                                   # attention dense, FFN rank 221
    assert equivalent_uniform_rank(mats, kept) == 221                  # not kept / Σ(m+n) = 208.1
    assert equivalent_uniform_rank(mats, at(221)) == 221
    assert equivalent_uniform_rank(mats, at(221) - 1) == 220 and equivalent_uniform_rank(mats, at(222) - 1) == 221
    rng = np.random.default_rng(0)
    small = synthetic(SMALL)
    for kept in rng.integers(1, dense_total(small) + 1, 50):           # brute force over every r
        want = max([r for r in range(1, 13) if total_size(small, [min(r, M.rbar) for M in small]) <= kept],
                   default=0)
        assert equivalent_uniform_rank(small, int(kept)) == want
    assert report(small, [M.rbar for M in small], 10**4)["totals"]["equivalent_uniform_rank"] == 10


def test_inter_layer_fi_follows_scores():
    mats = synthetic([(384, 384)] * 3, seed=2)
    for M, s in zip(mats, [1.0, 4.0, 9.0]):
        M.fisher_total = s
    ranks, _ = allocate("inter_layer_fi", mats, budget=0.4)
    assert ranks[0] < ranks[1] < ranks[2]
    assert ranks[2] / ranks[0] == pytest.approx(9.0, rel=0.1)
    flat, _ = allocate("inter_layer_fi", mats, budget=0.4, alpha=1e-9)
    assert max(flat) - min(flat) <= 1


def test_inter_layer_fi_gives_parameters_in_proportion_to_the_score_on_any_shape_and_each_score():
    """methods.md: r_i (m_i + n_i) ∝ s_i^α, so a matrix with twice the score gets twice the parameters,
    whatever its shape; `score` picks Σ F, Σ F / mn or Σ F ⊙ W²; every rank ≥ r_min."""
    mats = synthetic([(384, 384), (1536, 384)], seed=4)
    mats[0].fisher_total, mats[1].fisher_total = 1.0, 2.0
    ranks, _ = allocate("inter_layer_fi", mats, budget=0.3)
    params = [r * (M.m + M.n) for M, r in zip(mats, ranks)]
    # ~100 ranks each and the leftover fill's rank steps: within 4 %; ranks ∝ score would give 2 × 1920 / 768 = 5,
    # ranks ∝ score / (m + n) on ranks alone 0.8
    assert params[1] / params[0] == pytest.approx(2.0, rel=0.04)
    mats = synthetic([(384, 384)] * 3, seed=6)
    for M, total, energy in zip(mats, [5.0, 5.0, 5.0], [1.0, 2.0, 3.0]):
        M.fisher_total, M.fisher_energy = total, energy
    by_energy, _ = allocate("inter_layer_fi", mats, budget=0.3, score="energy", alpha=2.0)
    assert [r / by_energy[0] for r in by_energy] == pytest.approx([1.0, 4.0, 9.0], rel=0.05)
    by_total, _ = allocate("inter_layer_fi", mats, budget=0.3, score="total")
    assert max(by_total) - min(by_total) <= 1                            # equal Σ F: equal ranks
    mixed = synthetic([(384, 384), (384, 1536)], seed=8)                 # density: Σ F / mn, 4× larger matrix
    mixed[0].fisher_total, mixed[1].fisher_total = 1.0, 4.0              # the same density
    dens, _ = allocate("inter_layer_fi", mixed, budget=0.3, score="density")
    assert dens[1] * 1920 / (dens[0] * 768) == pytest.approx(1.0, rel=0.04)   # equal scores: equal parameters
    total, _ = allocate("inter_layer_fi", mixed, budget=0.3, score="total")
    assert total[1] * 1920 / (total[0] * 768) == pytest.approx(4.0, rel=0.04)  # Σ F: 4× the parameters
    mats[0].fisher_total, mats[1].fisher_total, mats[2].fisher_total = 1e-6, 1.0, 1.0
    low, _ = allocate("inter_layer_fi", mats, budget=0.3, r_min=8)
    assert min(low) >= 8


def test_energy_is_the_max_min_unweighted_share():
    """energy: the largest τ such that every matrix keeps ≥ τ of its unweighted spectrum Σ e_k (shares
    computed here from e, not the Matrix's cumulative arrays), then the leftover filled."""
    def share(M, r):
        return 1.0 if r >= M.rbar else float(M.e[:r].sum() / M.e.sum())
    for seed, p in ((1, 0.35), (2, 0.6)):
        mats = synthetic(SMALL, seed + 30)
        for M in mats:                                                   # e unlike g: energy must not read g
            M.e = np.linspace(1.0, 0.8, len(M.e))                        # nearly flat; g is steep
            M.__post_init__()
        B = math.floor(p * dense_total(mats) + 1e-6)
        best = max(min(share(M, r) for M, r in zip(mats, rk)) for rk in all_allocations(mats) if total_size(mats, rk) <= B)
        ranks, info = allocate("energy", mats, budget=p)
        assert total_size(mats, ranks) <= B
        assert min(share(M, r) for M, r in zip(mats, ranks)) == pytest.approx(best, abs=1e-12)
        assert info["tau"] == pytest.approx(best, abs=1e-12)
        g_best = max(min(M.rho(r) for M, r in zip(mats, rk)) for rk in all_allocations(mats) if total_size(mats, rk) <= B)
        assert best != pytest.approx(g_best, abs=0.05)     # the inputs tell the two spectra apart


def test_random_gives_each_matrix_its_seeded_share_of_its_break_even_rank():
    """random: r_i ≈ c · u_i · r̄_i with u_i the seed's uniform draws (drawn here with random.Random)."""
    import random
    mats = synthetic([(384, 384), (384, 1536), (1536, 384)] * 2, seed=9)
    ranks, _ = allocate("random", mats, budget=0.4, seed=5)
    rng = random.Random(5)
    u = [rng.random() for _ in mats]
    c = [r / (ui * M.rbar) for M, r, ui in zip(mats, ranks, u)]
    assert max(c) / min(c) == pytest.approx(1.0, abs=0.05), (ranks, u)


def test_random_is_seeded():
    mats = synthetic(SMALL * 3)
    assert allocate("random", mats, budget=0.5, seed=3)[0] == allocate("random", mats, budget=0.5, seed=3)[0]
    assert allocate("random", mats, budget=0.5, seed=3)[0] != allocate("random", mats, budget=0.5, seed=4)[0]


def test_budget_below_minimum_names_minimum():
    mats = synthetic([(384, 384), (1536, 384)])
    pmin = min_ratio(mats)
    with pytest.raises(AllocationError, match=f"minimum reachable kept ratio {pmin:.4f}"):
        allocate("max_fi", mats, budget=pmin / 2)
    ranks, _ = allocate("uniform_ratio", mats, budget=pmin)
    assert ranks == [1, 1]


def test_matrix_stats_spectrum_is_fwsvd_weighted_and_report_counts():
    W = torch.randn(12, 8, dtype=torch.float64)
    F = torch.rand(12, 8, dtype=torch.float64)
    M = make_matrix("x", 0, "q", W, F)
    s = torch.sqrt(F.mean(0))                      # methods.md §6: the column mean (÷ m), not the sum
    assert np.allclose(M.g, torch.linalg.svdvals(W * s) ** 2)
    assert np.allclose(M.e, torch.linalg.svdvals(W) ** 2)
    rep = report([M], [2], 1000)
    row = rep["matrices"][0]
    assert row["kept_params"] == 2 * 20 and not row["dense"]
    assert rep["totals"]["total_params"] == 1000 - 96 + 40
    assert row["fi_retained"] == pytest.approx(M.g[:2].sum() / M.g.sum(), abs=1e-6)
    dense = report([M], [M.rbar], 1000)["matrices"][0]
    assert dense["dense"] and dense["kept_params"] == 96 and dense["fi_retained"] == 1.0


def test_nan_weights_rejected():
    W = torch.ones(4, 4)
    W[0, 0] = float("inf")
    with pytest.raises(AllocationError, match="NaN or inf"):
        make_matrix("bad", 0, "q", W, torch.ones(4, 4))


def test_matrices_take_the_factorisations_spectrum():
    """plan.matrices (what allocate runs) on Factors: fwsvd's g is σ_k(W diag √(mean_i F_ij))² (the ÷ m of
    methods.md §6, written out here), kfac's σ_k(L_gᵀ W L_x)² with its damping written out here; e stays W's plain
    spectrum (`energy`), and the Fisher totals are Σ F and Σ F ⊙ W²."""
    from fisvd.factorize import Factors
    from fisvd.methods import FACTORISATIONS
    from fisvd.models import MatrixInfo
    from fisvd.plan import matrices
    g = torch.Generator().manual_seed(3)
    W, F = torch.randn(12, 8, generator=g, dtype=torch.float64), torch.rand(12, 8, generator=g, dtype=torch.float64)
    X = torch.randn(50, 8, generator=g, dtype=torch.float64)
    G = torch.randn(50, 12, generator=g, dtype=torch.float64)
    stats = {"w": {"fisher": F, "cov_x": X.T @ X / 50, "cov_g": G.T @ G / 50}}
    infos = [MatrixInfo("w", 0, "q", (12, 8))]
    fw = matrices(infos, {"w": W}, stats, Factors("fwsvd", {"w": W}, stats))[0]
    assert np.allclose(fw.g, torch.linalg.svdvals(W * F.mean(0).sqrt()) ** 2, rtol=1e-10)
    ax, ag = 0.01, 0.02
    kf = matrices(infos, {"w": W}, stats, Factors("kfac", {"w": W}, stats, FACTORISATIONS["kfac"].params(ax, ag)))[0]
    Sx, Sg = stats["w"]["cov_x"], stats["w"]["cov_g"]
    Lx = torch.linalg.cholesky(Sx + ax * Sx.diagonal().mean() * torch.eye(8, dtype=torch.float64))
    Lg = torch.linalg.cholesky(Sg + ag * Sg.diagonal().mean() * torch.eye(12, dtype=torch.float64))
    assert np.allclose(kf.g, torch.linalg.svdvals(Lg.T @ W @ Lx) ** 2, rtol=1e-8) and not np.allclose(kf.g, fw.g)
    for M in (fw, kf):
        assert np.allclose(M.e, torch.linalg.svdvals(W) ** 2)
        assert (M.m, M.n, M.fisher_total) == (12, 8, pytest.approx(float(F.sum())))
        assert M.fisher_energy == pytest.approx(float((F * W * W).sum()))
