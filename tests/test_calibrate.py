"""Allocation calibrated by measured loss (methods.md §7b): fisvd.calibrate and allocate("measured")."""
import copy
import itertools
import math

import numpy as np
import pytest
import torch

from conftest import tiny_bert
from fisvd.allocate import AllocationError, Matrix, allocate, total_size
from fisvd.methods import ALLOCATORS as METHODS
from fisvd.plan import make_matrix
from fisvd.calibrate import fit_curve, fit_curves, joint_refine, measure, rank_grid, with_curves
from fisvd.errors import ParamError
from fisvd.factorize import svd
from fisvd.lowrank import apply_lowrank
from fisvd.models import compressible_linears

OPTS = dict(points=3, metric="kl", slice=24, swaps=3)   # test options (defaults live in params.yaml)


def batches(model, n=3, size=6, length=12, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, model.config.vocab_size, (size, length), generator=g)
        mask = torch.ones_like(ids)
        mask[: size // 2, length - 3:] = 0                        # some padding
        b = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        if labels:
            b["labels"] = (torch.randn(size, generator=g) if model.config.num_labels == 1
                           else torch.randint(0, model.config.num_labels, (size,), generator=g))
        out.append(b)
    return out


def svd_fn(model):
    weights = {i.name: model.get_submodule(i.name).weight.detach().clone() for i in compressible_linears(model)}
    return lambda name, r: svd(weights[name], r)


def logits(model, bs):
    with torch.inference_mode():
        return torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in bs]).double()


