"""Rank allocation calibrated by measured loss (methods.md §7b): allocation method `measured`.

Δ_ℓ(r) = the loss increase on a seeded slice of the TRAINING split (never dev; not held out: the
model was fine-tuned on these rows) when only matrix ℓ is replaced by its rank-r factorisation (the
one `compress` uses), everything else dense:

    metric "kl":   Δ = (1/N) Σ_i KL(softmax z_i || softmax ẑ_i)     (z dense, ẑ compressed logits)
                   regression (one logit): Δ = (1/N) Σ_i (ẑ_i − z_i)²
    metric "loss": Δ = (1/N) Σ_i ℓ(ẑ_i, y_i) − (1/N) Σ_i ℓ(z_i, y_i)  (CE; MSE for regression; labels
                   needed; may be < 0, the fit clips it at 0)

Pipeline (fisvd.plan.Probe and plan run it for any method whose spec needs "measurements"; all
functions pure apart from the temporary swaps):

    grid = {M.name: rank_grid(M, p.points) for M in mats}                   # a few ranks per matrix
    pts = measure(model, infos, factor_fn, batches, grid, device, metric=p.metric)   # (rank, Δ) points
    mats = with_curves(mats, fit_curves(mats, pts))                          # Matrix.loss = Δ_ℓ(1..r̄)
    ranks, info = allocate("measured", mats, budget=b, rank_multiple=k, opts=p)  # exact knapsack
    ranks, hist = joint_refine(model, mats, ranks, factor_fn, batches, b, p.swaps,
                               rank_multiple=k, metric=p.metric, device=device)

`factor_fn(name, r) -> (A, B)` with W ≈ A B (a fisvd.factorize.Factors of `compress.method` on the
dense weights and their statistics); `batches` a list of dicts of tensors (input_ids, attention_mask,
…, and labels for metric "loss"), the same slice for every measurement so differences are not noise.

Cost: the dense logits are computed once, together with the output of every encoder block (forward
hooks on `fisvd.models.find_blocks`; memory L·N·T·H floats). Truncating a matrix in block ℓ leaves
blocks < ℓ unchanged, so its measurement replaces blocks 0..ℓ−1 by stubs returning their cached
outputs and runs only the embeddings (cheap), blocks ℓ..L−1 and the head: on average (L+1)/(2L) of a
forward. MiniLM (L = 6, 36 matrices) with `points` ranks per matrix: 36·points measurements ≈
21·points full forwards of the slice (points = 6: 216 measurements ≈ 126 forwards), plus one dense
forward; the joint check is 1 + swaps full forwards. Everything runs in fp32 (no bf16 autocast: the
differences measured are small).

Curve model (fit_curves): with tail_ℓ(r) = Σ_{k>r} g_ℓ,k (g = Matrix.g, the spectrum of the
factorisation's whitened matrix), the quadratic model says Δ_ℓ(r) ≈ c_ℓ · tail_ℓ(r). Measured curves
bend away from one constant c_ℓ (the quadratic model holds for small truncations only), so instead of
a single least-squares c_ℓ the fit is a local power law in the tail: through the measured points
(r_j, Δ_j), made non-increasing in r and ≥ 0 by isotonic regression (pool-adjacent-violators),

    r_j < r < r_j+1:  Δ(r) = Δ_j+1 · (tail(r)/tail_j+1)^β_j,   β_j = log(Δ_j/Δ_j+1) / log(tail_j/tail_j+1)
                      (linear in tail when Δ_j+1 = 0 or tail_j+1 = 0)
    r < r_1, r > r_J: Δ(r) = Δ_end · tail(r)/tail_end     (the c·tail model, c from the nearest point)
    r = r̄ (dense):    Δ = 0

It is exact at the (isotonic) measured points, exact everywhere when Δ = c·tail, non-increasing in r
because tail is, and needs no global constant. The grid always holds the smallest allowed rank, so
extrapolation happens only above the largest measured rank (≈ 3/4 r̄), where Δ is small.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .allocate import Matrix, _budget, check_curves, total_size
from .errors import AllocationError
from .lowrank import LowRankLinear, set_module
from .models import find_blocks

GRID_LOW, GRID_HIGH = 1 / 32, 3 / 4      # fractions of r̄ spanned by the measured ranks (geometric)
METRICS = ("kl", "loss")


def rank_grid(M: Matrix, points: int) -> list[int]:
    """Up to `points` allowed ranks below r̄, ascending: the smallest allowed rank and points − 1
    allowed ranks nearest below geometrically spaced fractions 1/32 … 3/4 of r̄. Never r̄ (dense,
    Δ = 0 by definition); [] when only dense is allowed."""
    if points < 1:
        raise ValueError(f"points: {points!r} must be >= 1")
    below = M.allowed()[:-1]
    if not below:
        return []
    fracs = np.geomspace(GRID_LOW, GRID_HIGH, points - 1) if points > 1 else []
    grid = {below[0]}
    for f in fracs:
        r = M.floor(max(1, round(f * M.rbar)))
        grid.add(below[-1] if r >= M.rbar else r)
    return sorted(grid)


def _tree(x, fn):
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_tree(v, fn) for v in x)
    return x


class _Cached(nn.Module):
    """Stands in for an encoder block: returns (a copy of) its cached dense output for the batch."""

    def __init__(self, outputs: list, state: dict):
        super().__init__()
        self.outputs, self.state = outputs, state

    def forward(self, *args, **kwargs):
        return _tree(self.outputs[self.state["b"]], torch.Tensor.clone)


class _Probe:
    """The dense model's reference on a slice, and Δ of the model with some Linears swapped."""

    def __init__(self, model: nn.Module, batches: Iterable[dict], device, metric: str, cache_blocks: bool):
        if metric not in METRICS:
            raise ValueError(f"metric: {metric!r}; choose one of {', '.join(METRICS)}")
        self.model, self.metric, self.device = model, metric, torch.device(device)
        self.prefix, self.blocks = find_blocks(model)
        self.batches, self.labels = [], []
        for b in batches:
            self.batches.append({k: v.to(self.device) for k, v in b.items() if k != "labels"})
            self.labels.append(b.get("labels"))
        if not self.batches:
            raise ValueError("no batches: nothing to measure on")
        if metric == "loss" and any(y is None for y in self.labels):
            raise ValueError("metric 'loss' needs labels in every batch")
        self.state = {"b": 0}
        self.outputs: list[list] | None = [[] for _ in self.blocks] if cache_blocks else None
        handles = []
        if cache_blocks:       # the last block's output is never replayed
            for i, block in enumerate(list(self.blocks)[:-1]):
                handles.append(block.register_forward_hook(
                    lambda mod, args, out, i=i: self.outputs[i].append(_tree(out, lambda t: t.detach().clone()))))
        try:
            self.dense = self._logits(0)
        finally:
            for h in handles:
                h.remove()
        self.dense_loss = self._per_example_loss(self.dense) if metric == "loss" else None

    def layer_of(self, name: str) -> int:
        """Index of the block holding module `name` (0 when outside the blocks: a full forward)."""
        head = self.prefix + "."
        if name.startswith(head):
            return int(name[len(head):].split(".", 1)[0])
        return 0

    @torch.inference_mode()
    def _logits(self, start: int) -> list[torch.Tensor]:
        """Logits (float64, CPU) per batch; blocks < start replaced by their cached outputs."""
        stubs = {}
        if self.outputs is not None:
            for i in range(start):
                stubs[i] = self.blocks[i]
                self.blocks[i] = _Cached(self.outputs[i], self.state)
        try:
            out = []
            for b, batch in enumerate(self.batches):
                self.state["b"] = b
                out.append(self.model(**batch).logits.detach().double().cpu())
            return out
        finally:
            for i, block in stubs.items():
                self.blocks[i] = block

    def _per_example_loss(self, logits: list[torch.Tensor]) -> torch.Tensor:
        z = torch.cat(logits)
        y = torch.cat([t.cpu() for t in self.labels])
        if z.shape[-1] == 1:
            return (z.squeeze(-1) - y.double()) ** 2
        return nn.functional.cross_entropy(z, y.long(), reduction="none")

    def delta(self, logits: list[torch.Tensor]) -> float:
        """Δ of compressed logits against the dense ones (module docstring)."""
        if self.metric == "loss":
            return float(self._per_example_loss(logits).mean() - self.dense_loss.mean())
        z, zc = torch.cat(self.dense), torch.cat(logits)
        if z.shape[-1] == 1:
            return float(((zc - z) ** 2).mean())
        lp, lq = torch.log_softmax(z, -1), torch.log_softmax(zc, -1)
        return float((lp.exp() * (lp - lq)).sum(-1).clamp_min(0).mean())

    def measure(self, modules: dict[str, nn.Module]) -> float:
        """Δ with the named modules swapped in (from the first block they touch), then restored."""
        if not modules:
            return 0.0
        start = min(self.layer_of(n) for n in modules) if self.outputs is not None else 0
        originals = {}
        try:
            for name, mod in modules.items():
                originals[name] = self.model.get_submodule(name)
                set_module(self.model, name, mod)
            return self.delta(self._logits(start))
        finally:
            for name, mod in reversed(list(originals.items())):
                set_module(self.model, name, mod)


