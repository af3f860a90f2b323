"""The thesis's M3 rows (`max_fi + fwsvd`, `max_fi + tfwsvd`) before and after the FWSVD spectrum's
÷ m fix (methods.md §6): the old grid report (git, `--old`, the last report of the biased spectrum)
against the re-run grid, seed 42 (the old grid's only fine-tune seed) and the mean over every seed
the new grid ran (read from the run folders' cell results, so it is current before the report is).
A task whose fine-tune settings changed in between (`grid.finetune`, batch size chosen on held-out
training rows) is marked: its old-vs-new difference mixes both changes.
Missing new results are listed, not guessed; run it after `make grid` (a run folder not yet re-run
still holds the old grid's cells). Writes benchmarks/results/m3_old_new.md.

    python benchmarks/m3_old_new.py [--old 7a6daca]
"""
import argparse
import io
import json
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from fisvd.grid import Cell, cell_result, run_dir
from fisvd.metrics import margin_kept
from fisvd.params import load_params
from fisvd.results import recorded

OLD = "7a6daca"          # grid report: all five tasks (the biased spectrum's last full grid)
ROWS = [("max_fi", "fwsvd"), ("max_fi", "tfwsvd")]


def git_show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout


def new_cell(p, task: str, alloc: str, fact: str, budget: int, seed: int = 42) -> dict | None:
    """The re-run grid's result of one cell (None while it has not landed)."""
    path = Path(cell_result(Cell(task, seed, fact, alloc, budget, p.grid.folder)))
    return json.loads(path.read_text()) if path.is_file() else None


def main(old_rev: str):
    p = load_params("params.yaml")
    old = pd.read_csv(io.StringIO(git_show(old_rev, "metrics/report/results.csv")))
    old_ft = yaml.safe_load(git_show(old_rev, "params.yaml"))["grid"]["finetune"]
    tasks = [t for t in p.grid.tasks if t in set(old.task)]
    was = lambda t: (old_ft[t]["learning_rate"], old_ft[t]["epochs"], old_ft[t].get("batch_size", 16))  # noqa: E731
    now = lambda t: (p.grid.finetune[t].learning_rate, p.grid.finetune[t].epochs, p.grid.finetune[t].batch_size)  # noqa: E731
    changed = [t for t in tasks if was(t) != now(t)]
    print(f"old: metrics/report/results.csv at {old_rev} (one fine-tune seed, 42); new: the cell results "
          f"of grid/<task>/s<seed>, seed 42 and the mean over the seeds {p.grid.seeds} that have landed")
    print("fine-tune settings changed since (old-vs-new mixes both changes): " + (", ".join(changed) or "none"))
    missing, rows = [], []
    for alloc, fact in ROWS:
        for b in sorted({int(round(x * 100)) for x in old[(old.allocation == alloc) & (old.factorisation == fact)].budget},
                        reverse=True):
            for t in tasks:
                o = old[(old.task == t) & (old.allocation == alloc) & (old.factorisation == fact)
                        & (old.budget == b / 100) & (old.recovery_epochs == 0)]
                n42 = new_cell(p, t, alloc, fact, b)
                landed = [r["score"] for s in p.grid.seeds if (r := new_cell(p, t, alloc, fact, b, s))]
                if n42 is None:
                    missing.append(f"{t}/{fact}/{alloc}-p{b}")
                rows.append({"method": f"{alloc} + {fact}", "p": b / 100, "task": t,
                             "old": float(o.score.iloc[0]) if len(o) else None,
                             "old_collapsed": bool(o.collapsed.iloc[0]) if len(o) else None,
                             "new_s42": n42["score"] if n42 else None,
                             "new_s42_collapsed": n42["collapsed"] if n42 else None,
                             "new_mean": sum(landed) / len(landed) if landed else None,
                             "new_seeds": len(landed) or None})
    df = pd.DataFrame(rows)
    seeds = lambda n: "" if pd.isna(n) else f" ({int(n)} seed{'s' if n > 1 else ''})"  # noqa: E731
    fmt = lambda v, c=False: "–" if v is None or pd.isna(v) else f"{v:.1f}" + (" †" if c else "")  # noqa: E731
    for (m, b), g in df.groupby(["method", "p"], sort=False):
        print(f"\n## {m}, p = {b:g}, no recovery\n")
        print("| task | old (biased spectrum) | new, seed 42 | new, mean over seeds |")
        print("|---|---|---|---|")
        for r in g.itertuples():
            print(f"| {r.task}{' *' if r.task in changed else ''} | {fmt(r.old, r.old_collapsed)} | "
                  f"{fmt(r.new_s42, r.new_s42_collapsed)} | {fmt(r.new_mean)}"
                  f"{seeds(r.new_seeds)} |")
        if g.old.notna().all() and g.new_s42.notna().all():
            od = old[(old.allocation == "dense") & old.task.isin(tasks)]
            d_old, c_old = od.score.mean(), od.constant_score.mean()
            dense42 = [json.loads((Path(run_dir(t, 42, p.grid.folder)) / "results/dense.json").read_text())
                       for t in tasks]
            d_new = sum(d["score"] for d in dense42) / len(tasks)
            mk = [margin_kept(g.old.mean(), d_old, c_old), margin_kept(g.new_s42.mean(), d_new, c_old)]
            mk = ["–" if v is None else f"{v:.2f}" for v in mk]
            print(f"| avg | {g.old.mean():.1f} (margin kept {mk[0]}) | {g.new_s42.mean():.1f} "
                  f"(margin kept {mk[1]}) | |")
    print("\n* fine-tune settings changed since the old grid.")
    if missing:
        print(f"\nnot run yet ({len(missing)}): " + ", ".join(missing))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default=OLD, help=f"git revision of the old grid report (default {OLD})")
    a = ap.parse_args()
    with recorded("benchmarks/results/m3_old_new.md"):
        main(a.old)
