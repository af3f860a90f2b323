"""allocate: one rank per compressible matrix from the weights, the Fisher and (for the two-sided
factorisations) the statistics → metrics/allocate/ranks.json (git-tracked): per matrix layer, type,
shape, rank, kept params, FI retained ρ, dense flag; totals: achieved kept ratio p, total params,
equivalent uniform rank.

Methods and formulas: fisvd.allocate (methods.md §5–§7b), one spec each in fisvd.methods (listed
below); fisvd.plan builds the matrices and plans any method from what its spec needs. The FI
allocators spend on the spectrum σ_k(T)² of the factorisation `compress.method` uses (FWSVD
W diag(s), whiten W L_x, kfac L_gᵀ W L_x). A method that needs measurements (`measured`) measures, on
a seeded slice of `allocate.measured.slice` TRAINING examples (never dev), the loss increase of
truncating each matrix alone at a few ranks, fits a curve per matrix, solves the knapsack and checks
the joint model with greedy swaps; ranks.json records the predicted loss and the swap history.
Speed: with `allocate.speed_table` (a latency table, fisvd.speed; the committed CPU one is
fisvd.paths.LATENCY_TABLE, a DVC dep of this stage) every method picks only ranks the table measured
faster than dense for the matrix's shape, or dense; `allocate.budget_kind: latency` makes p the kept
share of the Linears' time by that table; ranks.json then records the table's predicted times.
"""
import logging
import os

from fisvd.cli import run_stage
from fisvd.data import calibration_rows, load_prepared
from fisvd.errors import ParamError
from fisvd.factorize import Factors
from fisvd.io import remove, write_json
from fisvd.methods import ALLOCATORS, FACTORISATIONS
from fisvd.models import compressible_linears, count_params, dense_weights, load_classifier, load_tokenizer, \
    meta_model, pick_device
from fisvd.paths import FISHER, LATENCY_TABLE, MODEL, PREPARED, RANKS, STAGES, STATS
from fisvd.plan import Probe, matrices, plan, ranks_record
from fisvd.speed import load_table
from fisvd.stats import load_statistics

KEYS = ["allocate.method", "allocate.budget", "allocate.rank_multiple", "allocate.budget_kind", "allocate.speed_table",
        "allocate.${allocate.method}", "compress.method", "compress.${compress.method}", "finetune.max_length"]
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
    skeleton = meta_model(MODEL)
    infos = compressible_linears(skeleton)
    stats = load_statistics({"fisher", *FACTORISATIONS[c.method].needs}, {m.name: m.shape for m in infos},
                            FISHER, STATS)
    weights = dense_weights(MODEL, [m.name for m in infos], skeleton)
    remove(RANKS)
    # the full decompositions stay in memory only for methods that measure truncations (spectra else)
    factors = Factors(c.method, weights, stats, c.opts(), keep="measurements" in ALLOCATORS[a.method].needs)
    mats = matrices(infos, weights, stats, factors, table, a.budget_kind)

    def probe():        # only for methods that need measurements: loads the model and the training split
        meta, splits = load_prepared(PREPARED)
        model = load_classifier(MODEL, meta["num_labels"]).float().eval()
        return Probe(model, infos, factors, calibration_rows(splits), load_tokenizer(MODEL), params.finetune.max_length,
                     pick_device())

    ranks, info = plan(a.method, mats, budget=a.budget, rank_multiple=a.rank_multiple, opts=a.opts(), probe=probe)
    out = ranks_record(mats, ranks, info, count_params(skeleton), method=a.method, spectrum_of=c.method,
                       budget=a.budget, rank_multiple=a.rank_multiple, opts=a.opts(), table=table,
                       budget_kind=a.budget_kind, speed_table=a.speed_table)
    write_json(RANKS, out)
    t = out["totals"]
    log.info("%s on the %s spectrum: kept ratio p=%.4f, %d dense matrices, %d total params, min FI retained %.4f",
             a.method, c.method, t["kept_ratio"], t["num_dense"], t["total_params"], t["min_fi_retained"])


if __name__ == "__main__":
    run_stage("allocate", __doc__, KEYS, main, ALLOCATORS.help_text())
