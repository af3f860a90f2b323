"""kfac_seq vs kfac at low budgets on the workspace's fine-tuned model (`dvc repro fisher` first).

1. `compress.kfac_seq.examples`, chosen on TRAINING data: for each candidate number of calibration
   rows, kfac_seq compresses the model at p = 0.3, 0.2, 0.1 (max_fi ranks on kfac's spectrum, the
   same for every candidate and for kfac); the score is the KL of compressed vs dense logits on 256
   seeded training rows that no candidate calibrates on (geometric mean over the budgets). The lowest
   wins unless a smaller candidate is within 2 % (cost).
2. Dev score of kfac and kfac_seq (the params.yaml examples) at p = 0.5, 0.3, 0.2, 0.1: score ×100 with
   a 95 % bootstrap interval over dev examples, margin kept over the constant predictor, and the
   paired bootstrap interval of kfac_seq − kfac (the same resamples for both).
3. Cost: kfac_seq's pass (forward passes and total) against the Fisher + statistics pass
   (fisvd.stats.collect_stats with the Fisher over the whole training split), timed in this run.

    python benchmarks/sequential.py [--examples 128,512,1024] [--skip-select]
"""
import argparse
import random
import time

import numpy as np
import torch

from fisvd.data import collate, dev_features, load_prepared, tokenize, training_slice, batches as batches_of
from fisvd.calibrate import joint_deltas
from fisvd.evaluate import score_dev
from fisvd.factorize import Factors
from fisvd.methods import FACTORISATIONS, KfacSeqParams
from fisvd.metrics import constant_score, margin_kept, scoring_of
from fisvd.models import compressible_linears, load_classifier, load_tokenizer
from fisvd.params import load_params
from fisvd.paths import FISHER, MODEL, PREPARED, STATS
from fisvd.plan import matrices, plan
from fisvd.report import boot_scores, interval, resample_indices
from fisvd.results import recorded
from fisvd.sequential import build_factors
from fisvd.stats import collect_stats, load_statistics

SELECT_BUDGETS = (0.3, 0.2, 0.1)
DEV_BUDGETS = (0.5, 0.3, 0.2, 0.1)
CPU = torch.device("cpu")


