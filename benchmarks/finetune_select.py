"""Fine-tune settings per task, chosen on a held-out slice of the TRAINING split (never dev).

For each task: a seeded 10 % of train (at least 200 rows) is held out; the model is fine-tuned on
the rest once per candidate (learning rate, batch size) for `--epochs` epochs (the shared setup of
fisvd.train: AdamW, warm-up 10 %, linear decay, seed 42), scored on the held-out slice after every
epoch. The chosen setting is the (learning rate, batch size) with the best held-out score after the
full run (ties: the smaller rate, then the shorter run, then the smaller batch), with that many
epochs. The grid's fine-tune and recovery use the chosen batch size (recovery reads the task's
`grid.finetune` section). The per-epoch scores are reported for information only: they
come from one linear schedule over the maximum epochs, so the reading after epoch e is not a model
trained for e epochs (choosing such a reading gave RTE a 1-epoch model that collapsed on dev).
The grid then fine-tunes on the whole train split with the chosen setting.

Rows land in benchmarks/results/finetune_select.csv as each run finishes (a rerun skips the
(task, model, learning rate, batch size, epochs) runs already there; rows written before the
batch size was a candidate are batch 16 runs); the chosen settings go to
finetune_select.json and a Markdown summary beside them.

    python benchmarks/finetune_select.py [--tasks rte,stsb,cola,sst2,mrpc] [--lrs 3e-5,1e-4] [--batch-sizes 16,32]
        [--epochs N] [--apply]

`--epochs N` runs the candidates with an N-epoch schedule instead of the task's default length
(MAX_EPOCHS), e.g. when the held-out score was still rising at the last epoch; every complete run
of any length competes in the choice (column `run_epochs`: its schedule length).

--apply writes the chosen settings of the given tasks into params.yaml's `grid.finetune` (in place,
comments kept); then `python -m fisvd.grid && python -m fisvd.docs` regenerate the grid and docs/params.md.
"""
import argparse
import json
import re
import time
from pathlib import Path

import pandas as pd
import yaml

from fisvd.data import TASKS, hold_out, load_hf, load_local, subset, tokenize
from fisvd.models import load_classifier, load_tokenizer, resolve_model
from fisvd.train import epoch_scores, make_trainer
from stages.prepare import glue_source

OUT = Path("benchmarks/results")
CSV, JSON, MD = OUT / "finetune_select.csv", OUT / "finetune_select.json", OUT / "finetune_select.md"
MAX_EPOCHS = {"rte": 5, "stsb": 4, "cola": 4, "sst2": 3, "mrpc": 4, "qnli": 3, "mnli": 2, "qqp": 2, "wnli": 5}
# the grid's seeded training subsets (params.yaml grid.max_train_samples), so selection sees the grid's data
# (read as plain YAML: a task being added to the grid has no grid.finetune line yet, which params validation refuses)
MAX_TRAIN = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["grid"]["max_train_samples"]
FIXED = dict(weight_decay=0.01, warmup_ratio=0.1, seed=42)
OLD_BATCH = 16     # the batch size of every run recorded before batch size was a candidate
MAX_LENGTH = 128


def holdout_split(rows: list, share: float = 0.1, minimum: int = 200, seed: int = 0) -> tuple[list, list]:
    """(fit rows, held-out rows): a seeded random `share` (≥ `minimum`) of `rows` held out."""
    return hold_out(rows, max(minimum, round(share * len(rows))), seed)


def with_run_epochs(df: pd.DataFrame) -> pd.DataFrame:
    """`run_epochs` (each row's schedule length) filled for rows written before the column existed:
    their run was one schedule per (task, model, learning rate), as long as its last epoch."""
    df = df.copy()
    if "batch_size" not in df:
        df["batch_size"] = OLD_BATCH
    df["batch_size"] = df["batch_size"].fillna(OLD_BATCH).astype(int)
    if "run_epochs" not in df:
        df["run_epochs"] = float("nan")
    old = df.run_epochs.isna()
    df.loc[old, "run_epochs"] = df[old].groupby(["task", "model", "learning_rate", "batch_size"]).epochs.transform("max")
    df["run_epochs"] = df["run_epochs"].astype(int)
    return df


