"""Every allocation method × kept ratio p on the pipeline's model, FWSVD factors, no recovery
fine-tuning: dev metric, collapse flag, per-type mean rank (dense = full rank), calibrated τ.

Needs the pipeline's outputs (`dvc repro fisher`): data/prepared, data/model, data/fisher.safetensors.
The weighted SVD of each matrix is computed once and truncated per rank (FWSVD at rank r is
exactly the rank-r truncation), so the sweep costs little more than its dev-set passes.

Options of each method come from params.yaml (`allocate.<method>`), except that fi_retention is
calibrated to meet p. Writes benchmarks/results/allocation_sweep_<task>.md.

    python benchmarks/allocation_sweep.py [--p 0.9 0.8 0.7 0.6]
"""
import argparse
import copy
import dataclasses

import numpy as np
import torch

from fisvd.allocate import allocate
from fisvd.data import collate, dev_features, load_prepared
from fisvd.evaluate import score_dev
from fisvd.factorize import Factors
from fisvd.lowrank import apply_lowrank
from fisvd.methods import ALLOCATORS
from fisvd.models import compressible_linears, load_classifier, load_tokenizer
from fisvd.params import load_params
from fisvd.paths import FISHER, MODEL, PREPARED, STATS
from fisvd.plan import matrices
from fisvd.results import recorded
from fisvd.stats import load_statistics

TYPES = ["q", "k", "v", "attn_out", "ffn_in", "ffn_out"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6])
    ap.add_argument("--methods", nargs="+", default=[m for m in ALLOCATORS.names() if m != "measured"],
                    help="allocation methods (default: every spectral one; `measured` needs the model and "
                         "data: benchmarks/beyond_thesis.py)")
    args = ap.parse_args()
    params = load_params("params.yaml")
    meta, splits = load_prepared(PREPARED)
    with recorded(f"benchmarks/results/allocation_sweep_{meta['task']}.md"):
        sweep(args, params, meta, splits)


def sweep(args, params, meta, splits):
    task = meta["task"]
    tok = load_tokenizer(MODEL)
    dense = load_classifier(MODEL, meta["num_labels"]).float().eval()
    devs = dev_features(task, splits, tok, params.finetune.max_length)
    infos = compressible_linears(dense)
    W = {m.name: dense.get_submodule(m.name).weight.detach() for m in infos}
    stats = load_statistics({"fisher"}, {m.name: m.shape for m in infos}, FISHER, STATS)
    factors = Factors("fwsvd", W, stats)       # one weighted SVD per matrix, truncated per rank
    mats = matrices(infos, W, stats, factors)

    def score(model):       # file order, batches of 64 (as this sweep's recorded results)
        return score_dev(model, devs, task, 64, collate(tok), torch.device("cpu"), by_length=False)[0]

    base = score(dense)
    rows = []
    head = f"| method | p | achieved p | " + " | ".join(k for k in base if k not in ("collapsed",)) + \
        " | collapsed | τ | " + " | ".join(f"{t} rank" for t in TYPES) + " |"
    print(f"dense: {base}")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    print("\n".join(lines))
    for p in args.p:
        for method in args.methods:
            a = params.allocate
            opts = a.opts(method)
            if method == "fi_retention":
                opts = dataclasses.replace(opts, calibrate=True)
            ranks, info = allocate(method, mats, budget=p, rank_multiple=a.rank_multiple, opts=opts)
            model = copy.deepcopy(dense)
            apply_lowrank(model, {M.name: factors.at(M.name, r) for M, r in zip(mats, ranks) if r < M.rbar})
            m = score(model)
            achieved = sum(M.size(r) for M, r in zip(mats, ranks)) / sum(M.dense_size for M in mats)
            per_type = {t: np.mean([min(M.m, M.n) if r >= M.rbar else r for M, r in zip(mats, ranks) if M.type == t])
                        for t in TYPES}
            tau = info.get("tau")
            vals = " | ".join(f"{100 * v:.1f}" if k != "score" else f"{v:.1f}" for k, v in m.items() if k != "collapsed")
            line = (f"| {method} | {p} | {achieved:.3f} | {vals} | {'YES' if m['collapsed'] else 'no'} | "
                    f"{'' if tau is None else f'{tau:.4f}'} | " + " | ".join(f"{per_type[t]:.0f}" for t in TYPES) + " |")
            lines.append(line)
            rows.append({"method": method, "p": p, "achieved_p": achieved, **m, "tau": tau, "mean_rank": per_type})
            print(line, flush=True)


if __name__ == "__main__":
    main()