def held_out_rows(train: list[dict], candidates: list[int], n: int = 256, seed: int = 1) -> list[dict]:
    """`n` seeded training rows outside every candidate's calibration subset (fisvd.data.subset, seed 0)."""
    used = set()
    for k in candidates:
        if k < len(train):
            used |= set(random.Random(0).sample(range(len(train)), k))
    free = [i for i in range(len(train)) if i not in used]
    return [train[i] for i in sorted(random.Random(seed).sample(free, min(n, len(free))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", default="128,512,1024")
    ap.add_argument("--skip-select", action="store_true")
    a = ap.parse_args()
    params = load_params("params.yaml")
    meta, splits = load_prepared(PREPARED)
    task, L = scoring_of(meta), params.finetune.max_length
    tok = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float().eval()
    infos = compressible_linears(model)
    W = {m.name: model.get_submodule(m.name).weight.detach() for m in infos}
    stats = load_statistics({"fisher", "cov_x", "cov_g"}, {m.name: m.shape for m in infos}, FISHER, STATS)
    kopts, sopts = params.compress.opts("kfac"), params.compress.opts("kfac_seq")
    factors = Factors("kfac", W, stats, kopts)
    mats = matrices(infos, W, stats, factors)
    ranks = {}
    for p in sorted(set(SELECT_BUDGETS) | set(DEV_BUDGETS)):
        r, _ = plan("max_fi", mats, budget=p, rank_multiple=params.allocate.rank_multiple,
                    opts=params.allocate.opts("max_fi"))
        ranks[p] = {M.name: k for M, k in zip(mats, r) if k < M.rbar}
    kfac = {p: {n: factors.at(n, k) for n, k in rk.items()} for p, rk in ranks.items()}
    print(f"{meta['task']}, {len(splits['train'])} training rows; ranks: max_fi on kfac's spectrum "
          f"(alpha_x {kopts.alpha_x:g}, alpha_g {kopts.alpha_g:g}), the same for kfac and kfac_seq\n")

    def seq(p, examples, timing=None):
        opts = KfacSeqParams(sopts.alpha_x, sopts.alpha_g, examples, sopts.weighting)
        return build_factors("kfac_seq", model, stats, ranks[p], opts,
                             lambda: training_slice(splits["train"], examples, tok, L), CPU, timing=timing)

    if not a.skip_select:
        cands = [int(x) for x in a.examples.split(",")]
        held = held_out_rows(splits["train"], cands)
        feats = tokenize(tok, held, L)
        hb = list(batches_of([feats[i] for i in np.argsort([len(f["input_ids"]) for f in feats], kind="stable")],
                             32, collate(tok)))
        print(f"## 1. calibration rows, chosen on {len(held)} held-out TRAINING rows (KL of logits vs dense)\n")
        print("| factors | " + " | ".join(f"p = {p}" for p in SELECT_BUDGETS) + " | geo-mean | pass s (p = 0.2) |")
        print("|---|" + "---|" * (len(SELECT_BUDGETS) + 2))
        kl = joint_deltas(model, [kfac[p] for p in SELECT_BUDGETS], hb, CPU, metric="kl")
        print("| kfac | " + " | ".join(f"{v:.4g}" for v in kl)
              + f" | {np.exp(np.mean(np.log(kl))):.4g} | — |", flush=True)
        geo = {}
        for k in cands:
            t = {}
            cand = [seq(p, k, t if p == 0.2 else None) for p in SELECT_BUDGETS]
            kl = joint_deltas(model, cand, hb, CPU, metric="kl")
            geo[k] = float(np.exp(np.mean(np.log(kl))))
            print(f"| kfac_seq, {k} rows | " + " | ".join(f"{v:.4g}" for v in kl)
                  + f" | {geo[k]:.4g} | {t['total_s']} |", flush=True)
        best = min(geo, key=geo.get)
        chosen = min(k for k in geo if geo[k] <= 1.02 * geo[best])
        print(f"\nchosen: {chosen} rows (lowest geo-mean {best}: {geo[best]:.4g}; the smallest within 2 %)\n")

    print(f"## 2. dev score, kfac vs kfac_seq ({sopts.examples} calibration rows)\n")
    devs = dev_features(task, splits, tok, L)
    labels = {s: np.array([f["labels"] for f in fs]) for s, fs in devs.items()}
    const = constant_score(task, labels if len(labels) > 1 else next(iter(labels.values())))
    idx = resample_indices({s: len(y) for s, y in labels.items()})
    bs, coll = params.evaluate.batch_size, collate(tok)

    def scored(factor_map):
        from fisvd.cells import Swapped
        with Swapped(model, factor_map) as cm:
            m, per = score_dev(cm, devs, task, bs, coll, CPU)
        return m, boot_scores(task, [{s: p for s, (p, _) in per.items()}], labels, idx)

    dm, dboot = scored({})
    lo, hi = interval(dboot)
    print(f"dense {dm['score']:.2f} [{lo:.2f}, {hi:.2f}], constant predictor {const:.2f}\n")
    print("| p | kfac | margin kept | kfac_seq | margin kept | kfac_seq − kfac [95 % paired] | kfac_seq pass s |")
    print("|---|---|---|---|---|---|---|")
    for p in DEV_BUDGETS:
        km, kb = scored(kfac[p])
        t = {}
        sm, sb = scored(seq(p, sopts.examples, t))
        dlo, dhi = interval(sb - kb)

        def cell(m, b):
            lo, hi = interval(b)
            return f"{m['score']:.2f} [{lo:.2f}, {hi:.2f}]{' †' if m['collapsed'] else ''}"
        mk = [margin_kept(m["score"], dm["score"], const) for m in (km, sm)]
        print(f"| {p} | {cell(km, kb)} | {mk[0]:.3f} | {cell(sm, sb)} | {mk[1]:.3f} | "
              f"{sm['score'] - km['score']:+.2f} [{dlo:+.2f}, {dhi:+.2f}] | {t['total_s']} |", flush=True)

    print("\n## 3. cost\n")
    feats = tokenize(tok, splits["train"], L)
    train_batches = list(batches_of(feats, params.fisher.batch_size, collate(tok)))
    t0 = time.perf_counter()
    collect_stats(model, [m.name for m in infos], train_batches, CPU, fisher_out={})
    ref = time.perf_counter() - t0
    t = {}
    seq(0.2, sopts.examples, t)
    print(f"Fisher + statistics pass over {len(feats)} training rows: {ref:.1f} s; kfac_seq at p = 0.2 over "
          f"{sopts.examples} rows: {t['total_s']} s ({t['forward_s']} s forward passes, {t['groups']} input groups) "
          f"= {t['total_s'] / ref:.2f}x")


if __name__ == "__main__":
    task = load_params("params.yaml").data.task
    with recorded(f"benchmarks/results/sequential_{task}.md"):
        main()