def kl(z, zc):
    lp, lq = torch.log_softmax(z, -1), torch.log_softmax(zc, -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def sharpened(num_labels=2, seed=0):
    """A tiny BERT with larger random weights and classifier, so that the logits and Δ are not near zero."""
    model = tiny_bert(num_labels, seed=seed, initializer_range=0.2)
    with torch.no_grad():
        model.classifier.weight.mul_(5)
    return model


def some_grid(model, ranks=(1, 4, 12)):
    return {i.name: list(ranks) for i in compressible_linears(model)}


# ---------- rank grid ----------

def mat(m, n, g=None, step=1, name="x"):
    g = np.sort(np.random.default_rng(0).gamma(0.5, 1.0, min(m, n)))[::-1] if g is None else g
    return Matrix(name, 0, "q", m, n, g, g.copy(), 1.0, 1.0, step=step)


@pytest.mark.parametrize("shape,k", [((384, 384), 1), ((1536, 384), 1), ((384, 384), 16), ((32, 64), 1), ((24, 16), 3)])
@pytest.mark.parametrize("points", [1, 3, 6])
def test_rank_grid_allowed_ascending_below_dense_with_smallest(shape, k, points):
    M = mat(*shape, step=k)
    grid = rank_grid(M, points)
    below = M.allowed()[:-1]
    assert grid == sorted(set(grid)) and 1 <= len(grid) <= points
    assert grid[0] == below[0] and all(r in below for r in grid) and M.rbar not in grid
    if points == 6 and shape == (384, 384) and k == 1:
        assert grid == [1, 6, 13, 29, 65, 144]                    # 1/32 … 3/4 of r̄ = 192


def test_rank_grid_empty_when_only_dense_is_allowed():
    assert rank_grid(mat(32, 32, step=32), 4) == []               # r̄ = 16 ≤ k
    with pytest.raises(ValueError, match="points"):
        rank_grid(mat(32, 32), 0)


# ---------- measure ----------

def test_measure_restores_the_model_exactly():
    model = sharpened()
    model.train()                                                 # the training flag is restored too
    bs = batches(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mods = {i.name: model.get_submodule(i.name) for i in compressible_linears(model)}
    blocks = list(model.bert.encoder.layer)
    ref = logits(model.eval(), bs)
    model.train()
    measure(model, compressible_linears(model), svd_fn(model), bs, some_grid(model), "cpu", metric="kl")
    assert model.training
    model.eval()
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert all(model.get_submodule(n) is m for n, m in mods.items())
    assert all(a is b for a, b in zip(model.bert.encoder.layer, blocks))
    assert torch.equal(logits(model, bs), ref)


def test_kl_is_zero_for_exact_factors_and_nonnegative():
    model = sharpened()
    infos = compressible_linears(model)
    W = {i.name: model.get_submodule(i.name).weight.detach().clone() for i in infos}
    exact = lambda name, r: (W[name], torch.eye(W[name].shape[1]))          # A B = W exactly
    bs = batches(model)
    res = measure(model, infos, exact, bs, {i.name: [1] for i in infos}, "cpu", metric="kl")
    assert all(d <= 1e-12 for pts in res.values() for _, d in pts)
    full = {i.name: [1, 3, 8, min(i.shape)] for i in infos}
    res = measure(model, infos, svd_fn(model), bs, full, "cpu", metric="kl")
    for i in infos:
        ds = [d for _, d in res[i.name]]
        assert all(d >= 0 for d in ds)
        assert ds[-1] < 1e-9 and ds[0] > 1e-6                     # full-rank SVD ≈ dense; rank 1 is not
    assert max(pts[0][1] for pts in res.values()) > 1e-3


@pytest.mark.parametrize("num_labels,metric", [(2, "kl"), (3, "loss"), (1, "kl"), (1, "loss")])
def test_fast_cached_path_equals_full_forward_of_compressed_copy(num_labels, metric):
    model = sharpened(num_labels)
    infos = compressible_linears(model)
    bs, fn = batches(model), svd_fn(model)
    grid = some_grid(model, (2, 7))
    fast = measure(model, infos, fn, bs, grid, "cpu", metric=metric)
    slow = measure(model, infos, fn, bs, grid, "cpu", metric=metric, cache_blocks=False)
    z = logits(model, bs)
    y = torch.cat([b["labels"] for b in bs])
    for i in infos:
        for (r, d_fast), (r2, d_slow) in zip(fast[i.name], slow[i.name]):
            comp = apply_lowrank(copy.deepcopy(model), {i.name: fn(i.name, r)})   # independent reference
            zc = logits(comp, bs)
            if metric == "kl":
                want = float(((zc - z) ** 2).mean()) if num_labels == 1 else kl(z, zc)
            elif num_labels == 1:
                want = float(((zc.squeeze(-1) - y) ** 2).mean() - ((z.squeeze(-1) - y) ** 2).mean())
            else:
                ce = torch.nn.functional.cross_entropy
                want = float(ce(zc, y) - ce(z, y))
            assert r == r2 and d_fast == pytest.approx(d_slow, rel=1e-6, abs=1e-12)
            assert d_fast == pytest.approx(want, rel=1e-5, abs=1e-10)


def test_loss_metric_needs_labels():
    model = tiny_bert()
    with pytest.raises(ValueError, match="labels"):
        measure(model, compressible_linears(model), svd_fn(model), batches(model, labels=False),
                some_grid(model), "cpu", metric="loss")


# ---------- curve fit ----------

def tail(M, r):
    return M.g[r:].sum()


@pytest.mark.parametrize("k,points", [(1, 1), (1, 4), (3, 5), (1, 8)])
def test_fit_is_exact_when_the_tail_model_is(k, points):
    M = mat(96, 64, step=k)                                       # r̄ = 38
    c = 0.37
    pts = [(r, c * tail(M, r)) for r in rank_grid(M, points)]
    curve = fit_curve(M, pts)
    assert curve.shape == (M.rbar,) and curve[-1] == 0
    np.testing.assert_allclose(curve[:-1], [c * tail(M, r) for r in range(1, M.rbar)], rtol=1e-9)


def test_fit_monotone_nonnegative_through_monotone_points():
    M = mat(64, 64)                                               # r̄ = 32
    rng = np.random.default_rng(1)
    for trial in range(20):
        rs = sorted(rng.choice(np.arange(1, 32), size=rng.integers(1, 6), replace=False))
        ds = rng.normal(0, 1, len(rs)) * 10 ** rng.uniform(-6, 0) + (0.5 if trial % 2 else 0)
        curve = fit_curve(M, list(zip(rs, ds)))
        assert np.all(np.diff(curve) <= 0) and np.all(curve >= 0) and curve[-1] == 0
        if np.all(np.diff(ds) <= 0) and np.all(ds >= 0):         # already monotone: exact through them
            np.testing.assert_allclose(curve[np.array(rs) - 1], ds, rtol=1e-12)
    # not monotone: pool adjacent violators, by hand: (1, 3) pool to 2, then 0.5
    np.testing.assert_allclose(fit_curve(M, [(1, 1.0), (2, 3.0), (3, 0.5)])[:3], [2.0, 2.0, 0.5], rtol=1e-12)
    # a measured Δ of 0 ends the power law: linear in the tail between the two points
    lin = fit_curve(M, [(4, 0.8), (12, 0.0)])
    for r in (5, 8, 11):
        want = 0.8 * (tail(M, r) - tail(M, 12)) / (tail(M, 4) - tail(M, 12))
        assert lin[r - 1] == pytest.approx(want, rel=1e-12)
    power = [(r, tail(M, r) ** 1.7) for r in (1, 5, 20)]          # a power law of the tail: exact too
    np.testing.assert_allclose(fit_curve(M, power)[:20], [tail(M, r) ** 1.7 for r in range(1, 21)], rtol=1e-9)


def test_fit_curves_every_matrix_and_missing_points():
    ms = [mat(32, 32, name="a"), mat(32, 32, step=32, name="dense_only")]
    curves = fit_curves(ms, {"a": [(1, 0.5), (8, 0.1)]})
    assert curves["dense_only"].tolist() == [0.0] * 16 and curves["a"][0] == 0.5
    with pytest.raises(ValueError, match="no measured point"):
        fit_curves(ms, {})


# ---------- allocate("measured") ----------

def curved(shapes, seed, k=1, strict=True):
    """Synthetic matrices with random non-increasing (not convex) loss curves, 0 at dense."""
    rng = np.random.default_rng(seed)
    mats = []
    for i, (m, n) in enumerate(shapes):
        g = np.sort(rng.gamma(0.5, 1.0, min(m, n)))[::-1]
        M = Matrix(f"m{i}", i, "q", m, n, g, g.copy(), 1.0, 1.0, step=k)
        steps = rng.exponential(1.0, M.rbar - 1) * rng.uniform(0.1, 10) + (1e-3 if strict else 0)
        if not strict:
            steps[rng.random(M.rbar - 1) < 0.3] = 0
        M.loss = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])
        mats.append(M)
    return mats


