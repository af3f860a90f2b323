"""allocate: one rank per compressible matrix from the Fisher and the weights →
metrics/allocate/ranks.json (git-tracked): per matrix layer, type, shape, rank, kept params,
FI retained ρ, dense flag; totals: achieved kept ratio p, total params, equivalent uniform rank.

Methods and formulas: fisvd.allocate (methods.md §5–§7), one registry entry each (listed below).
Spectra are the FWSVD-weighted σ_k(W diag(s))² (unweighted for `energy`), computed once per matrix.
"""
import logging
import time

from fisvd.allocate import METHODS, allocate, matrix_stats, report
from fisvd.cli import run_stage
from fisvd.fisher import check_against, load_fisher
from fisvd.io import remove, write_json
from fisvd.models import dense_weights, meta_model, compressible_linears
from fisvd.paths import FISHER, MODEL, RANKS

KEYS = ["allocate.method", "allocate.budget", "allocate.rank_multiple"] + [f"allocate.{m}" for m in METHODS.with_params()]
log = logging.getLogger("fisvd")


def main(params):
    a = params.allocate
    model = meta_model(MODEL)
    infos = compressible_linears(model)
    fisher, _ = load_fisher(FISHER)
    check_against(fisher, {m.name: m.shape for m in infos}, FISHER)
    weights = dense_weights(MODEL, [m.name for m in infos])
    remove(RANKS)
    t0 = time.perf_counter()
    mats = [matrix_stats(m.name, m.layer, m.type, weights[m.name], fisher[m.name]) for m in infos]
    budgeted = not (a.method == "fi_retention" and not a.opts().calibrate)
    ranks, info = allocate(a.method, mats, budget=a.budget if budgeted else None, rank_multiple=a.rank_multiple,
                           opts=a.opts())
    out = report(mats, ranks, sum(p.numel() for p in model.parameters()))
    # no wall time in ranks.json: identical inputs must give identical bytes, or DVC re-runs compress
    out["totals"] = {"method": a.method, "budget": a.budget if budgeted else None,
                     "rank_multiple": a.rank_multiple, **info, **out["totals"]}
    write_json(RANKS, out)
    t = out["totals"]
    log.info("%s: kept ratio p=%.4f, %d dense matrices, %d total params, min FI retained %.4f (%.1f s)",
             a.method, t["kept_ratio"], t["num_dense"], t["total_params"], t["min_fi_retained"],
             time.perf_counter() - t0)


if __name__ == "__main__":
    run_stage("allocate", __doc__, KEYS, main, METHODS.help_text())
