"""cells (grid): every allocation × budget cell of one factorisation on one task →
results/<factorisation>/<allocation>-p<budget>.json (allocation, budget, achieved kept ratio, total params, ranks,
metrics, score, collapsed flag, dev predictions). Runs in a grid run folder (fisvd.grid); the cells
are fisvd.grid.cells(params) of that factorisation.

One process pays the fixed costs once (model, statistics, one SVD per matrix: fisvd.cells); each
cell allocates, truncates and scores. Finished cells are memoised under .cellcache/ (an interrupted
or extended run recomputes only what is new). `fi_retention` runs calibrated to the budget (the grid
folder's params set allocate.fi_retention.calibrate: true); `measured` measures its curves on the
allocate stage's seeded training slice once, then solves and joint-checks every budget.
"""
import logging
import time

import numpy as np
import torch

from fisvd.calibrate import fit_curves, joint_refine, measure, rank_grid, training_slice, with_curves
from fisvd.cells import Memo, Swapped, allocation, cell_record, make_matrix, sha256_path
from fisvd.cli import run_stage
from fisvd.data import collate, dev_splits, load_prepared, tokenize
from fisvd.evaluate import predict_sorted
from fisvd.factorize import SLICEABLE, decompose, factorize, truncate, whitened
from fisvd.fisher import load_fisher
from fisvd.grid import cells
from fisvd.io import remove, write_json
from fisvd.metrics import predictions, task_metrics
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, pick_device
from fisvd.paths import CELL_MEMO, FISHER, MODEL, PREPARED, RESULTS, STATS, cell_result, cells_runtime
from fisvd.speed import load_table, speed_aware
from fisvd.stats import load_stats, matrix_stats as stats_of

KEYS = ["grid.budgets", "grid.allocations", "grid.limit", "allocate.rank_multiple", "allocate.budget_kind",
        "allocate.speed_table", "allocate.<method>",
        "compress.<factorisation>", "evaluate.batch_size", "finetune.max_length"]
# modules whose code determines a cell's numbers (the memo key hashes them; generator or CLI edits
# re-run the stage under DVC but reuse the memoised cells)
COMPUTE = ("allocate", "calibrate", "cells", "data", "evaluate", "factorize", "fisher", "lowrank", "metrics",
           "models", "stats")
log = logging.getLogger("fisvd")


def arguments(parser):
    parser.add_argument("--factorisation", required=True, help="the compress method of these cells")


def keys_of(params, factorisation: str) -> dict:
    """The params that determine a cell of this factorisation (besides allocation and budget). The
    factorisation's name itself: methods without options (svd, fwsvd) have equal option dicts."""
    a = params.allocate
    return {"factorisation": factorisation, "rank_multiple": a.rank_multiple,
            "compress": params.compress.opts(factorisation),
            "max_length": params.finetune.max_length, "batch_size": params.evaluate.batch_size,
            "budget_kind": a.budget_kind, "speed_table": a.speed_table and sha256_path(a.speed_table)}


def main(params, args):
    f = args.factorisation
    mine = cells(params, factorisation=f)
    meta, splits = load_prepared(PREPARED)
    task = meta["task"]
    remove(f"{RESULTS}/{f}")
    t0 = time.perf_counter()
    memo = Memo(CELL_MEMO, {"inputs": {p: sha256_path(p) for p in (PREPARED, MODEL, FISHER, STATS)},
                            "code": code_hash(), **keys_of(params, f)})
    todo = [c for c in mine if memo.get(allocation=c.allocation, budget=c.budget,
                                         opts=params.allocate.opts(c.allocation)) is None]
    log.info("%s on %s: %d cells, %d memoised", f, task, len(mine), len(mine) - len(todo))
    if todo:
        compute(params, f, task, meta, splits, todo, memo)
    seconds = {}
    for c in mine:
        rec = memo.get(allocation=c.allocation, budget=c.budget, opts=params.allocate.opts(c.allocation))
        seconds[f"{c.allocation}-p{c.budget:02d}"] = rec.pop("seconds")
        write_json(cell_result(f, c.allocation, c.budget), {"task": task, "seed": c.seed, "factorisation": f,
                                                           "allocation": c.allocation, "budget": c.budget, **rec})
    wall = time.perf_counter() - t0      # wall clock: git-tracked beside, not a DVC output
    write_json(cells_runtime(f), {"stage_s": round(wall, 1), "computed": len(todo), "memoised": len(mine) - len(todo),
                                  "cell_s": seconds})
    log.info("wrote %s/%s/ (%d cells, %.0f s)", RESULTS, f, len(mine), wall)


