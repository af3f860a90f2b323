"""Rank allocation: one rank per compressible matrix (methods.md §5–§7).

Budget: matrix ℓ (m×n) costs m·n dense or r·(m+n) at rank r; break-even r̄ = ⌊mn/(m+n)⌋ and any
r ≥ r̄ keeps it dense. Kept ratio p = Σ size_ℓ / Σ m_ℓ n_ℓ. A rank r̄ in the output means "dense".
Allowed ranks (rank_multiple k): {k, 2k, …} below r̄, plus r̄ (dense); k = 1 is every rank. Every
method below picks from that set (k = 16 suits AVX-512 fp32 GEMMs, 8 GPU tensor cores: a rank of
76 runs slower than one of 80 there; see benchmarks/lowrank_speed.py).
Spectra: g_ℓ,k = σ_k(W_ℓ diag(s_ℓ))² (FWSVD-weighted; s = 1 for `energy`), computed once per
matrix; FI retained ρ_ℓ(r) = Σ_{k≤r} g_ℓ,k / Σ_k g_ℓ,k, and ρ = 1 when dense.

Methods (all but `fi_retention` with a fixed τ meet p from below):
- uniform_rank   one rank for all, the largest meeting p.
- uniform_ratio  r_ℓ = ⌊p·r̄_ℓ⌋.
- energy         smallest r with unweighted energy ≥ τ, τ bisected to meet p (control).
- random         seeded U(0,1) shares × r̄, scale bisected to meet p (control).
- inter_layer_fi parameters ∝ Φ_ℓ^α, Φ = Σ F (total), Σ F/(mn) (density) or Σ F ⊙ W² (energy);
                 scale bisected to meet p; ranks clipped to [r_min, r̄].
- fi_retention   r_ℓ = min{r : ρ_ℓ(r) ≥ τ}; τ fixed, or (calibrate) the largest τ meeting p, which
                 is exactly the max-min ρ solution (searched over the finite set of ρ values).
- max_fi         maximise Σ_ℓ Σ_{k≤r_ℓ} g (total) or Σ_ℓ ρ_ℓ(r_ℓ) (layerwise) under p: exact
                 knapsack DP on the gcd cost unit when small enough, else greedy by gain/(m+n).
After a budgeted method, leftover budget is spent one rank step (k) at a time by the method's own
priority until no step fits, so p is met from below within one step of the cheapest matrix.
"""
from __future__ import annotations

import dataclasses
import math
import random as _random
from dataclasses import dataclass, field
from functools import reduce

import numpy as np
import torch

from .errors import AllocationError
from .factorize import fwsvd_scale, spectrum




