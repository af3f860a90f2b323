"""allocate: one rank per compressible matrix from the weights, the Fisher and (for the two-sided
factorisations) the statistics → metrics/allocate/ranks.json (git-tracked): per matrix layer, type,
shape, rank, kept params, FI retained ρ, dense flag; totals: achieved kept ratio p, total params,
equivalent uniform rank.

Methods and formulas: fisvd.allocate (methods.md §5–§7b), one registry entry each (listed below).
The FI allocators spend on the spectrum σ_k(T)² of the factorisation `compress.method` uses
(fisvd.factorize.whitened: FWSVD W diag(s), whiten W L_x, kfac L_gᵀ W L_x), computed once per matrix.
"""
import logging
import time

from fisvd.allocate import METHODS, allocate, matrix_stats, report
from fisvd.cli import run_stage
from fisvd.factorize import FACTORISATIONS, whitened
from fisvd.fisher import check_against, load_fisher
from fisvd.io import remove, write_json
from fisvd.models import dense_weights, meta_model, compressible_linears
from fisvd.paths import FISHER, MODEL, RANKS, STATS
from fisvd.stats import check_against as check_stats, load_stats, matrix_stats as stats_of

KEYS = (["allocate.method", "allocate.budget", "allocate.rank_multiple"] + [f"allocate.{m}" for m in METHODS.with_params()]
        + ["compress.method"] + [f"compress.{m}" for m in FACTORISATIONS.with_params()])
log = logging.getLogger("fisvd")


def main(params):
    a, c = params.allocate, params.compress
    model = meta_model(MODEL)
    infos = compressible_linears(model)
    shapes = {m.name: m.shape for m in infos}
    fisher, _ = load_fisher(FISHER)
    check_against(fisher, shapes, FISHER)
    two_sided = {"cov_x", "cov_g"} & set(FACTORISATIONS[c.method].needs)
    if two_sided:
        stats, stats_meta = load_stats(STATS)
        check_stats(stats, stats_meta, shapes, STATS)
    weights = dense_weights(MODEL, [m.name for m in infos])
    remove(RANKS)
    t0 = time.perf_counter()
    mats = []
    for m in infos:
        s = {"fisher": fisher[m.name], **(stats_of(stats, stats_meta, m.name) if two_sided else {})}
        T = whitened(c.method, weights[m.name], s, opts=c.opts())
        mats.append(matrix_stats(m.name, m.layer, m.type, weights[m.name], fisher[m.name], T))
    budgeted = not (a.method == "fi_retention" and not a.opts().calibrate)
    ranks, info = allocate(a.method, mats, budget=a.budget if budgeted else None, rank_multiple=a.rank_multiple,
                           opts=a.opts())
    out = report(mats, ranks, sum(p.numel() for p in model.parameters()))
    # no wall time in ranks.json: identical inputs must give identical bytes, or DVC re-runs compress
    out["totals"] = {"method": a.method, "spectrum": c.method, "budget": a.budget if budgeted else None,
                     "rank_multiple": a.rank_multiple, **info, **out["totals"]}
    write_json(RANKS, out)
    t = out["totals"]
    log.info("%s on the %s spectrum: kept ratio p=%.4f, %d dense matrices, %d total params, min FI retained %.4f "
             "(%.1f s)", a.method, c.method, t["kept_ratio"], t["num_dense"], t["total_params"],
             t["min_fi_retained"], time.perf_counter() - t0)


if __name__ == "__main__":
    run_stage("allocate", __doc__, KEYS, main, METHODS.help_text())