def code_hash() -> dict:
    """Hashes of the code a cell's result depends on (this script and the modules it imports)."""
    from pathlib import Path
    import fisvd.cells
    src = Path(fisvd.cells.__file__).parent
    here = Path(__file__)
    files = [here] + [src / f"{m}.py" for m in COMPUTE]
    return {p.name: sha256_path(p) for p in files}


def compute(params, f, task, meta, splits, todo, memo):
    device = pick_device()
    tok = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float().eval().to(device)
    total = sum(p.numel() for p in model.parameters())
    infos = compressible_linears(model)
    fisher, _ = load_fisher(FISHER)
    stats, smeta = load_stats(STATS)
    opts = params.compress.opts(f)
    t0 = time.perf_counter()
    full, mats, per = {}, [], {}
    for m in infos:
        W = model.get_submodule(m.name).weight.detach().cpu()
        per[m.name] = {"fisher": fisher[m.name], **stats_of(stats, smeta, m.name)}
        if f in SLICEABLE:
            A, B, g = decompose(f, W, per[m.name], opts=opts)
            full[m.name] = (A, B)
        else:
            g = torch.linalg.svdvals(whitened(f, W, per[m.name], opts=opts)) ** 2
        mats.append(make_matrix(m.name, m.layer, m.type, W, fisher[m.name], g))
    if params.allocate.speed_table is not None:     # faster-than-dense ranks only (as the allocate stage)
        mats = speed_aware(mats, load_table(params.allocate.speed_table), params.allocate.budget_kind)
    log.info("%s: decomposed %d matrices in %.1f s", f, len(infos), time.perf_counter() - t0)
    built = {}

    def factor_fn(name, r):
        if name in full:
            return truncate(full[name], r)
        if (name, r) not in built:     # tfwsvd: factors depend on the rank
            W = model.get_submodule(name).weight.detach().cpu()
            built[(name, r)] = factorize(f, W, per[name], r, opts=opts)
        return built[(name, r)]

    devs = {s: tokenize(tok, splits[s], params.finetune.max_length) for s in dev_splits(task)}
    labels = {s: np.array([x["labels"] for x in feats]) for s, feats in devs.items()}
    curves = slice_batches = None
    for c in todo:
        t1 = time.perf_counter()
        a_opts = params.allocate.opts(c.allocation)
        if c.allocation == "measured":
            if curves is None:
                slice_batches = training_slice(splits["train"], a_opts.slice, tok, params.finetune.max_length)
                points = measure(model, infos, factor_fn, slice_batches,
                                 {M.name: rank_grid(M, a_opts.points) for M in mats}, device, metric=a_opts.metric)
                curves = with_curves(mats, fit_curves(mats, points))
                log.info("measured curves in %.1f s", time.perf_counter() - t1)
            ranks, info = allocation("measured", curves, c.budget, params.allocate.rank_multiple, a_opts)
            ranks, hist = joint_refine(model, curves, ranks, factor_fn, slice_batches, c.budget / 100, a_opts.swaps,
                                       rank_multiple=params.allocate.rank_multiple, metric=a_opts.metric,
                                       device=device)
            info["joint_delta"] = hist[0]["delta"] if len(hist) == 1 else min(h["delta"] for h in hist)
        else:
            ranks, info = allocation(c.allocation, mats, c.budget, params.allocate.rank_multiple, a_opts)
        rec = cell_record(mats, ranks, total, info)
        factors = {M.name: factor_fn(M.name, r) for M, r in zip(mats, ranks) if r < M.rbar}
        with Swapped(model, factors) as cm:
            per_split = {s: (predictions(task, predict_sorted(cm, feats, params.evaluate.batch_size, collate(tok),
                                                               device)), labels[s]) for s, feats in devs.items()}
        m = task_metrics(task, per_split)
        rec.update(score=round(m["score"], 4), collapsed=m["collapsed"],
                   metrics={k: round(v, 6) for k, v in m.items() if k not in ("score", "collapsed")},
                   predictions={s: [round(float(v), 5) for v in p] for s, (p, _) in per_split.items()},
                   seconds=round(time.perf_counter() - t1, 2))
        memo.put(rec, allocation=c.allocation, budget=c.budget, opts=a_opts)
        log.info("%-14s p=%2d%%: kept %.4f score %6.2f%s (%.1f s)", c.allocation, c.budget, rec["kept_ratio"],
                 rec["score"], " COLLAPSED" if rec["collapsed"] else "", rec["seconds"])


if __name__ == "__main__":
    run_stage("cells", __doc__, KEYS, main, arguments=arguments)
