"""report (grid): every expected grid result (fisvd.grid enumerates them from the grid folder's
params.yaml; nothing is globbed) → metrics/report/ (git-tracked; a grid of `grids`: metrics/report-<name>/): results.csv (one tidy row per cell and per task's dense
model), tables.md (overview and per-budget tables, before and after recovery; † collapsed, ‡ beats
every other row of its column beyond resampling noise), vs_default.csv (every method against the
default, paired), headline.md (the headline table: the recovered methods' margin kept with seed and
dev intervals, before and after recovery), standing.md (the default on each task alone: its rank, the
best other method, the paired difference), summary.json (DVC metrics: best method per
budget, its average and margin kept, the FWSVD baselines), pareto.json (DVC plot) and
png/pareto_<task>.png. The contents: fisvd.tables. Runs in the grid folder (`dvc repro grid/dvc.yaml`).

While a grid is still running: `cd grid && PYTHONPATH=.. python -m stages.report --partial` writes the same files
from the results present so far to metrics/report-partial/ (outside DVC; tables.md opens with the
count of cells present and the tasks missing); for a grid of `grids`, `cd grid-<name>` writes
metrics/report-<name>-partial/. A result whose stage `dvc status` finds out of date (an older
configuration's, or upstream of it) or that a running `dvc repro` holds is left out and counted
(fisvd.grid.out_of_date).
"""
import logging
from pathlib import Path

from fisvd.cli import run_stage
from fisvd.grid import REPORT_KEYS, report_dir
from fisvd.io import write_json
from fisvd.tables import KD, against, collect, headline, markdown, pareto, rows_from_results, standing, summarise

PARTIAL = "-partial"        # report_dir(grid) + this: the --partial report's folder
log = logging.getLogger("fisvd")


def arguments(parser):
    parser.add_argument("--partial", action="store_true",
                        help=f"report the results present so far (to {report_dir()}{PARTIAL}, outside DVC)")


def main(params, args):
    g = params.grid
    dense, cells_, recovered, counts = collect(params, Path(".."), args.partial)   # counts: [read, expected,
                                                                                   # out of date, being computed]
    if not dense:
        raise SystemExit("report --partial: no task has its dense result yet")
    per_seed, default = {}, (params.allocate.method, params.compress.method)
    df, boots = rows_from_results(dense, cells_, recovered, params.recover.epochs, params.model.name, per_seed)
    vs = against(df, boots, per_seed, [t for t in g.tasks if t in dense], default)
    name = report_dir(g.folder) + (PARTIAL if args.partial else "")
    out = Path("..") / name
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    vs.to_csv(out / "vs_default.csv", index=False)
    (out / "tables.md").write_text(markdown(df, boots, params.model.name, g.tasks, g.budgets, name,
                                            partial=tuple(counts) if args.partial else None, grid=g.folder,
                                            vs=vs, default=default, headline=tuple(g.headline)))
    ran = set(zip(vs.allocation, vs.factorisation))
    methods = [m for c in params.recover.cells if (m := (c.allocation, c.factorisation + (KD if c.teacher else ""))) in ran] \
        or sorted(ran)                                        # a grid without recovery: every method
    (out / "headline.md").write_text(headline(df, boots, vs, [t for t in g.tasks if t in dense], methods, default,
                                              tuple(g.headline)))
    (out / "standing.md").write_text(standing(df, per_seed, [t for t in g.tasks if t in dense], default,
                                              tuple(g.headline)))
    write_json(out / "summary.json", summarise(df, list(dense), vs))
    write_json(out / "pareto.json", pareto(df, out))
    log.info("report: %d rows over %d tasks", len(df), len(dense))


if __name__ == "__main__":
    run_stage("report", __doc__, REPORT_KEYS, main, arguments=arguments)
