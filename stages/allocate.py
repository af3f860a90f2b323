"""allocate: one rank per compressible matrix from the Fisher and the weights →
metrics/allocate/ranks.json (git-tracked): per matrix layer, type, shape, rank, kept params,
FI retained ρ, dense flag; totals: achieved kept ratio p, total params, equivalent uniform rank.

Methods and formulas: fisvd.allocate (methods.md §5–§7). Spectra are the FWSVD-weighted
σ_k(W diag(s))² (unweighted for `energy`), computed once per matrix.
"""
import logging
import time

from fisvd.allocate import allocate, matrix_stats, report
from fisvd.cli import run_stage
from fisvd.fisher import check_against, load_fisher
from fisvd.io import remove, write_json
from fisvd.models import dense_weights, meta_model, compressible_linears

MODEL, FISHER, OUT = "data/model", "data/fisher.safetensors", "metrics/allocate/ranks.json"
log = logging.getLogger("fisvd")


def main(params):
    a = params.allocate
    remove(OUT)
    model = meta_model(MODEL)
    infos = compressible_linears(model)
    fisher, _ = load_fisher(FISHER)
    check_against(fisher, {m.name: m.shape for m in infos}, FISHER)
    weights = dense_weights(MODEL, [m.name for m in infos])
    t0 = time.perf_counter()
    mats = [matrix_stats(m.name, m.layer, m.type, weights[m.name], fisher[m.name]) for m in infos]
    ranks, info = allocate(a.method, mats, budget=a.budget, tau=a.fi_retention, calibrate=a.calibrate,
                           score=a.score, alpha=a.alpha, r_min=a.r_min, objective=a.objective, seed=a.seed,
                           rank_multiple=a.rank_multiple)
    out = report(mats, ranks, sum(p.numel() for p in model.parameters()))
    # no wall time in ranks.json: identical inputs must give identical bytes, or DVC re-runs compress
    out["totals"] = {"method": a.method, "budget": None if a.method == "fi_retention" and not a.calibrate
                     else a.budget, "rank_multiple": a.rank_multiple, **info, **out["totals"]}
    write_json(OUT, out)
    t = out["totals"]
    log.info("%s: kept ratio p=%.4f, %d dense matrices, %d total params, min FI retained %.4f (%.1f s)",
             a.method, t["kept_ratio"], t["num_dense"], t["total_params"], t["min_fi_retained"],
             time.perf_counter() - t0)


if __name__ == "__main__":
    run_stage("allocate", __doc__, ["allocate.*"], main)
