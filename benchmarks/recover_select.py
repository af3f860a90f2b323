"""Recovery settings (teacher weight and temperature, weight decay) chosen on held-out TRAINING data.

Clean held-out: the task's training split (the grid's subset) is cut as in finetune_select (a seeded
10 %, at least 200 rows, held out); a dense model is fine-tuned on the rest only, with the task's
grid.finetune settings; its statistics are collected on the rest; the default method (max_fi ranks
on kfac's spectrum, kfac factors) compresses it at p; every candidate recovers it for one epoch on
the rest (the task's learning rate and batch size, fisvd.train) and is scored on the held-out rows,
which neither the teacher nor the student ever trained on. Candidates: plain task-loss recovery and
distillation from the dense model (fisvd.distill) at weights × temperatures, each with the fine-tune's
weight decay and without. One row lands in benchmarks/results/recover_select.csv per finished run (a
rerun skips those), the summary in recover_select.md.

    python benchmarks/recover_select.py [--task mrpc] [--budget 0.1] [--seeds 42]
"""
import argparse
import copy
import time
from pathlib import Path

import pandas as pd
import torch

from fisvd.balance import balance
from fisvd.data import TASKS, batches, collate, load_local, resolve_glue_dir, subset, tokenize
from fisvd.evaluate import score_dev
from fisvd.factorize import Factors
from fisvd.lowrank import apply_lowrank
from fisvd.metrics import constant_score, margin_kept
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, resolve_model
from fisvd.params import load_params
from fisvd.plan import matrices, plan
from fisvd.stats import collect_stats, load_statistics, save_stats
from fisvd.fisher import save_fisher
from fisvd.train import make_trainer
from finetune_select import holdout_split   # the same held-out split (benchmarks/ is on sys.path)

OUT = Path("benchmarks/results")
CSV, MD = OUT / "recover_select.csv", OUT / "recover_select.md"
# (teacher weight, temperature, weight decay: None = the fine-tune's), in the order they run (a stopped run
# leaves the most informative ones): plain, the two teacher mixes, then weight decay off, then the rest
CANDIDATES = [(0.0, 1.0, None), (0.5, 2.0, None), (1.0, 2.0, None), (0.0, 1.0, 0.0), (0.5, 2.0, 0.0),
              (0.5, 1.0, None), (1.0, 4.0, None), (1.0, 2.0, 0.0)]
CPU = torch.device("cpu")