def choose(df: pd.DataFrame) -> dict:
    """Best held-out score at the end of each run (the only reading that is a complete fine-tune with
    its own schedule: an earlier epoch of a longer linear schedule is not "training e epochs", and
    choosing it gave RTE a collapsed 1-epoch model); ties → the smaller learning rate, then the
    shorter run, then the smaller batch. The per-epoch scores are reported, not chosen from."""
    if "run_epochs" not in df:
        df = df.assign(run_epochs=df.epochs.max())
    if "batch_size" not in df:
        df = df.assign(batch_size=OLD_BATCH)
    last = df[df.epochs == df.run_epochs]
    best = last.sort_values(["score", "learning_rate", "epochs", "batch_size"],
                            ascending=[False, True, True, True]).iloc[0]
    return {"learning_rate": float(best.learning_rate), "epochs": int(best.epochs),
            "batch_size": int(best.batch_size), "holdout_score": round(float(best.score), 2)}


def report(df: pd.DataFrame) -> None:
    chosen = {t: choose(g) for t, g in df.groupby("task")}
    JSON.write_text(json.dumps(chosen, indent=2, sort_keys=True) + "\n")
    lines = ["# Fine-tune settings chosen on a held-out slice of train", "",
             "Produced by `python benchmarks/finetune_select.py`. Held-out: seeded 10 % of train (≥ 200 rows); "
             "score ×100 on it after each epoch (one linear schedule over the maximum epochs; the choice reads the "
             "last epoch only). Candidates: learning rate × batch size. Fixed: "
             + ", ".join(f"{k} {v}" for k, v in FIXED.items()) + f", max_length {MAX_LENGTH}. "
             "Training subsets: " + ", ".join(f"{t} {n}" for t, n in MAX_TRAIN.items()) + ".", ""]
    for t, g in df.groupby("task"):
        piv = g.pivot_table(index=["learning_rate", "batch_size", "run_epochs"], columns="epochs", values="score")
        c = chosen[t]
        lines += [f"## {t}: chosen lr {c['learning_rate']:g}, batch {c['batch_size']}, {c['epochs']} epochs "
                  f"(held-out {c['holdout_score']:.2f})", "",
                  "| lr, batch (run of N epochs) \\ epoch | " + " | ".join(str(c) for c in piv.columns) + " |",
                  "|---|" + "---|" * len(piv.columns)]
        lines += [f"| {lr:g}, {b} ({n}) | " + " | ".join("" if pd.isna(v) else f"{v:.2f}" for v in row) + " |"
                  for (lr, b, n), row in piv.iterrows()]
        lines.append("")
    MD.write_text("\n".join(lines))


def _sci(x: float) -> str:
    """3e-05 -> '3.0e-5' (the style of params.yaml; loads back as a YAML float)."""
    return f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e+")


def apply(chosen: dict, tasks: list[str], params: Path = Path("params.yaml")) -> list[str]:
    """Rewrite each task's `grid.finetune.<task>` line of params.yaml to its chosen setting (a flow
    mapping line; comments elsewhere kept), or add the line for a task that has none (after the last
    task line of grid.finetune). Returns the tasks changed."""
    lines = params.read_text().splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if l.startswith("grid:"))
    sect = next(i for i in range(start, len(lines)) if re.match(r"\s+finetune:", lines[i]))
    pattern = re.compile(r"(\s+)(\w+): \{learning_rate: [^,]+, epochs: \d+(, batch_size: \d+)?\}")
    changed = []
    for task in tasks:
        c = chosen[task]
        entry = (f"{task}: {{learning_rate: {_sci(c['learning_rate'])}, epochs: {c['epochs']}, "
                 f"batch_size: {c.get('batch_size', OLD_BATCH)}}}  # held-out {c['holdout_score']:.2f}\n")
        rows = []                                       # the section's task lines (comment lines may sit between)
        for i in range(sect + 1, len(lines)):
            if (m := pattern.match(lines[i])):
                rows.append((i, m))
            elif rows and lines[i].strip() and not lines[i].lstrip().startswith("#"):
                break
        if not rows:
            raise SystemExit("params.yaml: grid.finetune has no task line to update or add beside")
        mine = [(i, m) for i, m in rows if m.group(2) == task]
        if mine:
            i, m = mine[0]
            if m.group(1) + entry != lines[i]:
                lines[i] = m.group(1) + entry
                changed.append(task)
        else:
            i, m = rows[-1]
            lines.insert(i + 1, m.group(1) + entry)
            changed.append(task)
    params.write_text("".join(lines))
    return changed


