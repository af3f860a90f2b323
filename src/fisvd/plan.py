"""Planning: one rank per compressible matrix, for any allocation method (methods.md §5–§7b).

    factors = Factors(compress_method, weights, stats, opts)               # fisvd.factorize
    mats = matrices(infos, weights, stats, factors, table, budget_kind)     # one allocate.Matrix each
    ranks, info = plan(method, mats, budget=p, rank_multiple=k, opts=o, probe=probe)
    record = ranks_record(mats, ranks, info, total_params, method=…, …)    # ranks.json

`make_matrix` is the one way to build an `allocate.Matrix`: the spectrum g_k = s_k(T)² of the
factorisation's whitened matrix T (`Factors.spectrum`: from its one decomposition), the plain
spectrum of W (for `energy`), Σ F and Σ F ⊙ W² (for `inter_layer_fi`). With a speed table only ranks
measured faster than dense stay allowed (fisvd.speed). `plan` reads what the method's spec declares
(fisvd.methods): "measurements" makes a `Probe` measure loss curves on a seeded TRAINING slice (never
dev) and check the joint model (fisvd.calibrate: measure → fit → knapsack → joint refine), the curves
measured once per probe however many budgets are planned; `budgeted(opts)` says whether p is spent.
No stage names a method.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import torch

from .allocate import Matrix, allocate, report
from .calibrate import fit_curves, joint_refine, measure, rank_grid, with_curves
from .data import training_slice
from .errors import AllocationError
from .factorize import Factors, fwsvd_scale, spectrum
from .methods import ALLOCATORS
from .speed import missing_shapes, predicted, speed_aware

log = logging.getLogger("fisvd")


def make_matrix(name: str, layer: int, type_: str, W: torch.Tensor, F: torch.Tensor,
                g: Optional[torch.Tensor] = None) -> Matrix:
    """`allocate.Matrix` of weight W [out, in] with Fisher F: g the spectrum the FI allocators spend on
    (a factorisation's s_k(T)², `Factors.spectrum`; default FWSVD's σ_k(W diag s)²)."""
    if not torch.isfinite(W).all():
        raise AllocationError(f"{name}: weight contains NaN or inf")
    g = spectrum(W, fwsvd_scale(F)) if g is None else g
    Fd, Wd = F.double(), W.double()
    return Matrix(name, layer, type_, W.shape[0], W.shape[1], g.double().cpu().numpy(), spectrum(W).cpu().numpy(),
                  float(Fd.sum()), float((Fd * Wd * Wd).sum()))


def matrices(infos, weights: dict, stats: dict, factors: Factors, table: Optional[dict] = None,
             budget_kind: str = "params") -> list[Matrix]:
    """One Matrix per compressible Linear (`infos`: fisvd.models.MatrixInfo), on the spectrum of
    `factors`' factorisation; with a speed `table`, only its faster-than-dense ranks (fisvd.speed)."""
    mats = [make_matrix(m.name, m.layer, m.type, weights[m.name], stats[m.name]["fisher"], factors.spectrum(m.name))
            for m in infos]
    if table is None:
        return mats
    if missing := missing_shapes(table, [(M.m, M.n) for M in mats]):
        log.warning("speed table (%s): no timings for shape %s; those matrices take any rank, as with "
                    "allocate.speed_table: null (ranks.json: totals.speed_missing)", table.get("device_name") or
                    table.get("device"), ", ".join(missing))
    return speed_aware(mats, table, budget_kind)


