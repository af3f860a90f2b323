"""per_sample (exact) vs per_batch Fisher on the pipeline's model and train split.

Prints the time of each, the Spearman rank correlation of FWSVD column importances c_j = Σ_i F_ij
(all matrices pooled, and the median per matrix), and the dev metric of FWSVD compression at
p = 0.5 and 0.8 (uniform_ratio ranks, and max_fi ranks from each Fisher; at p = 0.5 MiniLM/MRPC
collapses to a constant predictor without recovery fine-tuning, so 0.8 is the informative point).
Needs `dvc repro fisher`.

    python benchmarks/fisher_modes.py [--max-samples N] [--budgets 0.5,0.8]
"""
import argparse
import copy
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from fisvd.allocate import allocate
from fisvd.data import batches, collate, dev_features, load_prepared, tokenize
from fisvd.evaluate import score_dev
from fisvd.factorize import Factors
from fisvd.fisher import fisher_per_batch, fisher_per_sample
from fisvd.lowrank import apply_lowrank
from fisvd.models import compressible_linears, load_classifier, load_tokenizer
from fisvd.params import load_params
from fisvd.plan import matrices
from fisvd.results import recorded


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--budgets", default="0.5,0.8", help="kept ratios p to compress at")
    args = ap.parse_args()
    params = load_params("params.yaml")
    meta, splits = load_prepared("data/prepared")
    tok = load_tokenizer("data/model")
    rows = splits["train"][: args.max_samples] if args.max_samples else splits["train"]
    feats = tokenize(tok, rows, params.finetune.max_length)
    devs = dev_features(meta["task"], splits, tok, params.finetune.max_length)
    cpu = torch.device("cpu")
    fishers = {}
    for mode in ("per_batch", "per_sample"):
        model = load_classifier("data/model", meta["num_labels"]).float()
        names = [m.name for m in compressible_linears(model)]
        t0 = time.perf_counter()
        if mode == "per_batch":
            s, c, _ = fisher_per_batch(model, names, list(batches(feats, params.fisher.batch_size, collate(tok))), cpu)
        else:
            model.config._attn_implementation = "eager"
            s, c, _ = fisher_per_sample(model, names, feats, collate(tok), cpu, chunk=params.fisher.batch_size)
        fishers[mode] = {n: v / c for n, v in s.items()}
        print(f"{mode}: {time.perf_counter() - t0:.1f} s over {len(feats)} examples", flush=True)
    a, b = fishers["per_batch"], fishers["per_sample"]
    ca = np.concatenate([a[n].sum(0).numpy() for n in a])
    cb = np.concatenate([b[n].sum(0).numpy() for n in a])
    per = [spearmanr(a[n].sum(0).numpy(), b[n].sum(0).numpy())[0] for n in a]
    print(f"Spearman of column importances: pooled {spearmanr(ca, cb)[0]:.4f}, per-matrix median "
          f"{np.median(per):.4f} (min {np.min(per):.4f})")
    dense = load_classifier("data/model", meta["num_labels"]).float().eval()
    infos = compressible_linears(dense)
    W = {m.name: dense.get_submodule(m.name).weight.detach() for m in infos}

    def report(label, model):       # file order, batches of 64 (as the recorded results)
        m, _ = score_dev(model, devs, meta["task"], 64, collate(tok), cpu, by_length=False)
        print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()), flush=True)
    report("dense", dense)
    by_fisher = {}                  # per Fisher: one weighted SVD per matrix, truncated per rank
    for mode, F in fishers.items():
        stats = {m.name: {"fisher": F[m.name]} for m in infos}
        factors = Factors("fwsvd", W, stats)
        by_fisher[mode] = factors, matrices(infos, W, stats, factors)
    for p in (float(b) for b in args.budgets.split(",")):
        for mode, (factors, mats) in by_fisher.items():
            for method in ("uniform_ratio", "max_fi"):
                ranks, _ = allocate(method, mats, budget=p, rank_multiple=params.allocate.rank_multiple,
                                    opts=params.allocate.opts(method))
                model = copy.deepcopy(dense)
                apply_lowrank(model, {M.name: factors.at(M.name, r) for M, r in zip(mats, ranks) if r < M.rbar})
                report(f"FWSVD p={p} {method:13} with {mode:10}", model)


if __name__ == "__main__":
    with recorded("benchmarks/results/fisher_modes.md"):
        main()