def glue_rows(task: str) -> dict:
    """The task's splits read as prepare reads them (stages.prepare.glue_source: the local GLUE TSVs where
    they hold the task, else nyu-mll/glue from the hub)."""
    kind, where = glue_source(task)
    return load_local(task, where)[0] if kind == "local" else load_hf(task)[0]


def run(task: str, lr: float, batch_size: int, model_name: str, epochs: int) -> list[dict]:
    rows = glue_rows(task)
    train = subset(rows["train"], MAX_TRAIN.get(task), 0)
    fit, held = holdout_split(train)
    path = resolve_model(model_name)
    tok = load_tokenizer(path)
    spec = TASKS[task]
    model = load_classifier(path, spec.num_labels, spec.labels)
    trainer = make_trainer(model, tok, task, tokenize(tok, fit, MAX_LENGTH), tokenize(tok, held, MAX_LENGTH),
                           epochs=epochs, learning_rate=lr, batch_size=batch_size, output_dir="/tmp/fisvd-select",
                           **FIXED)
    t0 = time.time()
    trainer.train()
    secs = time.time() - t0
    return [{"task": task, "model": model_name, "learning_rate": lr, "batch_size": batch_size, "run_epochs": epochs,
             "epochs": e.pop("epoch"),
             "fit_rows": len(fit), "holdout_rows": len(held), "seconds": round(secs), **e}
            for e in epoch_scores(trainer)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="rte,stsb,cola,sst2,mrpc")
    ap.add_argument("--lrs", default="3e-5,1e-4")
    ap.add_argument("--batch-sizes", default="16,32")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--epochs", type=int, help="schedule length of these runs (default: the task's MAX_EPOCHS)")
    ap.add_argument("--apply", action="store_true", help="write the chosen settings into params.yaml grid.finetune")
    a = ap.parse_args()
    tasks = a.tasks.split(",")
    if unknown := [t for t in tasks if t not in TASKS]:
        raise SystemExit(f"--tasks: {', '.join(unknown)}: not a GLUE task; finetune_select chooses for GLUE tasks "
                         f"({', '.join(TASKS)}); a custom task: set grid.finetune.<task> by hand or with your own "
                         "held-out split")
    df = with_run_epochs(pd.read_csv(CSV)) if CSV.exists() else pd.DataFrame()
    for task in tasks:
        n = a.epochs or MAX_EPOCHS[task]
        for lr, bs in ((float(x), int(b)) for b in a.batch_sizes.split(",") for x in a.lrs.split(",")):
            if len(df) and ((df.task == task) & (df.model == a.model) & (df.learning_rate == lr)
                            & (df.batch_size == bs) & (df.run_epochs == n)).any():
                continue
            new = pd.DataFrame(run(task, lr, bs, a.model, n))
            print(new[["task", "learning_rate", "batch_size", "epochs", "score", "collapsed", "seconds"]]
                  .to_string(index=False),
                  flush=True)
            df = with_run_epochs(pd.concat([df, new], ignore_index=True))
            OUT.mkdir(parents=True, exist_ok=True)
            df.to_csv(CSV, index=False)
            report(df)
    if a.apply:
        print("params.yaml grid.finetune updated:", apply(json.loads(JSON.read_text()), a.tasks.split(",")) or "none")


if __name__ == "__main__":
    main()
