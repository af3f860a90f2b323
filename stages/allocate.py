"""allocate: one rank per compressible matrix from the weights, the Fisher and (for the two-sided
factorisations) the statistics → metrics/allocate/ranks.json (git-tracked): per matrix layer, type,
shape, rank, kept params, FI retained ρ, dense flag; totals: achieved kept ratio p, total params,
equivalent uniform rank.

Methods and formulas: fisvd.allocate (methods.md §5–§7b), one registry entry each (listed below).
The FI allocators spend on the spectrum σ_k(T)² of the factorisation `compress.method` uses
(fisvd.factorize.whitened: FWSVD W diag(s), whiten W L_x, kfac L_gᵀ W L_x), computed once per matrix.
`measured` (fisvd.calibrate) first measures, on a seeded slice of `allocate.measured.slice` TRAINING
examples (never dev), the loss increase of truncating each matrix alone at a few ranks with that
factorisation, fits a curve per matrix, solves the knapsack and checks the joint model with greedy
swaps; ranks.json records the predicted loss and the swap history.
Speed: with `allocate.speed_table` (a latency table, fisvd.speed; the committed CPU one is
fisvd.paths.LATENCY_TABLE, a DVC dep of this stage) every method picks only ranks the table measured
faster than dense for the matrix's shape, or dense; `allocate.budget_kind: latency` makes p the kept
share of the Linears' time by that table. ranks.json then also records the table's predicted time of
the compressible Linears (dense vs allocated).
"""
import logging
import os
import time

from fisvd.allocate import METHODS, allocate, matrix_stats, report
from fisvd.calibrate import fit_curves, joint_refine, measure, rank_grid, training_slice, with_curves
from fisvd.cli import run_stage
from fisvd.data import load_prepared
from fisvd.factorize import FACTORISATIONS, whitened
from fisvd.fisher import check_against, load_fisher
from fisvd.io import remove, write_json
from fisvd.factorize import rank_factors
from fisvd.models import compressible_linears, dense_weights, load_classifier, load_tokenizer, meta_model, pick_device
from fisvd.errors import ParamError
from fisvd.paths import FISHER, LATENCY_TABLE, MODEL, PREPARED, RANKS, STAGES, STATS
from fisvd.speed import load_table, predicted, speed_aware
from fisvd.stats import check_against as check_stats, load_stats, matrix_stats as stats_of

KEYS = (["allocate.method", "allocate.budget", "allocate.rank_multiple", "allocate.budget_kind", "allocate.speed_table"]
        + [f"allocate.{m}" for m in METHODS.with_params()]
        + ["compress.method"] + [f"compress.{m}" for m in FACTORISATIONS.with_params()] + ["finetune.max_length"])
log = logging.getLogger("fisvd")


def speed_table(path):
    """The latency table `allocate.speed_table` names, or None; only a DVC dep of this stage may be named,
    or `dvc repro` would not re-run allocate when the table is re-measured."""
    if path is None:
        return None
    if os.path.normpath(path) not in [os.path.normpath(p) for p in STAGES["allocate"][0]]:
        raise ParamError(f"allocate.speed_table: {path} is not a dependency of the allocate stage, so DVC would not "
                         f"re-run it when that file changes; use {LATENCY_TABLE} (fisvd.paths.LATENCY_TABLE) or "
                         f"add your table to fisvd.paths.STAGES and the stage's deps in dvc.yaml")
    return load_table(path)


def main(params):
    a, c = params.allocate, params.compress
    table = speed_table(a.speed_table)
    model = meta_model(MODEL)
    infos = compressible_linears(model)
    shapes = {m.name: m.shape for m in infos}
    fisher, _ = load_fisher(FISHER)
    check_against(fisher, shapes, FISHER)
    two_sided = {"cov_x", "cov_g"} & set(FACTORISATIONS[c.method].needs)
    if two_sided:
        stats, stats_meta = load_stats(STATS)
        check_stats(stats, stats_meta, shapes, STATS)
    if a.method == "measured":
        meta, splits = load_prepared(PREPARED)
    weights = dense_weights(MODEL, [m.name for m in infos])
    remove(RANKS)
    t0 = time.perf_counter()
    mats, per_matrix = [], {}
    for m in infos:
        per_matrix[m.name] = {"fisher": fisher[m.name], **(stats_of(stats, stats_meta, m.name) if two_sided else {})}
        T = whitened(c.method, weights[m.name], per_matrix[m.name], opts=c.opts())
        mats.append(matrix_stats(m.name, m.layer, m.type, weights[m.name], fisher[m.name], T))
    if table is not None:   # faster ranks only; with budget_kind latency each rank costs its time
        mats = speed_aware(mats, table, a.budget_kind)
    if a.method == "measured":
        o, device = a.opts(), pick_device()
        model = load_classifier(MODEL, meta["num_labels"]).float().eval()
        tok = load_tokenizer(MODEL)
        slice_batches = training_slice(splits["train"], o.slice, tok, params.finetune.max_length)
        factor_fn = rank_factors(c.method, weights, per_matrix, c.opts())    # one SVD per matrix, sliced per rank
        points = measure(model, infos, factor_fn, slice_batches, {M.name: rank_grid(M, o.points) for M in mats},
                         device, metric=o.metric)
        mats = with_curves(mats, fit_curves(mats, points))
        log.info("measured %d truncations on %d training examples (%.1f s)", sum(map(len, points.values())),
                 sum(len(b["input_ids"]) for b in slice_batches), time.perf_counter() - t0)
    budgeted = not (a.method == "fi_retention" and not a.opts().calibrate)
    ranks, info = allocate(a.method, mats, budget=a.budget if budgeted else None, rank_multiple=a.rank_multiple,
                           opts=a.opts())
    if a.method == "measured":
        ranks, info["joint"] = joint_refine(model, mats, ranks, factor_fn, slice_batches, a.budget, o.swaps,
                                            rank_multiple=a.rank_multiple, metric=o.metric, device=device)
    out = report(mats, ranks, sum(p.numel() for p in model.parameters()))
    # no wall time in ranks.json: identical inputs must give identical bytes, or DVC re-runs compress
    out["totals"] = {"method": a.method, "spectrum": c.method, "budget": a.budget if budgeted else None,
                     "rank_multiple": a.rank_multiple, **info, **out["totals"]}
    if table is not None:   # (without a table ranks.json keeps its earlier bytes: no needless compress re-run)
        out["totals"].update(budget_kind=a.budget_kind, speed_table=a.speed_table, speed_device=table["device_name"],
                             predicted_linears=predicted(table, [((M.m, M.n), r) for M, r in zip(mats, ranks)]))
        log.info("speed table %s: compressible Linears predicted %.2fx faster (time share %.4f)", a.speed_table,
                 out["totals"]["predicted_linears"]["speedup"], out["totals"]["predicted_linears"]["time_ratio"])
    write_json(RANKS, out)
    t = out["totals"]
    log.info("%s on the %s spectrum: kept ratio p=%.4f, %d dense matrices, %d total params, min FI retained %.4f "
             "(%.1f s)", a.method, c.method, t["kept_ratio"], t["num_dense"], t["total_params"],
             t["min_fi_retained"], time.perf_counter() - t0)


if __name__ == "__main__":
    run_stage("allocate", __doc__, KEYS, main, METHODS.help_text())