def dense_model(task, params, fit, held, tok, path, work: Path):
    """The dense model fine-tuned on the fit rows only (cached in `work`), with its statistics."""
    spec, ft = TASKS[task], params.grid.finetune[task]
    mdir = work / "model"
    if not (mdir / "config.json").exists():
        model = load_classifier(path, spec.num_labels, spec.labels)
        tr = make_trainer(model, tok, task, tokenize(tok, fit, params.finetune.max_length),
                          tokenize(tok, held, params.finetune.max_length), epochs=ft.epochs,
                          learning_rate=ft.learning_rate, batch_size=ft.batch_size,
                          weight_decay=params.finetune.weight_decay, warmup_ratio=params.finetune.warmup_ratio,
                          seed=params.finetune.seed, output_dir=str(work / "ckpt"))
        tr.train()
        tr.model.save_pretrained(mdir)
        tok.save_pretrained(mdir)
    model = load_classifier(str(mdir), spec.num_labels, spec.labels).float().eval()
    names = [m.name for m in compressible_linears(model)]
    if not (work / "stats.safetensors").exists():
        feats = tokenize(tok, fit, params.finetune.max_length)
        fisher = {}
        st, meta = collect_stats(model, names, list(batches(feats, params.fisher.batch_size, collate(tok))), CPU,
                                 fisher_out=fisher)
        save_stats(work / "stats.safetensors", st, meta)
        save_fisher(work / "fisher.safetensors", fisher, meta["batches"], "per_batch", meta["examples"])
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mrpc")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--seeds", default="42", help="recovery seeds")
    a = ap.parse_args()
    params = load_params("params.yaml")
    task, L = a.task, params.finetune.max_length
    rows, _ = load_local(task, resolve_glue_dir("."))
    train = subset(rows["train"], params.grid.max_train_samples.get(task), 0)
    fit, held = holdout_split(train)
    path = resolve_model(params.model.name)
    tok = load_tokenizer(path)
    work = Path(f"/tmp/fisvd-recover-select/{task}")
    work.mkdir(parents=True, exist_ok=True)
    dense = dense_model(task, params, fit, held, tok, path, work)

    infos = compressible_linears(dense)
    W = {m.name: dense.get_submodule(m.name).weight.detach() for m in infos}
    stats = load_statistics({"fisher", "cov_x", "cov_g"}, {m.name: m.shape for m in infos},
                            work / "fisher.safetensors", work / "stats.safetensors")
    factors = Factors("kfac", W, stats, params.compress.opts("kfac"))
    mats = matrices(infos, W, stats, factors)
    ranks, _ = plan("max_fi", mats, budget=a.budget, rank_multiple=1, opts=params.allocate.opts("max_fi"))
    low = {M.name: factors.at(M.name, r) for M, r in zip(mats, ranks) if r < M.rbar}
    held_f = {"dev": tokenize(tok, held, L)}
    fit_f = tokenize(tok, fit, L)
    coll = collate(tok)
    ft = params.grid.finetune[task]
    labels = [r["label"] for r in held]
    const = constant_score(task, labels)
    d_score = score_dev(dense, held_f, task, 64, coll, CPU)[0]["score"]
    c0 = copy.deepcopy(dense)
    apply_lowrank(c0, low)
    before = score_dev(c0, held_f, task, 64, coll, CPU)[0]["score"]
    df = pd.read_csv(CSV) if CSV.exists() else pd.DataFrame()
    for seed in (int(s) for s in a.seeds.split(",")):
        for (w, tau, decay) in CANDIDATES:
            wd = params.finetune.weight_decay if decay is None else decay
            key = dict(task=task, budget=a.budget, weight=w, temperature=tau, weight_decay=wd, seed=seed)
            if len(df) and (df[list(key)] == pd.Series(key)).all(axis=1).any():
                continue
            student = copy.deepcopy(dense)
            apply_lowrank(student, {n: balance(*AB) for n, AB in low.items()})
            tr = make_trainer(student, tok, task, fit_f, held_f["dev"], epochs=1, learning_rate=ft.learning_rate,
                              batch_size=ft.batch_size, weight_decay=wd, warmup_ratio=params.finetune.warmup_ratio,
                              seed=seed, output_dir=str(work / "rec"), teacher=dense if w > 0 else None,
                              kd_weight=w, kd_temperature=tau)
            t0 = time.time()
            tr.train()
            m = score_dev(tr.model.float().eval(), held_f, task, 64, coll, CPU)[0]
            row = {**key, "held_out_score": round(m["score"], 2), "collapsed": m["collapsed"],
                   "before_recovery": round(before, 2), "dense": round(d_score, 2), "constant": round(const, 2),
                   "margin_kept": round(margin_kept(m["score"], d_score, const) or float("nan"), 4),
                   "fit_rows": len(fit), "held_rows": len(held), "seconds": round(time.time() - t0)}
            print(row, flush=True)
            df = pd.concat([df, pd.DataFrame([row])], ignore_index=True)
            df.to_csv(CSV, index=False)
            report(df)


def report(df):
    lines = ["# Recovery settings chosen on held-out training rows", "",
             "Produced by `python benchmarks/recover_select.py`. Per task: a dense model fine-tuned on 90 % of "
             "train (the grid's settings), compressed with the default method (max_fi + kfac) at the budget, "
             "recovered one epoch on the same 90 % per candidate, scored on the held-out 10 % (never trained on by "
             "teacher or student). Teacher weight 0 = plain task-loss recovery.", ""]
    for (task, b), g in df.groupby(["task", "budget"]):
        r0 = g.iloc[0]
        lines += [f"## {task}, p = {b:g}: dense {r0.dense:.2f}, constant {r0.constant:.2f}, before recovery "
                  f"{r0.before_recovery:.2f} ({int(r0.fit_rows)} fit / {int(r0.held_rows)} held-out rows)", "",
                  "| teacher weight | temperature | weight decay | seeds | held-out score (mean) | margin kept | s |",
                  "|---|---|---|---|---|---|---|"]
        agg = g.groupby(["weight", "temperature", "weight_decay"]).agg(
            seeds=("seed", "count"), score=("held_out_score", "mean"), mk=("margin_kept", "mean"),
            s=("seconds", "mean")).reset_index().sort_values("score", ascending=False)
        for _, r in agg.iterrows():
            lines.append(f"| {r.weight:g} | {r.temperature:g} | {r.weight_decay:g} | {int(r.seeds)} | {r.score:.2f} | "
                         f"{r.mk:.3f} | {r.s:.0f} |")
        best = agg.iloc[0]
        lines += ["", f"best: weight {best.weight:g}, temperature {best.temperature:g}, weight decay "
                      f"{best.weight_decay:g}", ""]
    MD.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
