"""Rank allocation: one rank per compressible matrix (methods.md §5–§7).

Budget: matrix ℓ (m×n) costs m·n dense or r·(m+n) at rank r; break-even r̄ = ⌊mn/(m+n)⌋ and any
r ≥ r̄ keeps it dense. Kept ratio p = Σ size_ℓ / Σ m_ℓ n_ℓ. A rank r̄ in the output means "dense".
Allowed ranks (rank_multiple k): {k, 2k, …} below r̄, plus r̄ (dense); k = 1 is every rank. Every
method below picks from that set (k = 16 suits AVX-512 fp32 GEMMs, 8 GPU tensor cores: a rank of
76 runs slower than one of 80 there; see benchmarks/lowrank_speed.py).
Speed table (`allocate.speed_table`, fisvd.speed): a matrix may only take ranks whose factored
form the table measured faster than dense for its shape (`Matrix.fast`); the allowed set becomes
{multiples of k below r̄ that are faster} ∪ {r̄}. That set (`Matrix.allowed`, floor/ceil/next) is the
one place every method picks from, so the rule is each method's own rule on the restricted set:
rounding down (uniform_*, random, inter_layer_fi) snaps to the largest faster multiple ≤ r (or the
smallest allowed rank), rounding up (fi_retention, energy) to the next faster multiple or dense; the
knapsacks and fills only ever consider allowed ranks. Budget kind (`allocate.budget_kind`): params
(the above), or latency: `Matrix.cost` holds the table's time of every rank (fisvd.speed.time_of),
`size` then counts ms instead of parameters, p is the kept share of the Linears' measured time
Σ t_ℓ(r_ℓ) / Σ t_ℓ(dense), and the knapsack spends time (costs rounded up to budget/2¹⁶, so the
achieved share never exceeds p). Times need not grow with rank; bisected controls then stay
feasible, and the fills treat a step that costs no time as free.
Spectra: g_ℓ,k = σ_k(T_ℓ)², T the whitened matrix of the factorisation compress uses (FWSVD:
W diag(s); whiten: W L_x; kfac: L_gᵀ W L_x; svd: W), so dropping component k costs ≈ ½ g_ℓ,k of
loss under that factorisation's quadratic model, comparable across matrices (methods.md §7b);
`energy` uses the plain spectrum of W. Computed once per matrix; FI retained
ρ_ℓ(r) = Σ_{k≤r} g_ℓ,k / Σ_k g_ℓ,k, and ρ = 1 when dense.

Methods (one spec each in fisvd.methods.ALLOCATORS, implemented here; all but `fi_retention` with a
fixed τ take a budget p):
- uniform_rank   control: one rank for all (dense where ≥ r̄), the largest meeting p. No fill.
- uniform_ratio  control: r_ℓ = ⌊p·r̄_ℓ⌋ (aligned down). No fill.
- energy         control: smallest r with unweighted energy ≥ τ, τ bisected to meet p.
- random         control: seeded U(0,1) shares × r̄, scale bisected to meet p.
- inter_layer_fi parameters ∝ Φ_ℓ^α, Φ = Σ F (total), Σ F/(mn) (density) or Σ F ⊙ W² (energy);
                 scale bisected to meet p; ranks clipped to [r_min, r̄].
- fi_retention   r_ℓ = min{r : ρ_ℓ(r) ≥ τ}; τ fixed, or (calibrate) the largest τ meeting p, which
                 is exactly the max-min ρ solution (searched over the finite set of ρ values).
- max_fi         maximise Σ_ℓ Σ_{k≤r_ℓ} g (total) or Σ_ℓ ρ_ℓ(r_ℓ) (layerwise) under p: exact
                 knapsack DP on the gcd cost unit when small enough, else greedy by gain/(m+n).
- measured       minimise Σ_ℓ Δ_ℓ(r_ℓ) under p, Δ_ℓ = Matrix.loss: per-matrix loss-increase curves
                 measured on a held-out train slice and fitted by fisvd.calibrate (methods.md §7b);
                 the same exact DP with values −Δ. Raises unless the curves were filled in first.
The controls are exactly their definitions and report the p they reach, which may sit below the
target. The other budgeted methods spend leftover budget one rank step (k) at a time by their own
priority until no step fits, so p is met from below within one step of the cheapest matrix.
Equivalent uniform rank (ranks.json): the uniform_rank rank whose kept params are ≤ the achieved
ones, break-even included.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import random as _random
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from .errors import AllocationError
from .factorize import break_even
from .methods import ALLOCATORS, FiRetentionParams, InterLayerFiParams, MaxFiParams, MeasuredParams, RandomParams


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
    loss: np.ndarray | None = None  # `measured`: predicted loss increase Δ(r) at index r-1, r = 1..r̄ (0 at r̄)
    fast: frozenset | None = None   # speed table: the ranks < r̄ faster than dense (None: every rank)
    cost: np.ndarray | None = None  # budget_kind latency: time of rank r at index r-1, r = 1..r̄ (r̄: dense)
    cum_g: np.ndarray = field(init=False)
    cum_e: np.ndarray = field(init=False)
    ranks: list = field(init=False, repr=False)    # the allowed ranks, ascending, ending in r̄

    def __post_init__(self):
        self.cum_g = _cumratio(self.g)
        self.cum_e = _cumratio(self.e)
        self.ranks = [r for r in range(self.step, self.rbar, self.step) if self.fast is None or r in self.fast]
        self.ranks.append(self.rbar)
        if self.cost is not None:
            self.cost = np.asarray(self.cost, dtype=np.float64)
            if self.cost.shape != (self.rbar,) or not np.isfinite(self.cost).all() or (self.cost <= 0).any():
                raise AllocationError(f"{self.name}: cost must hold r̄ = {self.rbar} finite times > 0 "
                                      f"(index r-1, the last dense); got shape {self.cost.shape}")

    @property
    def rbar(self) -> int:
        return break_even(self.m, self.n)

    def params(self, r: int) -> int:
        """Parameters kept at rank r: r(m+n), or mn when dense (r ≥ r̄)."""
        return self.m * self.n if r >= self.rbar else r * (self.m + self.n)

    @property
    def dense_size(self) -> float:
        """What the budget counts for the dense matrix: mn parameters, or its time with `cost`."""
        return self.size(self.rbar)

    def size(self, r: int) -> float:
        """What the budget counts at rank r: parameters r(m+n) (mn dense), or the time cost[r-1]."""
        if self.cost is not None:
            return float(self.cost[min(r, self.rbar) - 1])
        return self.params(r)

    def rho(self, r: int) -> float:
        return 1.0 if r >= self.rbar else float(self.cum_g[r - 1])

    @property
    def rmin(self) -> int:
        """Smallest allowed rank (r̄, i.e. dense, when none below r̄ is allowed)."""
        return self.ranks[0]

    def allowed(self) -> list[int]:
        """Allowed ranks, ascending: multiples of k below r̄ (those in `fast` with a speed table), and r̄."""
        return list(self.ranks)

    def floor(self, r: int) -> int:
        """Largest allowed rank ≤ r (at least the smallest allowed one); r ≥ r̄ gives r̄."""
        if r >= self.rbar:
            return self.rbar
        i = bisect.bisect_right(self.ranks, r) - 1
        return self.ranks[max(i, 0)]

    def ceil(self, r: int) -> int:
        """Smallest allowed rank ≥ r; past the last allowed rank below r̄ that is r̄ (dense)."""
        i = bisect.bisect_left(self.ranks, max(r, 1))
        return self.ranks[i] if i < len(self.ranks) else self.rbar

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


def total_size(mats: list[Matrix], ranks: list[int]) -> float:
    """What the budget counts: Σ parameters, or Σ time when the matrices carry a `cost`."""
    return sum(M.size(r) for M, r in zip(mats, ranks))


def total_params(mats: list[Matrix], ranks: list[int]) -> int:
    return sum(M.params(r) for M, r in zip(mats, ranks))


def min_ratio(mats: list[Matrix]) -> float:
    """The smallest reachable kept ratio (time share: the cheapest allowed rank need not be the smallest)."""
    if _timed(mats):
        return sum(min(M.size(r) for r in M.ranks) for M in mats) / sum(M.dense_size for M in mats)
    return total_size(mats, [M.rmin for M in mats]) / sum(M.dense_size for M in mats)


def _timed(mats: list[Matrix]) -> bool:
    """True when the budget counts time (every matrix has a `cost`), False for parameters."""
    kinds = {M.cost is not None for M in mats}
    if len(kinds) > 1:
        raise AllocationError("allocate.budget_kind: some matrices carry a time cost and some do not")
    return kinds == {True}


def _budget(mats: list[Matrix], p: float | None) -> float:
    """The budget: ⌊p·Σ mn⌋ parameters, or p·Σ dense time (latency)."""
    if p is None:
        raise AllocationError("allocate.budget: this method needs a budget p in (0, 1]")
    pmin = min_ratio(mats)
    if p < pmin - 1e-12:
        raise AllocationError(f"allocate.budget: {p} is below the minimum reachable kept "
                              f"{'time share' if _timed(mats) else 'ratio'} {pmin:.4f} (the cheapest allowed "
                              f"rank everywhere); use a budget >= {math.ceil(pmin * 1e4) / 1e4}")
    if _timed(mats):
        return p * sum(M.dense_size for M in mats)
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


def _fill(mats: list[Matrix], ranks: list[int], budget: float, priority) -> list[int]:
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
    values = []
    for M in mats:
        cum = np.cumsum(M.g)
        v = [cum[r - 1] if r < M.rbar else M.g.sum() for r in M.allowed()]  # dense keeps all of g
        if objective == "layerwise" and M.g.sum() > 0:
            v = [x / M.g.sum() for x in v]
        values.append(v)
    return _mck_dp(mats, budget, values, max_cells)


TIME_UNITS = 1 << 16   # latency budget: the DP counts time in budget/TIME_UNITS steps, each cost rounded up


def _unit_costs(mats: list[Matrix], options: list[list[int]], budget: float) -> tuple[list[list[int]], int]:
    """Integer costs of every option and the budget in the same unit: parameters on their gcd (exact);
    times (floats) on the unit budget/TIME_UNITS with every cost rounded UP, so any selection the DP
    finds within its integer budget also keeps Σ time ≤ budget (optimal up to that rounding)."""
    costs = [[M.size(r) for r in opts] for M, opts in zip(mats, options)]
    flat = [c for cs in costs for c in cs]
    if all(float(c).is_integer() for c in flat):
        unit = reduce(math.gcd, [int(c) for c in flat])
        return [[int(c) // unit for c in cs] for cs in costs], int(budget // unit)
    q = budget / TIME_UNITS
    return [[math.ceil(c / q) for c in cs] for cs in costs], TIME_UNITS


def _mck_dp(mats: list[Matrix], budget: float, values: list[list[float]], max_cells: int = 4_000_000):
    """Exact multiple-choice knapsack: one allowed rank per matrix (`values[i]` aligned with
    `mats[i].allowed()`), maximising Σ value subject to Σ size ≤ budget, on the gcd cost unit (times:
    `_unit_costs`). None when the table would exceed `max_cells` (callers fall back to a greedy fill)."""
    options = [M.allowed() for M in mats]
    costs, units = _unit_costs(mats, options, budget)
    if units * len(mats) > max_cells * 20 or units > max_cells:
        return None
    dp = np.full(units + 1, -np.inf)
    dp[0] = 0.0
    choice = np.zeros((len(mats), units + 1), dtype=np.int32)
    for i, M in enumerate(mats):
        new = np.full(units + 1, -np.inf)
        for r, cu, v in zip(options[i], costs[i], values[i]):
            if cu > units:
                continue            # (times need not grow with rank: a larger rank may still fit)
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
        b -= costs[i][options[i].index(r)]
    return ranks


@ALLOCATORS.implements("uniform_rank")
def uniform_rank(mats: list[Matrix], p: float, opts) -> tuple[list[int], dict]:
    B = _budget(mats, p)
    k = mats[0].step
    top = max(min(M.m, M.n) for M in mats)
    ok = [r for r in range(k, top + k, k) if total_size(mats, [M.floor(r) for M in mats]) <= B]
    r0 = ok[-1] if ok else k
    return [M.floor(r0) for M in mats], {"uniform_rank": r0}


@ALLOCATORS.implements("uniform_ratio")
def uniform_ratio(mats: list[Matrix], p: float, opts) -> tuple[list[int], dict]:
    _budget(mats, p)
    if _timed(mats):    # latency: the largest allowed rank keeping share p of the matrix's own time
        return [max([r for r in M.allowed() if M.size(r) <= p * M.dense_size], default=M.rmin) for M in mats], {}
    return [M.floor(math.floor(p * M.rbar + 1e-9)) for M in mats], {}


@ALLOCATORS.implements("energy")
def energy(mats: list[Matrix], p: float, opts) -> tuple[list[int], dict]:
    return _calibrated_tau(mats, p, weighted=False)


@ALLOCATORS.implements("random")
def random_ranks(mats: list[Matrix], p: float, opts: RandomParams) -> tuple[list[int], dict]:
    B = _budget(mats, p)
    rng = _random.Random(opts.seed)
    shares = [rng.random() for _ in mats]
    ranks = _bisect_scale(mats, lambda c: [M.floor(math.floor(c * u * M.rbar)) for M, u in zip(mats, shares)], B)
    return _fill(mats, ranks, B, lambda i, r: shares[i] * mats[i].rbar - r), {}


@ALLOCATORS.implements("inter_layer_fi")
def inter_layer_fi(mats: list[Matrix], p: float, opts: InterLayerFiParams) -> tuple[list[int], dict]:
    B = _budget(mats, p)
    raw = {"total": [M.fisher_total for M in mats],
           "density": [M.fisher_total / M.dense_size for M in mats],
           "energy": [M.fisher_energy for M in mats]}[opts.score]
    top = max(raw)
    if not top > 0:
        raise AllocationError("inter_layer_fi: every matrix has zero Fisher score")
    w = [(s / top) ** opts.alpha for s in raw]
    if opts.r_min > min(M.rbar for M in mats):
        raise AllocationError(f"allocate.inter_layer_fi.r_min: {opts.r_min} exceeds the smallest break-even rank "
                              f"{min(M.rbar for M in mats)}")
    lows = [M.ceil(opts.r_min) for M in mats]
    if total_size(mats, lows) > B:
        raise AllocationError(f"allocate.inter_layer_fi.r_min: {opts.r_min} everywhere already exceeds "
                              f"budget {p}")
    ranks = _bisect_scale(mats, lambda c: [M.floor(max(lo, math.floor(c * wi / (M.m + M.n))))
                                           for M, wi, lo in zip(mats, w, lows)], B)
    return _fill(mats, ranks, B, lambda i, r: w[i] / (r + 1)), {}


@ALLOCATORS.implements("fi_retention")
def fi_retention(mats: list[Matrix], p: float, opts: FiRetentionParams) -> tuple[list[int], dict]:
    if not opts.calibrate:
        return ranks_for_tau(mats, opts.tau), {"tau": opts.tau}
    return _calibrated_tau(mats, p, weighted=True)


@ALLOCATORS.implements("max_fi")
def max_fi(mats: list[Matrix], p: float, opts: MaxFiParams) -> tuple[list[int], dict]:
    B = _budget(mats, p)
    ranks = _max_fi_dp(mats, B, opts.objective)
    info = {"solver": "dp" if ranks is not None else "greedy"}
    if ranks is None:
        ranks = _fill(mats, [M.rmin for M in mats], B, lambda i, r: _per_cost(_gain(mats[i], r, opts.objective),
                                                                              mats[i], r))
    return ranks, info


def _per_cost(gain: float, M: Matrix, r: int) -> float:
    """Gain per unit of budget of the step r → next(r); a step that costs nothing (times need not grow
    with rank) comes first."""
    d = M.size(M.next(r)) - M.size(r)
    return gain / d if d > 0 else math.inf


def check_curves(mats: list[Matrix]) -> None:
    """Every matrix carries a measured-loss curve (Matrix.loss): r̄ finite values ≥ 0, 0 at dense."""
    missing = [M.name for M in mats if M.loss is None]
    if missing:
        raise AllocationError(f"allocate.measured: no measured loss curve for {len(missing)} matrices (e.g. "
                              f"{missing[0]}); run the calibration first (fisvd.calibrate: measure, then "
                              f"fit_curves, then set Matrix.loss)")
    for M in mats:
        c = np.asarray(M.loss)
        if c.shape != (M.rbar,) or not np.isfinite(c).all() or (c < 0).any() or c[-1] != 0:
            raise AllocationError(f"allocate.measured: loss curve of {M.name} must hold r̄ = {M.rbar} finite "
                                  f"values >= 0 (index r-1) ending in 0 (dense); got shape {c.shape}")


@ALLOCATORS.implements("measured")
def measured(mats: list[Matrix], p: float, opts: MeasuredParams) -> tuple[list[int], dict]:
    """min Σ_ℓ Δ_ℓ(r_ℓ) s.t. Σ size ≤ p·Σ mn over the allowed ranks: the max_fi DP with values −Δ.
    Δ_ℓ = Matrix.loss, fitted by fisvd.calibrate.fit_curves from measurements (methods.md §7b)."""
    check_curves(mats)
    B = _budget(mats, p)
    values = [[-float(M.loss[r - 1]) for r in M.allowed()] for M in mats]
    ranks = _mck_dp(mats, B, values)
    info = {"solver": "dp" if ranks is not None else "greedy"}
    if ranks is None:   # greedy on the loss decrease per parameter (exact only for convex curves)
        ranks = _fill(mats, [M.rmin for M in mats], B, lambda i, r: _per_cost(float(
            mats[i].loss[r - 1] - mats[i].loss[mats[i].next(r) - 1]), mats[i], r))
    info["predicted_loss"] = float(sum(M.loss[r - 1] for M, r in zip(mats, ranks)))
    return ranks, info


def _calibrated_tau(mats: list[Matrix], p: float, weighted: bool) -> tuple[list[int], dict]:
    """Largest τ whose per-matrix ranks meet p (= max-min retained share), then leftover fill."""
    B = _budget(mats, p)
    cum = (lambda M: M.cum_g) if weighted else (lambda M: M.cum_e)
    cands = sorted({float(c) for M in mats for c in cum(M)[: M.rbar - 1]} | {1.0})
    found = _largest_feasible(cands, lambda t: (rk := ranks_for_tau(mats, t, weighted), total_size(mats, rk)), B)
    tau_c, ranks = found if found is not None else (0.0, [M.rmin for M in mats])
    return _fill(mats, ranks, B, lambda i, r: -float(cum(mats[i])[r - 1])), {"tau": tau_c}


def allocate(method: str, mats: list[Matrix], *, budget: float | None, rank_multiple: int, opts=None,
             **kw) -> tuple[list[int], dict]:
    """Ranks per matrix, each an allowed rank (a multiple of rank_multiple below r̄, or r̄ = dense),
    and info (e.g. the calibrated τ, the solver used).

    `opts` is the method's options dataclass (`ALLOCATORS[method].params`, fisvd.methods), or give its fields as
    keywords (`allocate("max_fi", mats, budget=0.5, rank_multiple=1, objective="total")`)."""
    entry = ALLOCATORS[method]
    if not isinstance(rank_multiple, int) or rank_multiple < 1:
        raise AllocationError(f"allocate.rank_multiple: {rank_multiple!r} must be an integer >= 1")
    if opts is None and entry.params is not None:
        opts = entry.params(**kw)
        opts.validate(f"allocate.{method}")
    elif kw:
        raise TypeError(f"{method}: unexpected options {sorted(kw)}")
    mats = [M if M.step == rank_multiple else dataclasses.replace(M, step=rank_multiple) for M in mats]
    ranks, info = entry.fn(mats, budget, opts)
    ranks = [min(max(1, r), M.rbar) for M, r in zip(mats, ranks)]
    bad = [M.name for M, r in zip(mats, ranks) if r < M.rbar and r not in M.ranks]
    if bad:  # every method picks allowed ranks; this guards the invariant the tests rely on
        raise AssertionError(f"{method}: ranks not allowed (multiples of {rank_multiple}, faster than dense "
                             f"with a speed table): {bad[:3]}")
    return ranks, info


def equivalent_uniform_rank(mats: list[Matrix], kept: int) -> int:
    """The uniform_rank allocation's rank with at most `kept` params: the largest r whose ranks
    (r, or dense where r ≥ r̄) keep ≤ `kept` (break-even included; 0 if even rank 1 is larger)."""
    top = max(min(M.m, M.n) for M in mats)
    sizes = [total_params(mats, [min(r, M.rbar) for M in mats]) for r in range(1, top + 1)]
    return int(np.searchsorted(np.asarray(sizes), kept, side="right"))


def report(mats: list[Matrix], ranks: list[int], total_model_params: int) -> dict:
    """ranks.json content: per matrix rows and totals (achieved p, params, equivalent uniform rank)."""
    rows = []
    for M, r in zip(mats, ranks):
        dense = r >= M.rbar
        rows.append({"label": f"L{M.layer:02d} {M.type}", "name": M.name, "layer": M.layer, "type": M.type,
                     "shape": [M.m, M.n],
                     "rank": min(M.m, M.n) if dense else r, "dense": dense,
                     "kept_params": M.params(r), "fi_retained": round(M.rho(r), 6)})
    dense_total = sum(M.params(M.rbar) for M in mats)
    kept = total_params(mats, ranks)
    p = kept / dense_total
    return {"matrices": rows, "totals": {
        "kept_ratio": round(p, 6),
        "compressible_params_dense": dense_total,
        "compressible_params_kept": kept,
        "total_params_dense": total_model_params,
        "total_params": total_model_params - dense_total + kept,
        "equivalent_uniform_rank": equivalent_uniform_rank(mats, kept),
        "num_dense": sum(r["dense"] for r in rows),
        "min_fi_retained": round(min(M.rho(r) for M, r in zip(mats, ranks)), 6),
    }}