@dataclass
class Matrix:
    name: str
    layer: int
    type: str
    m: int
    n: int
    g: np.ndarray            # FWSVD spectrum, descending (float64)
    e: np.ndarray            # unweighted spectrum
    fisher_total: float      # Σ F
    fisher_energy: float     # Σ F ⊙ W²
    step: int = 1            # rank_multiple k: allowed ranks are k, 2k, … below r̄, and r̄ (dense)
    cum_g: np.ndarray = field(init=False)
    cum_e: np.ndarray = field(init=False)

    def __post_init__(self):
        self.cum_g = _cumratio(self.g)
        self.cum_e = _cumratio(self.e)

    @property
    def rbar(self) -> int:
        return (self.m * self.n) // (self.m + self.n)

    @property
    def dense_size(self) -> int:
        return self.m * self.n

    def size(self, r: int) -> int:
        return self.dense_size if r >= self.rbar else r * (self.m + self.n)

    def rho(self, r: int) -> float:
        return 1.0 if r >= self.rbar else float(self.cum_g[r - 1])

    @property
    def rmin(self) -> int:
        """Smallest allowed rank (r̄, i.e. dense, when k ≥ r̄)."""
        return max(1, min(self.step, self.rbar))

    def allowed(self) -> list[int]:
        return list(range(self.step, self.rbar, self.step)) + [self.rbar]

    def floor(self, r: int) -> int:
        """Largest allowed rank ≤ r (at least the smallest allowed one); r ≥ r̄ gives r̄."""
        return self.rbar if r >= self.rbar else max(self.rmin, r - r % self.step)

    def ceil(self, r: int) -> int:
        """Smallest allowed rank ≥ r; past the last multiple below r̄ that is r̄ (dense)."""
        c = -(-max(r, 1) // self.step) * self.step
        return self.rbar if c >= self.rbar else c

    def next(self, r: int) -> int:
        """The allowed rank after r (< r̄): one step k up, or dense."""
        return self.ceil(r + 1)


def _cumratio(s: np.ndarray) -> np.ndarray:
    total = s.sum()
    if total <= 0:
        return np.linspace(1.0 / len(s), 1.0, len(s))
    c = np.cumsum(s) / total
    c[-1] = 1.0
    return c


def matrix_stats(name: str, layer: int, type_: str, W: torch.Tensor, F: torch.Tensor) -> Matrix:
    """Spectra and Fisher scores of one matrix (W, F: [out, in])."""
    if not torch.isfinite(W).all():
        raise AllocationError(f"{name}: weight contains NaN or inf")
    g = spectrum(W, fwsvd_scale(F)).numpy()
    e = spectrum(W).numpy()
    Fd, Wd = F.double(), W.double()
    return Matrix(name, layer, type_, W.shape[0], W.shape[1], g, e,
                  float(Fd.sum()), float((Fd * Wd * Wd).sum()))


def total_size(mats: list[Matrix], ranks: list[int]) -> int:
    return sum(M.size(r) for M, r in zip(mats, ranks))


def min_ratio(mats: list[Matrix]) -> float:
    return total_size(mats, [M.rmin for M in mats]) / sum(M.dense_size for M in mats)


def _budget(mats: list[Matrix], p: float) -> int:
    pmin = min_ratio(mats)
    if p < pmin - 1e-12:
        raise AllocationError(f"allocate.budget: {p} is below the minimum reachable kept ratio "
                              f"{pmin:.4f} (the smallest allowed rank everywhere); use a budget >= "
                              f"{math.ceil(pmin * 1e4) / 1e4}")
    return math.floor(p * sum(M.dense_size for M in mats) + 1e-6)


def _rank_for(cum: np.ndarray, tau: float, rbar: int) -> int:
    """min{r : cum[r-1] ≥ τ}, or r̄ (dense) if no r < r̄ reaches it."""
    r = int(np.searchsorted(cum[: max(rbar - 1, 0)], tau - 1e-12, side="left")) + 1
    return min(r, rbar) if rbar >= 1 else 1


def ranks_for_tau(mats: list[Matrix], tau: float, weighted: bool = True) -> list[int]:
    """Per matrix the smallest allowed rank whose retained share reaches τ (rounding up keeps ρ ≥ τ)."""
    return [M.ceil(_rank_for(M.cum_g if weighted else M.cum_e, tau, M.rbar)) for M in mats]


def _largest_feasible(values: list, ranks_of, budget: int):
    """Largest value v in ascending `values` with total size(ranks_of(v)) ≤ budget (bisection)."""
    lo, hi = 0, len(values) - 1
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        ranks = ranks_of(values[mid])
        if ranks[1] <= budget:
            best, lo = (values[mid], ranks[0]), mid + 1
        else:
            hi = mid - 1
    return best


def _bisect_scale(mats, ranks_of_scale, budget, lo=0.0, hi=1.0, iters=60):
    """Largest scale c ≥ 0 with total size(ranks_of_scale(c)) ≤ budget (monotone in c)."""
    while total_size(mats, ranks_of_scale(hi)) <= budget and hi < 1e30:
        hi *= 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        if total_size(mats, ranks_of_scale(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return ranks_of_scale(lo)


def _fill(mats: list[Matrix], ranks: list[int], budget: int, priority) -> list[int]:
    """Spend leftover budget one rank step at a time, best `priority(i, r)` first."""
    ranks = list(ranks)
    used = total_size(mats, ranks)
    while True:
        best, best_p = None, -math.inf
        for i, (M, r) in enumerate(zip(mats, ranks)):
            if r >= M.rbar:
                continue
            step = M.size(M.next(r)) - M.size(r)
            if used + step <= budget:
                pr = priority(i, r)
                if pr > best_p:
                    best, best_p = i, pr
        if best is None:
            return ranks
        M = mats[best]
        used += M.size(M.next(ranks[best])) - M.size(ranks[best])
        ranks[best] = M.next(ranks[best])


def _gain(M: Matrix, r: int, objective: str) -> float:
    """Retained-FI gain of going from rank r to the next allowed one (the dense jump takes the tail)."""
    g = M.g
    total = g.sum()
    nxt = M.next(r)
    gain = g[r:].sum() if nxt >= M.rbar else g[r:nxt].sum()
    return float(gain / total) if objective == "layerwise" and total > 0 else float(gain)


def _max_fi_dp(mats: list[Matrix], budget: int, objective: str, max_cells: int = 4_000_000):
    options = [M.allowed() for M in mats]
    costs = [[M.size(r) for r in opts] for M, opts in zip(mats, options)]
    unit = reduce(math.gcd, [c for cs in costs for c in cs])
    units = budget // unit
    if units * len(mats) > max_cells * 20 or units > max_cells:
        return None
    dp = np.full(units + 1, -np.inf)
    dp[0] = 0.0
    choice = np.zeros((len(mats), units + 1), dtype=np.int32)
    for i, M in enumerate(mats):
        cum = np.cumsum(M.g)
        values = [cum[r - 1] if r < M.rbar else M.g.sum() for r in options[i]]  # dense keeps all of g
        if objective == "layerwise" and M.g.sum() > 0:
            values = [v / M.g.sum() for v in values]
        new = np.full(units + 1, -np.inf)
        for r, c, v in zip(options[i], costs[i], values):
            cu = c // unit
            if cu > units:
                break
            cand = dp[: units + 1 - cu] + v
            better = cand > new[cu:]
            new[cu:][better] = cand[better]
            choice[i, cu:][better] = r
        dp = new
    if not np.isfinite(dp).any():
        return None
    b = int(np.argmax(dp))
    ranks = [0] * len(mats)
    for i in range(len(mats) - 1, -1, -1):
        r = int(choice[i, b])
        ranks[i] = r
        b -= mats[i].size(r) // unit
    return ranks


def allocate(method: str, mats: list[Matrix], rank_multiple: int = 1, **kw) -> tuple[list[int], dict]:
    """Ranks per matrix, each an allowed rank (a multiple of rank_multiple below r̄, or r̄ = dense),
    and info (e.g. the calibrated τ, the solver used).

    Keywords: budget (p), tau, calibrate, score, alpha, r_min, objective, seed (see module doc)."""
    if not isinstance(rank_multiple, int) or rank_multiple < 1:
        raise AllocationError(f"allocate.rank_multiple: {rank_multiple!r} must be an integer >= 1")
    mats = [M if M.step == rank_multiple else dataclasses.replace(M, step=rank_multiple) for M in mats]
    ranks, info = _allocate(method, mats, **kw)
    ranks = [min(max(1, r), M.rbar) for M, r in zip(mats, ranks)]
    bad = [M.name for M, r in zip(mats, ranks) if r < M.rbar and r % M.step]
    if bad:  # every method picks allowed ranks; this guards the invariant the tests rely on
        raise AssertionError(f"{method}: ranks not multiples of {rank_multiple}: {bad[:3]}")
    return ranks, info


def _allocate(method: str, mats: list[Matrix], *, budget: float = 0.5, tau: float = 0.95,
              calibrate: bool = False, score: str = "total", alpha: float = 1.0, r_min: int = 1,
              objective: str = "total", seed: int = 0) -> tuple[list[int], dict]:
    info: dict = {}
    if method == "fi_retention" and not calibrate:
        info["tau"] = tau
        return ranks_for_tau(mats, tau), info
    B = _budget(mats, budget)
    if method == "uniform_ratio":
        ranks = [M.floor(math.floor(budget * M.rbar + 1e-9)) for M in mats]
        if total_size(mats, ranks) > B:
            raise AllocationError(f"allocate.budget: {budget} cannot be met with uniform_ratio")
        return _fill(mats, ranks, B, lambda i, r: budget * mats[i].rbar - r), info
    if method == "uniform_rank":
        k = mats[0].step
        top = max(min(M.m, M.n) for M in mats)
        ok = [r for r in range(k, top + 1, k) if total_size(mats, [M.floor(r) for M in mats]) <= B]
        r0 = ok[-1] if ok else k
        ranks = [M.floor(r0) for M in mats]
        info["uniform_rank"] = r0
        return _fill(mats, ranks, B, lambda i, r: -r), info
    if method in ("fi_retention", "energy"):
        weighted = method == "fi_retention"
        cands = sorted({float(c) for M in mats for c in (M.cum_g if weighted else M.cum_e)[: M.rbar - 1]} | {1.0})
        found = _largest_feasible(cands, lambda t: (rk := ranks_for_tau(mats, t, weighted), total_size(mats, rk)), B)
        if found is None:
            tau_c, ranks = 0.0, [M.rmin for M in mats]
        else:
            tau_c, ranks = found
        info["tau"] = tau_c
        cum = (lambda M: M.cum_g) if weighted else (lambda M: M.cum_e)
        return _fill(mats, ranks, B, lambda i, r: -float(cum(mats[i])[r - 1])), info
    if method == "random":
        rng = _random.Random(seed)
        shares = [rng.random() for _ in mats]
        ranks = _bisect_scale(mats, lambda c: [M.floor(math.floor(c * u * M.rbar))
                                               for M, u in zip(mats, shares)], B)
        return _fill(mats, ranks, B, lambda i, r: shares[i] * mats[i].rbar - r), info
    if method == "inter_layer_fi":
        raw = {"total": [M.fisher_total for M in mats],
               "density": [M.fisher_total / M.dense_size for M in mats],
               "energy": [M.fisher_energy for M in mats]}[score]
        top = max(raw)
        if not top > 0:
            raise AllocationError("inter_layer_fi: every matrix has zero Fisher score")
        w = [(s / top) ** alpha for s in raw]
        if r_min > min(M.rbar for M in mats):
            raise AllocationError(f"allocate.r_min: {r_min} exceeds the smallest break-even rank "
                                  f"{min(M.rbar for M in mats)}")
        lows = [M.ceil(r_min) for M in mats]
        if total_size(mats, lows) > B:
            raise AllocationError(f"allocate.r_min: {r_min} everywhere already exceeds budget {budget}")
        ranks = _bisect_scale(mats, lambda c: [M.floor(max(lo, math.floor(c * wi / (M.m + M.n))))
                                               for M, wi, lo in zip(mats, w, lows)], B)
        return _fill(mats, ranks, B, lambda i, r: w[i] / (r + 1)), info
    if method == "max_fi":
        ranks = _max_fi_dp(mats, B, objective)
        info["solver"] = "dp" if ranks is not None else "greedy"
        if ranks is None:
            ranks = _fill(mats, [M.rmin for M in mats], B, lambda i, r: _gain(mats[i], r, objective)
                          / (mats[i].size(mats[i].next(r)) - mats[i].size(r)))
        return ranks, info
    raise AllocationError(f"allocate.method: unknown {method!r}")


def report(mats: list[Matrix], ranks: list[int], total_model_params: int) -> dict:
    """ranks.json content: per matrix rows and totals (achieved p, params, equivalent uniform rank)."""
    rows = []
    for M, r in zip(mats, ranks):
        dense = r >= M.rbar
        rows.append({"label": f"L{M.layer:02d} {M.type}", "name": M.name, "layer": M.layer, "type": M.type,
                     "shape": [M.m, M.n],
                     "rank": min(M.m, M.n) if dense else r, "dense": dense,
                     "kept_params": M.size(r), "fi_retained": round(M.rho(r), 6)})
    dense_total = sum(M.dense_size for M in mats)
    kept = total_size(mats, ranks)
    p = kept / dense_total
    return {"matrices": rows, "totals": {
        "kept_ratio": round(p, 6),
        "compressible_params_dense": dense_total,
        "compressible_params_kept": kept,
        "total_params_dense": total_model_params,
        "total_params": total_model_params - dense_total + kept,
        "equivalent_uniform_rank": round(kept / sum(M.m + M.n for M in mats), 2),
        "num_dense": sum(r["dense"] for r in rows),
        "min_fi_retained": round(min(M.rho(r) for M, r in zip(mats, ranks)), 6),
    }}