def _lowrank(model: nn.Module, name: str, factors) -> LowRankLinear:
    dense = model.get_submodule(name)
    if not isinstance(dense, nn.Linear):
        raise ValueError(f"{name}: expected a dense nn.Linear, found {type(dense).__name__}")
    A, B = factors
    if (A.shape[0], B.shape[1]) != tuple(dense.weight.shape) or A.shape[1] != B.shape[0]:
        raise ValueError(f"{name}: factors {tuple(A.shape)} × {tuple(B.shape)} do not fit the weight "
                         f"{tuple(dense.weight.shape)}")
    w = dense.weight
    return LowRankLinear.from_factors(A.to(w.device, w.dtype), B.to(w.device, w.dtype), dense.bias).to(w.device)


def _session(model: nn.Module, device) -> Callable[[], None]:
    """Put the model in eval mode on `device`; returns the callback restoring every module's training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval().to(device)

    def restore():
        for m, t in flags:
            m.training = t
    return restore


def measure(model: nn.Module, infos, factor_fn: Callable, batches: Iterable[dict], grid: dict[str, list[int]],
            device, *, metric: str, cache_blocks: bool = True,
            progress: Callable = lambda it: it) -> dict[str, list[tuple[int, float]]]:
    """{name: [(r, Δ(r)) for r in grid[name]]}: each matrix of `grid` alone at each of its ranks.

    `infos`: the compressible matrices (MatrixInfo or Matrix: .name); `factor_fn(name, r)` → (A, B).
    The model is left exactly as it was (same module objects, weights, training flag; it is moved to
    `device`). `cache_blocks=False` runs full forwards (the reference the fast path is tested against)."""
    names = [i.name for i in infos]
    unknown = sorted(set(grid) - set(names))
    if unknown:
        raise ValueError(f"grid names {unknown[:3]} are not among the compressible matrices")
    restore = _session(model, device)
    try:
        probe = _Probe(model, batches, device, metric, cache_blocks)
        out = {}
        for name in progress([n for n in names if n in grid]):
            out[name] = [(int(r), probe.measure({name: _lowrank(model, name, factor_fn(name, int(r)))}))
                         for r in sorted(grid[name])]
        return out
    finally:
        restore()


def _isotonic_nonincreasing(y: np.ndarray) -> np.ndarray:
    """Least-squares non-increasing fit to y (pool adjacent violators, equal weights)."""
    blocks: list[list[float]] = []          # [mean, count]
    for v in y:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return np.concatenate([np.full(c, m) for m, c in blocks])


def fit_curve(M: Matrix, points: list[tuple[int, float]]) -> np.ndarray:
    """Δ(r) for r = 1..r̄ (index r−1; 0 at r̄ = dense) through the measured (r, Δ) points; the
    tail-ratio model of the module docstring."""
    curve = np.zeros(M.rbar)
    pts: dict[int, list[float]] = {}
    for r, d in points:
        if not 1 <= r <= M.rbar:
            raise ValueError(f"{M.name}: measured rank {r} outside [1, {M.rbar}]")
        if r < M.rbar:                          # dense is 0 by definition
            pts.setdefault(int(r), []).append(float(d))
    if M.allowed() == [M.rbar]:                 # only dense is allowed (r̄ ≤ rank_multiple): nothing to fit
        return curve
    if not pts:
        raise ValueError(f"{M.name}: no measured point below the break-even rank {M.rbar}")
    rs = np.array(sorted(pts))
    ds = np.clip(_isotonic_nonincreasing(np.array([np.mean(pts[r]) for r in rs])), 0, None)
    g = np.clip(np.asarray(M.g, dtype=np.float64), 0, None)
    suffix = np.concatenate([np.cumsum(g[::-1])[::-1], [0.0]])       # suffix[r] = Σ_{k>r} g_k (1-based k)
    ranks = np.arange(1, M.rbar)
    tail = suffix[np.minimum(ranks, len(g))]
    ts = suffix[np.minimum(rs, len(g))]

    def ratio(d, t_end, t):
        return d * t / t_end if t_end > 0 else np.full_like(t, d)

    lo, hi = ranks <= rs[0], ranks >= rs[-1]
    curve[:-1][lo] = ratio(ds[0], ts[0], tail[lo])
    curve[:-1][hi] = ratio(ds[-1], ts[-1], tail[hi])
    for j in range(len(rs) - 1):
        sel = (ranks > rs[j]) & (ranks < rs[j + 1])
        if not sel.any():
            continue
        (da, db), (ta, tb), t = ds[j:j + 2], ts[j:j + 2], tail[sel]
        if ta <= tb:
            curve[:-1][sel] = db
        elif db > 0 and tb > 0:
            beta = math.log(da / db) / math.log(ta / tb)
            curve[:-1][sel] = db * (t / tb) ** beta
        else:
            curve[:-1][sel] = db + (da - db) * (t - tb) / (ta - tb)
        curve[:-1][sel] = np.clip(curve[:-1][sel], db, da)
    curve[rs - 1] = ds
    curve[:-1] = np.minimum.accumulate(np.clip(curve[:-1], 0, None))   # guards rounding only
    curve[-1] = 0.0
    return curve


def fit_curves(mats: list[Matrix], measured: dict[str, list[tuple[int, float]]]) -> dict[str, np.ndarray]:
    """{name: Δ(1..r̄)} for every matrix (fit_curve); a matrix whose only allowed rank is dense (r̄ ≤
    rank_multiple) needs no points and gets zeros. Fit with the rank_multiple the allocation uses."""
    return {M.name: fit_curve(M, measured.get(M.name, [])) for M in mats}


def with_curves(mats: list[Matrix], curves: dict[str, np.ndarray]) -> list[Matrix]:
    """Copies of `mats` carrying their curve in Matrix.loss (what allocate("measured", …) reads)."""
    return [dataclasses.replace(M, loss=np.asarray(curves[M.name], dtype=np.float64)) for M in mats]


def _swap_candidates(mats: list[Matrix], ranks: list[int], budget: int) -> list[tuple[float, int, int, int, int]]:
    """(predicted ΔΣ, donor i, its new rank, receiver j, its new rank), best first: j one allowed
    step up, i the fewest allowed steps down that keep Σ size ≤ budget."""
    used = total_size(mats, ranks)
    allowed = [M.allowed() for M in mats]
    out = []
    for j, (Mj, rj) in enumerate(zip(mats, ranks)):
        if rj >= Mj.rbar:
            continue
        up = Mj.next(rj)
        gain = Mj.loss[up - 1] - Mj.loss[rj - 1]
        need = used + Mj.size(up) - Mj.size(rj) - budget          # params the donor must free
        for i, (Mi, ri) in enumerate(zip(mats, ranks)):
            if i == j:
                continue
            for down in reversed(allowed[i][:allowed[i].index(ri)]):
                if Mi.size(ri) - Mi.size(down) >= need:
                    out.append((float(gain + Mi.loss[down - 1] - Mi.loss[ri - 1]), i, down, j, up))
                    break
    out.sort()
    return out


def joint_refine(model: nn.Module, mats: list[Matrix], ranks: list[int], factor_fn: Callable,
                 batches: Iterable[dict], budget: float, swaps: int, *, rank_multiple: int, metric: str,
                 device) -> tuple[list[int], list[dict]]:
    """The joint check: measure Δ of the model with every matrix at its rank, then try up to `swaps`
    greedy swaps (one allowed step up for a receiver j, the fewest steps down for a donor i that keep
    the budget), in order of the smallest predicted change Δ_i(r_i') − Δ_i(r_i) + Δ_j(r_j') − Δ_j(r_j)
    (Matrix.loss; the first is the donor with the smallest predicted increase and the receiver with the
    largest predicted gain), never revisiting an allocation nor retrying a rejected move; a swap is
    kept only if the measured joint Δ drops. The knapsack is optimal for the predicted (additive)
    curves, so every swap is predicted ≥ 0: the check corrects for interactions between matrices.

    Returns (ranks, history): history[0] = {"delta", "predicted"} of the input, then one entry per
    tried swap. The returned Δ is never above the input's and Σ size ≤ ⌊budget·Σ mn⌋ throughout."""
    mats = [M if M.step == rank_multiple else dataclasses.replace(M, step=rank_multiple) for M in mats]
    check_curves(mats)
    B = _budget(mats, budget)
    ranks = [int(r) for r in ranks]
    bad = [M.name for M, r in zip(mats, ranks) if r not in M.allowed()]
    if bad:
        raise AllocationError(f"joint_refine: ranks of {bad[:3]} are not allowed ranks (rank_multiple {rank_multiple})")
    if total_size(mats, ranks) > B:
        raise AllocationError(f"joint_refine: input ranks keep {total_size(mats, ranks)} params > budget {B}")
    if swaps < 0:
        raise ValueError(f"swaps: {swaps!r} must be >= 0")
    restore = _session(model, device)
    built: dict[tuple[str, int], nn.Module] = {}

    def modules(rk):
        out = {}
        for M, r in zip(mats, rk):
            if r < M.rbar:
                if (M.name, r) not in built:
                    built[(M.name, r)] = _lowrank(model, M.name, factor_fn(M.name, r))
                out[M.name] = built[(M.name, r)]
        return out

    def predicted(rk):
        return float(sum(M.loss[r - 1] for M, r in zip(mats, rk)))

    try:
        probe = _Probe(model, batches, device, metric, cache_blocks=True)
        current = probe.measure(modules(ranks))
        history = [{"delta": current, "predicted": predicted(ranks)}]
        seen, rejected = {tuple(ranks)}, set()
        for _ in range(swaps):
            cand = None
            for c in _swap_candidates(mats, ranks, B):
                new = list(ranks)
                new[c[1]], new[c[3]] = c[2], c[4]
                move = (c[1], ranks[c[1]], c[2], c[3], ranks[c[3]], c[4])
                if tuple(new) not in seen and move not in rejected:
                    cand = (c, new, move)
                    break
            if cand is None:
                break
            (change, i, down, j, up), new, move = cand
            seen.add(tuple(new))
            assert total_size(mats, new) <= B
            d = probe.measure(modules(new))
            history.append({"donor": mats[i].name, "donor_ranks": [ranks[i], down], "receiver": mats[j].name,
                            "receiver_ranks": [ranks[j], up], "predicted_change": change, "delta": d,
                            "accepted": d < current})
            if d < current:
                ranks, current = new, d
            else:
                rejected.add(move)
        return ranks, history
    finally:
        restore()



def joint_deltas(model: nn.Module, candidates: list[dict[str, tuple[torch.Tensor, torch.Tensor]]],
                 batches: Iterable[dict], device, *, metric: str) -> list[float]:
    """Δ (module docstring) of each candidate compressed model, every named Linear of a candidate
    replaced by its (A, B) factors at once; one dense reference for all. The model is left as it was."""
    restore = _session(model, device)
    try:
        probe = _Probe(model, batches, device, metric, cache_blocks=True)
        return [probe.measure({n: _lowrank(model, n, f) for n, f in c.items()}) for c in candidates]
    finally:
        restore()
