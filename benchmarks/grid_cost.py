"""Wall time of the grid by stage type, from the run-time files its stages write beside their outputs
(git-tracked, not DVC outputs): finetune (metrics/finetune/runtime.json: train_runtime), fisher
(metrics/fisher/runtime.json), cells per factorisation (metrics/runtime/cells-<f>.json: stage total,
cells computed vs memoised; a stage re-run that took its cells from the memo counts them at the
seconds they cost when computed, i.e. max(stage wall time, sum of per-cell seconds)), recovery (metrics/runtime/recover-*.json). Missing files (stages not
run yet) are listed, not guessed; a further grid's fine-tune and Fisher stages that `make grid` took from
the main grid (`fisvd.grid --share`: in the folder's dvc.lock, no run-time file) are listed as shared,
their time counted in the main grid's file. For planning, each folder still to run gets an estimate:
per missing stage, the mean of the same task's measured runs of that stage (same cells, same recovery;
`estimate`), labelled as such and never added to the measured total. Writes
benchmarks/results/grid_cost.md (a grid of `grids`: grid_cost-<name>.md).

    python benchmarks/grid_cost.py [--grid grid-<name>]
"""
import argparse
import json
from pathlib import Path

import pandas as pd

from fisvd.grid import GRID, cells, recover_cells, recover_name, run_dir, stages_of
from fisvd.params import load_params
from fisvd.results import recorded


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def estimate(done: pd.DataFrame, missing: pd.DataFrame) -> pd.Series:
    """Seconds each (task, seed) folder of `missing` would take: per row, the mean seconds of `done`'s
    rows of the same task, stage, cell count and recovery; NaN for a folder with a row no measured row
    matches."""
    keys = ["task", "stage", "cells", "name"]
    ref = done.assign(**done[keys[2:]].astype(object).fillna("")).groupby(keys).seconds.mean()
    todo = missing.assign(**missing[keys[2:]].astype(object).fillna(""))
    todo["est"] = [ref.get(tuple(k), float("nan")) for k in todo[keys].itertuples(index=False)]
    by = todo.groupby(["task", "seed"], sort=False).est
    return by.sum().where(by.apply(lambda e: e.notna().all()))


def main(grid: str):
    p = load_params(f"{grid}/params.yaml")
    rows, missing = [], []
    for t in p.grid.tasks:
        for s in p.grid.seeds:
            d = Path(run_dir(t, s, grid))
            ft, fi = read(d / "metrics/finetune/runtime.json"), read(d / "metrics/fisher/runtime.json")
            locked = stages_of(d, "dvc.lock")
            rows.append({"task": t, "seed": s, "stage": "finetune", "seconds": ft and ft.get("train_runtime"),
                         "shared": not ft and "finetune" in locked})
            rows.append({"task": t, "seed": s, "stage": "fisher+stats", "seconds": fi and sum(fi.values()),
                         "shared": not fi and "fisher" in locked})
            for f in p.grid.factorisations:
                if cells(p, t, s, f):
                    c = read(d / f"metrics/runtime/cells-{f}.json")
                    cost = c and max(c["stage_s"], sum(c["cell_s"].values()))
                    rows.append({"task": t, "seed": s, "stage": f"cells ({f})", "seconds": cost,
                                 "cells": c["computed"] + c["memoised"] if c else len(cells(p, t, s, f)),
                                 "computed": c and c["computed"]})
            for c in recover_cells(p, t, s):
                r = read(d / f"metrics/runtime/{recover_name(c)}.json")
                rows.append({"task": t, "seed": s, "stage": "recover", "seconds": r and r["train_s"],
                             "name": recover_name(c)})
    df = pd.DataFrame(rows).reindex(columns=["task", "seed", "stage", "seconds", "cells", "computed", "name",
                                             "shared"])
    df["shared"] = df.shared.fillna(False).astype(bool)
    missing, shared = df[df.seconds.isna() & ~df.shared], df[df.shared]
    done = df.dropna(subset=["seconds"]).drop(columns="shared")
    shown = done.drop(columns="name")
    by = done.assign(kind=done.stage.str.replace(r" \(.*\)", "", regex=True)).groupby("kind").seconds.sum()
    print(f"grid: {len(p.grid.tasks)} tasks x {len(p.grid.seeds)} seeds, {len(cells(p))} cells, "
          f"{len(recover_cells(p))} recovered\n")
    print(shown.to_string(index=False))
    print("\nseconds by stage type:\n" + by.round(0).to_string())
    print(f"\ntotal measured: {done.seconds.sum():.0f} s ({done.seconds.sum() / 3600:.2f} h); "
          f"without recovery {done[done.stage != 'recover'].seconds.sum() / 3600:.2f} h")
    if len(shared):
        print(f"\nshared with the main grid, timed there ({len(shared)}): "
              + ", ".join(f"{r.task}/{r.stage}" for r in shared.itertuples()))
    if len(missing):
        kinds = missing.assign(kind=missing.stage.str.replace(r" \(.*\)", "", regex=True))
        per = kinds.groupby(["task", "seed", "kind"], sort=False).size()
        print(f"\nnot run yet ({len(missing)}):")
        est = estimate(done, missing)
        for (t, s), g in per.groupby(level=[0, 1], sort=False):
            e = est.get((t, s), float("nan"))
            print(f"  {t}/s{s}: " + ", ".join(k if n == 1 else f"{k} x{n}" for (_, _, k), n in g.items())
                  + (f" (estimate ~{e / 60:.0f} min from {t}'s measured runs)" if e == e else " (no estimate)"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default=GRID, help="the grid's folder (default: grid)")
    a = ap.parse_args()
    with recorded(f"benchmarks/results/grid_cost{a.grid[len(GRID):]}.md"):
        main(a.grid)
