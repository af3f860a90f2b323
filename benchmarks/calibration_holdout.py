"""Does a truly held-out calibration slice change the `measured` allocator's results? (issue 22)

Two fine-tuned models of the workspace task, the workspace's fine-tune settings for both:
- seen: the workspace model (`dvc repro fisher` first), fine-tuned on every training row; the
  measured allocator's slice is drawn from those rows (data.calibration_rows: 0, the default);
- held out: fine-tuned here on the training rows minus `--rows` seeded ones (prepare's split with
  data.calibration_rows = rows: fisvd.data.hold_out, seed data.seed + 2), its statistics collected on
  the rest, the slice drawn from the held-out rows (fisvd.data.calibration_rows).
Each model is compressed at p = 0.5 and 0.3 by `measured` and by the default `max_fi`, both on kfac's
spectrum with kfac factors. The fine-tunes differ, so the comparison is the measured − max_fi
difference within each model (paired bootstrap interval over dev examples), seen vs held out.

    python benchmarks/calibration_holdout.py [--rows 256]
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fisvd.data import batches, calibration_rows, collate, dev_features, hold_out, load_prepared, tokenize
from fisvd.cells import Swapped
from fisvd.evaluate import score_dev
from fisvd.factorize import Factors
from fisvd.fisher import save_fisher
from fisvd.metrics import constant_score, scoring_of
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, resolve_model
from fisvd.params import load_params
from fisvd.paths import FISHER, MODEL, PREPARED, STATS
from fisvd.plan import Probe, matrices, plan
from fisvd.report import boot_scores, interval, resample_indices
from fisvd.results import recorded
from fisvd.stats import collect_stats, load_statistics, save_stats
from fisvd.train import make_trainer

BUDGETS = (0.5, 0.3)
CPU = torch.device("cpu")


def held_out_model(params, meta, splits, tok, rows: int, work: Path):
    """(model, statistics paths, calibration rows): fine-tuned on train minus the held-out rows."""
    train, calib = hold_out(splits["train"], rows, params.data.seed + 2)
    ft = params.finetune
    mdir = work / "model"
    if not (mdir / "config.json").exists():
        model = load_classifier(resolve_model(params.model.name), meta["num_labels"])
        tr = make_trainer(model, tok, meta["task"], tokenize(tok, train, ft.max_length),
                          tokenize(tok, splits["dev"], ft.max_length), epochs=ft.epochs, learning_rate=ft.learning_rate,
                          batch_size=ft.batch_size, weight_decay=ft.weight_decay, warmup_ratio=ft.warmup_ratio,
                          seed=ft.seed, output_dir=str(work / "ckpt"))
        tr.train()
        tr.model.save_pretrained(mdir)
    model = load_classifier(str(mdir), meta["num_labels"]).float().eval()
    if not (work / "stats.safetensors").exists():
        fisher = {}
        feats = tokenize(tok, train, ft.max_length)
        st, smeta = collect_stats(model, [m.name for m in compressible_linears(model)],
                                  list(batches(feats, params.fisher.batch_size, collate(tok))), CPU, fisher_out=fisher)
        save_stats(work / "stats.safetensors", st, smeta)
        save_fisher(work / "fisher.safetensors", fisher, smeta["batches"], "per_batch", smeta["examples"])
    return model, (work / "fisher.safetensors", work / "stats.safetensors"), calibration_rows(
        {"train": train, "calibration": calib})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=256)
    a = ap.parse_args()
    params = load_params("params.yaml")
    meta, splits = load_prepared(PREPARED)
    task, L = scoring_of(meta), params.finetune.max_length
    tok = load_tokenizer(MODEL)
    devs = dev_features(task, splits, tok, L)
    labels = {s: np.array([f["labels"] for f in fs]) for s, fs in devs.items()}
    const = constant_score(task, labels if len(labels) > 1 else next(iter(labels.values())))
    idx = resample_indices({s: len(y) for s, y in labels.items()})
    a_opts = params.allocate
    print(f"{meta['task']}: measured allocator ({a_opts.opts('measured')}) vs max_fi, kfac spectrum and factors; "
          f"constant predictor {const:.2f}\n")
    print("| model | slice rows | dense | p | max_fi | measured | measured − max_fi [95 % paired] | measure s |")
    print("|---|---|---|---|---|---|---|---|")
    seen = load_classifier(MODEL, meta["num_labels"]).float().eval()
    t0 = time.perf_counter()
    held = held_out_model(params, meta, splits, tok, a.rows, Path(f"/tmp/fisvd-calibration/{meta['task']}"))
    print(f"(held-out model fine-tuned and its statistics collected in {time.perf_counter() - t0:.0f} s)\n")
    for label, (model, (fp, sp), rows) in (("seen (all train)", (seen, (FISHER, STATS), splits["train"])),
                                          (f"held out ({a.rows} rows)", held)):
        infos = compressible_linears(model)
        W = {m.name: model.get_submodule(m.name).weight.detach() for m in infos}
        stats = load_statistics({"fisher", "cov_x", "cov_g"}, {m.name: m.shape for m in infos}, fp, sp)
        factors = Factors("kfac", W, stats, params.compress.opts("kfac"))
        mats = matrices(infos, W, stats, factors)
        probe = Probe(model, infos, factors, rows, tok, L, CPU)

        def scored(low):
            with Swapped(model, low) as cm:
                m, per = score_dev(cm, devs, task, params.evaluate.batch_size, collate(tok), CPU)
            return m["score"], boot_scores(task, [{s: p for s, (p, _) in per.items()}], labels, idx)
        dense, _ = scored({})
        for p in BUDGETS:
            out = {}
            for method in ("max_fi", "measured"):
                t1 = time.perf_counter()
                ranks, _ = plan(method, mats, budget=p, rank_multiple=a_opts.rank_multiple, opts=a_opts.opts(method),
                                probe=lambda: probe)
                secs = time.perf_counter() - t1
                out[method] = scored({M.name: factors.at(M.name, r) for M, r in zip(mats, ranks) if r < M.rbar})
            (ms, mb), (qs, qb) = out["max_fi"], out["measured"]
            lo, hi = interval(qb - mb)
            print(f"| {label} | {min(len(rows), a_opts.opts('measured').slice)} | {dense:.2f} | {p} | "
                  f"{ms:.2f} | {qs:.2f} | {qs - ms:+.2f} [{lo:+.2f}, {hi:+.2f}] | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    task = load_params("params.yaml").data.task
    with recorded(f"benchmarks/results/calibration_holdout_{task}.md"):
        main()
