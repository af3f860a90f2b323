"""cells (grid): every allocation × budget cell of one factorisation on one task →
results/<factorisation>/<allocation>-p<budget>.json (allocation, budget, achieved kept ratio, total params, ranks,
metrics, score, collapsed flag, dev predictions). Runs in a grid run folder (fisvd.grid); the cells
are fisvd.grid.cells(params) of that factorisation.

One process pays the fixed costs once and memoises each finished cell under .cellcache/
(fisvd.cells: an interrupted or extended run recomputes only what is new). `fi_retention` runs
calibrated to the budget (the grid folder's params set allocate.fi_retention.calibrate: true);
`measured` measures its curves on the seeded training slice once, then solves and joint-checks
every budget.
"""
import logging
import time

from fisvd.cells import Memo, memo_context, run_cells
from fisvd.cli import run_stage
from fisvd.data import load_prepared
from fisvd.grid import cells
from fisvd.io import remove, write_json
from fisvd.paths import CELL_MEMO, FISHER, MODEL, PREPARED, RESULTS, STATS, cell_result, cells_runtime

KEYS = ["grid.budgets", "grid.allocations", "grid.limit", "allocate.rank_multiple", "allocate.budget_kind",
        "allocate.speed_table", "allocate.<method>",
        "compress.<factorisation>", "evaluate.batch_size", "finetune.max_length"]
log = logging.getLogger("fisvd")


def arguments(parser):
    parser.add_argument("--factorisation", required=True, help="the compress method of these cells")


def main(params, args):
    f = args.factorisation
    mine = cells(params, factorisation=f)
    meta, splits = load_prepared(PREPARED)
    remove(f"{RESULTS}/{f}")
    t0 = time.perf_counter()
    memo = Memo(CELL_MEMO, memo_context(params, f, (PREPARED, MODEL, FISHER, STATS)))
    records = run_cells(params, f, mine, meta, splits, memo, model_dir=MODEL, fisher_path=FISHER, stats_path=STATS)
    seconds = {}
    for c in mine:
        rec = dict(records[(c.allocation, c.budget)])
        seconds[f"{c.allocation}-p{c.budget:02d}"] = rec.pop("seconds")
        write_json(cell_result(f, c.allocation, c.budget), {"task": meta["task"], "seed": c.seed, "factorisation": f,
                                                           "allocation": c.allocation, "budget": c.budget, **rec})
    wall = time.perf_counter() - t0      # wall clock: git-tracked beside, not a DVC output
    write_json(cells_runtime(f), {"stage_s": round(wall, 1), "computed": memo.computed,
                                  "memoised": len(mine) - memo.computed, "cell_s": seconds})
    log.info("wrote %s/%s/ (%d cells, %d computed, %.0f s)", RESULTS, f, len(mine), memo.computed, wall)


if __name__ == "__main__":
    run_stage("cells", __doc__, KEYS, main, arguments=arguments)