class Probe:
    """Loss measurements for allocators that need them ("measurements"): the dense `model` (fp32,
    eval), its compressible matrices `infos`, the `factors` the model would be compressed with, and
    the TRAINING rows the seeded slice is drawn from (tokenised with `tokenizer` at `max_length`)."""

    def __init__(self, model, infos, factors: Factors, train_rows: list[dict], tokenizer, max_length: int, device):
        self.model, self.infos, self.factors, self.device = model, infos, factors, device
        self.train_rows, self.tokenizer, self.max_length = train_rows, tokenizer, max_length
        self._slices: dict = {}
        self._curves: dict = {}

    def batches(self, n: int) -> list[dict]:
        if n not in self._slices:
            self._slices[n] = training_slice(self.train_rows, n, self.tokenizer, self.max_length)
        return self._slices[n]

    def curves(self, mats: list[Matrix], opts) -> list[Matrix]:
        """`mats` carrying their fitted loss curves (measured once per (points, metric, slice))."""
        key = (opts.points, opts.metric, opts.slice, tuple((M.name, tuple(M.allowed())) for M in mats))
        if key not in self._curves:
            t0 = time.perf_counter()
            batches = self.batches(opts.slice)
            points = measure(self.model, self.infos, self.factors, batches,
                             {M.name: rank_grid(M, opts.points) for M in mats}, self.device, metric=opts.metric)
            self._curves[key] = fit_curves(mats, points)
            log.info("measured %d truncations on %d training examples (%.1f s)", sum(map(len, points.values())),
                     sum(len(b["input_ids"]) for b in batches), time.perf_counter() - t0)
        return with_curves(mats, self._curves[key])

    def refine(self, mats: list[Matrix], ranks: list[int], budget: float, opts, rank_multiple: int):
        return joint_refine(self.model, mats, ranks, self.factors, self.batches(opts.slice), budget, opts.swaps,
                            rank_multiple=rank_multiple, metric=opts.metric, device=self.device)


def plan(method: str, mats: list[Matrix], *, budget: Optional[float], rank_multiple: int, opts,
         probe: Optional[Callable[[], Probe]] = None) -> tuple[list[int], dict]:
    """Ranks (aligned with `mats`) and info of allocation `method` with options `opts` at kept ratio
    `budget`. `probe`: a zero-argument callable giving the Probe (called only by methods that need
    measurements, so a stage loads the model only then)."""
    spec = ALLOCATORS[method]
    p = budget if spec.budgeted(opts) else None
    if "measurements" not in spec.needs:
        return allocate(method, mats, budget=p, rank_multiple=rank_multiple, opts=opts)
    if probe is None:
        raise AllocationError(f"allocate.{method}: needs loss measurements on a training slice (a Probe)")
    pr = probe()
    mats = pr.curves(mats, opts)
    ranks, info = allocate(method, mats, budget=p, rank_multiple=rank_multiple, opts=opts)
    ranks, info["joint"] = pr.refine(mats, ranks, p, opts, rank_multiple)
    info["joint_delta"] = min(h["delta"] for h in info["joint"])
    return ranks, info


def ranks_record(mats: list[Matrix], ranks: list[int], info: dict, total_params: int, *, method: str,
                 spectrum_of: str, budget: float, rank_multiple: int, opts, table: Optional[dict] = None,
                 budget_kind: str = "params", speed_table: Optional[str] = None) -> dict:
    """ranks.json: per-matrix rows and totals (method, spectrum, budget — null when the method does not
    spend one —, the method's info, achieved p, params); with a speed table also the table's device and
    predicted time of the compressible Linears. No wall time: identical inputs give identical bytes."""
    out = report(mats, ranks, total_params)
    p = budget if ALLOCATORS[method].budgeted(opts) else None
    out["totals"] = {"method": method, "spectrum": spectrum_of, "budget": p, "rank_multiple": rank_multiple,
                     **info, **out["totals"]}
    if table is not None:
        shapes_ranks = [((M.m, M.n), r) for M, r in zip(mats, ranks)]
        out["totals"].update(budget_kind=budget_kind, speed_table=speed_table, speed_device=table["device_name"])
        if missing := missing_shapes(table, [s for s, _ in shapes_ranks]):
            out["totals"]["speed_missing"] = missing          # no timings: any rank, left out of the prediction
        if len(missing) < len({s for s, _ in shapes_ranks}):
            out["totals"]["predicted_linears"] = predicted(table, shapes_ranks)
    return out