def run(mats, p, k=1):
    return allocate("measured", mats, budget=p, rank_multiple=k, **OPTS)


SMALL = [(12, 8), (10, 10), (16, 6), (9, 12)]
ALIGNED_SMALL = [(24, 16), (20, 20), (30, 12), (18, 24)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p", [0.3, 0.55, 0.85])
@pytest.mark.parametrize("shapes,k", [(SMALL, 1), (ALIGNED_SMALL, 2), (ALIGNED_SMALL, 3)])
def test_measured_equals_brute_force(seed, p, shapes, k):
    mats = curved(shapes, seed, strict=seed != 2)
    B = math.floor(p * sum(M.dense_size for M in mats) + 1e-6)
    options = [[r for r in range(1, M.rbar + 1) if r % k == 0 or r == M.rbar] for M in mats]
    loss = lambda rk: sum(M.loss[r - 1] for M, r in zip(mats, rk))
    feasible = [rk for rk in itertools.product(*options) if total_size(mats, rk) <= B]
    if not feasible:
        with pytest.raises(AllocationError, match="minimum reachable"):
            run(mats, p, k)
        return
    ranks, info = run(mats, p, k)
    assert info["solver"] == "dp" and total_size(mats, ranks) <= B
    assert all(r in opts for r, opts in zip(ranks, options))
    assert loss(ranks) == pytest.approx(min(map(loss, feasible)), rel=1e-12, abs=1e-12)
    assert info["predicted_loss"] == pytest.approx(loss(ranks))


@pytest.mark.parametrize("k", [1, 16])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_measured_budget_met_from_below_within_one_step(p, k):
    mats = curved([(384, 384)] * 4 + [(1536, 384), (384, 1536)], seed=5)
    B = math.floor(p * sum(M.dense_size for M in mats) + 1e-6)
    ranks, info = run(mats, p, k)
    used = total_size(mats, ranks)
    assert used <= B and info["solver"] == "dp"
    steps = [M.size(min(r + k, M.rbar)) - M.size(r) for M, r in zip(mats, ranks) if r < M.rbar]
    assert not steps or B - used < min(steps)                     # strictly decreasing curves: no step fits
    assert all(r % k == 0 or r == M.rbar for M, r in zip(mats, ranks))


def test_measured_without_curves_says_run_the_calibration():
    mats = curved(SMALL, 0)
    mats[1].loss = None
    with pytest.raises(AllocationError, match="run the calibration first"):
        run(mats, 0.5)
    mats[1].loss = np.ones(mats[1].rbar)                          # not 0 at dense
    with pytest.raises(AllocationError, match="ending in 0"):
        run(mats, 0.5)


def test_measured_params_are_registered_and_validated():
    assert METHODS["measured"].keys("allocate") == [f"allocate.measured.{f}" for f in OPTS]
    mats = curved(SMALL, 0)
    for bad, key in ((dict(points=0), "points"), (dict(metric="mse"), "metric"), (dict(slice=0), "slice"),
                     (dict(swaps=-1), "swaps")):
        with pytest.raises(ParamError, match=f"allocate.measured.{key}"):
            allocate("measured", mats, budget=0.5, rank_multiple=1, **{**OPTS, **bad})


# ---------- end to end and the joint check ----------

def calibrated(model, bs, fn, points, metric="kl"):
    infos = compressible_linears(model)
    mats = [make_matrix(i.name, i.layer, i.type, fn.weights[i.name], torch.ones(i.shape),
                        torch.linalg.svdvals(fn.weights[i.name].double()) ** 2) for i in infos]
    grid = {M.name: rank_grid(M, points) for M in mats}
    pts = measure(model, infos, fn, bs, grid, "cpu", metric=metric)
    return with_curves(mats, fit_curves(mats, pts)), pts


def svd_fn_with_weights(model):
    fn = svd_fn(model)
    fn.weights = {i.name: model.get_submodule(i.name).weight.detach().clone() for i in compressible_linears(model)}
    return fn


@pytest.mark.parametrize("k", [1, 4])
def test_end_to_end_small_run_meets_budget(k):
    model = sharpened()
    bs, fn = batches(model), svd_fn_with_weights(model)
    mats, pts = calibrated(model, bs, fn, points=4)
    assert all(len(p) == len(rank_grid(M, 4)) for M, p in zip(mats, pts.values()))
    for M in mats:                                                # the fit passes through monotone points
        assert np.all(np.diff(M.loss) <= 0) and M.loss[-1] == 0
    p = 0.5
    ranks, info = allocate("measured", mats, budget=p, rank_multiple=k, **OPTS)
    B = math.floor(p * sum(M.dense_size for M in mats) + 1e-6)
    assert total_size(mats, ranks) <= B and info["solver"] == "dp"
    assert all(r % k == 0 or r == M.rbar for M, r in zip(mats, ranks))
    assert len(set(ranks)) > 1                                    # not a uniform allocation


@pytest.mark.parametrize("metric", ["kl", "loss"])
def test_joint_refine_never_worse_and_within_budget(metric):
    model = sharpened(seed=1)
    bs, fn = batches(model, seed=3), svd_fn_with_weights(model)
    mats, _ = calibrated(model, bs, fn, points=3, metric=metric)
    p = 0.45
    ranks, _ = allocate("measured", mats, budget=p, rank_multiple=1, **{**OPTS, "metric": metric})
    B = math.floor(p * sum(M.dense_size for M in mats) + 1e-6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    new, hist = joint_refine(model, mats, ranks, fn, bs, p, 6, rank_multiple=1, metric=metric, device="cpu")
    assert total_size(mats, new) <= B and len(hist) <= 7
    assert all(r in M.allowed() for M, r in zip(mats, new))
    assert len(hist) > 1                                          # at least one swap was tried
    final = min([hist[0]["delta"]] + [h["delta"] for h in hist[1:] if h["accepted"]])
    # the measured Δ of the input and of the returned ranks, from scratch on explicitly compressed copies
    z = logits(model, bs)
    y = torch.cat([b["labels"] for b in bs])
    ce = torch.nn.functional.cross_entropy

    def delta(rk):
        comp = apply_lowrank(copy.deepcopy(model), {M.name: fn(M.name, r) for M, r in zip(mats, rk) if r < M.rbar})
        zc = logits(comp, bs)
        return kl(z, zc) if metric == "kl" else float(ce(zc, y) - ce(z, y))
    d0, got = delta(ranks), delta(new)
    assert hist[0]["delta"] == pytest.approx(d0, rel=1e-5, abs=1e-10)
    assert got == pytest.approx(final, rel=1e-5, abs=1e-10) and got <= d0 + 1e-9
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    same, h0 = joint_refine(model, mats, ranks, fn, bs, p, 0, rank_multiple=1, metric=metric, device="cpu")
    assert same == ranks and len(h0) == 1 and h0[0]["delta"] == pytest.approx(hist[0]["delta"], rel=1e-9)


def test_joint_refine_rejects_over_budget_input():
    model = tiny_bert()
    bs, fn = batches(model), svd_fn_with_weights(model)
    mats, _ = calibrated(model, bs, fn, points=2)
    with pytest.raises(AllocationError, match="budget"):
        joint_refine(model, mats, [M.rbar for M in mats], fn, bs, 0.5, 2, rank_multiple=1, metric="kl", device="cpu")
