"""Damping α of the two-sided factorisations, chosen on TRAINING data (never dev).

For the workspace pipeline's fine-tuned model and statistics (`dvc repro fisher` first), each
candidate (alpha_x, alpha_g) of `kfac` and alpha_x of `whiten` compresses the model with
`uniform_rank` at p ∈ {0.5, 0.3, 0.2}; the score is the KL of compressed vs dense logits on the
`measured` method's seeded training slice (fisvd.calibrate.joint_deltas), averaged over the budgets
(geometric mean: the budgets' KLs differ by orders of magnitude). The lowest mean wins; params.yaml's
compress.kfac / compress.whiten cite benchmarks/results/alpha_select_<task>.md.

    python benchmarks/alpha_select.py [--alphas 0.001,0.01,0.1]
"""
import argparse
import itertools

import numpy as np
import torch

from fisvd.allocate import allocate
from fisvd.calibrate import joint_deltas
from fisvd.data import training_slice
from fisvd.data import load_prepared
from fisvd.factorize import Factors
from fisvd.methods import FACTORISATIONS, KfacParams, WhitenParams
from fisvd.models import compressible_linears, load_classifier, load_tokenizer
from fisvd.params import load_params
from fisvd.paths import FISHER, MODEL, PREPARED, STATS
from fisvd.plan import matrices
from fisvd.results import recorded
from fisvd.stats import load_statistics

BUDGETS = (0.5, 0.3, 0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alphas", default="0.001,0.01,0.1")
    a = ap.parse_args()
    alphas = [float(x) for x in a.alphas.split(",")]
    params = load_params("params.yaml")
    meta, splits = load_prepared(PREPARED)
    tok = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float().eval()
    infos = compressible_linears(model)
    o = params.allocate.opts("measured")
    slice_batches = training_slice(splits["train"], o.slice, tok, params.finetune.max_length)
    feats = [None] * sum(len(b["input_ids"]) for b in slice_batches)
    W = {m.name: model.get_submodule(m.name).weight.detach() for m in infos}
    per = load_statistics({"fisher", *FACTORISATIONS["whiten"].needs, *FACTORISATIONS["kfac"].needs},
                          {m.name: m.shape for m in infos}, FISHER, STATS)
    cands = [("whiten", WhitenParams(ax)) for ax in alphas] + \
            [("kfac", KfacParams(ax, ag)) for ax, ag in itertools.product(alphas, alphas)]
    print(f"{meta['task']}: KL(dense || compressed) on {len(feats)} training examples, uniform_rank at p = "
          f"{', '.join(map(str, BUDGETS))}\n")
    print(f"{'method':7} {'alpha_x':>8} {'alpha_g':>8} " + " ".join(f"{'p=' + str(p):>10}" for p in BUDGETS)
          + f" {'geo-mean':>10}")
    best = {}
    for method, opts in cands:
        factors = Factors(method, W, per, opts)          # one decomposition per matrix, sliced per rank
        mats = matrices(infos, W, per, factors)
        models = []
        for p in BUDGETS:
            ranks, _ = allocate("uniform_rank", mats, budget=p, rank_multiple=params.allocate.rank_multiple)
            models.append({M.name: factors.at(M.name, r) for M, r in zip(mats, ranks) if r < M.rbar})
        kl = joint_deltas(model, models, slice_batches, torch.device("cpu"), metric="kl")
        geo = float(np.exp(np.mean(np.log(np.maximum(kl, 1e-12)))))
        ag = getattr(opts, "alpha_g", None)
        print(f"{method:7} {opts.alpha_x:8g} {'-' if ag is None else f'{ag:g}':>8} "
              + " ".join(f"{v:10.4g}" for v in kl) + f" {geo:10.4g}", flush=True)
        if method not in best or geo < best[method][1]:
            best[method] = (opts, geo)
    print()
    for method, (opts, geo) in best.items():
        print(f"chosen {method}: {opts} (geo-mean KL {geo:.4g})")


if __name__ == "__main__":
    task = load_params("params.yaml").data.task
    with recorded(f"benchmarks/results/alpha_select_{task}.md"):
        main()
