"""Cost of the loss-calibrated allocator's measurements (`measured`: fisvd.calibrate.measure), for
MiniLM-L6 (36 matrices) and a 72-matrix BERT-base-sized model (all-mpnet-base-v2, `make mpnet`).

MiniLM: the workspace pipeline's fine-tuned model and statistics (`dvc repro fisher` first), the
allocate stage's settings (allocate.measured: slice, points; compress.method's factors), every
matrix measured: the real wall time of the curves.
72-matrix model: timing only (weights and head as loaded, plain SVD factors: the cost of a
measurement does not depend on the factorisation or on the fine-tune), on the same training slice;
the q and ffn_in matrices of the first and last block are measured at every grid rank (measurement
cost is a forward of blocks l..L-1, nearly independent of which matrix is swapped), and the total for all
72 × points measurements is extrapolated from the per-measurement time of each block position
(a measurement of block l runs blocks l..L-1 from cached outputs, so its cost is linear in L - l;
the fit through the two measured positions gives every block's cost).

    python benchmarks/measured_cost.py [--mpnet DIR]
"""
import argparse
import time

import torch

from fisvd.calibrate import measure, rank_grid
from fisvd.data import training_slice
from fisvd.data import load_prepared
from fisvd.factorize import Factors, factorize
from fisvd.methods import FACTORISATIONS
from fisvd.models import compressible_linears, load_classifier, load_tokenizer
from fisvd.params import load_params
from fisvd.paths import FISHER, MODEL, PREPARED, STATS
from fisvd.plan import make_matrix, matrices
from fisvd.results import recorded
from fisvd.stats import load_statistics

CPU = torch.device("cpu")


def minilm(params, splits):
    o, c = params.allocate.opts("measured"), params.compress
    meta, _ = load_prepared(PREPARED)
    tok = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float().eval()
    infos = compressible_linears(model)
    per = load_statistics({"fisher", *FACTORISATIONS[c.method].needs}, {m.name: m.shape for m in infos},
                          FISHER, STATS)
    W = {m.name: model.get_submodule(m.name).weight.detach() for m in infos}
    factors = Factors(c.method, W, per, c.opts())
    mats = matrices(infos, W, per, factors)      # decomposes every matrix (its spectrum): not timed below
    sl = training_slice(splits["train"], o.slice, tok, params.finetune.max_length)
    grid = {M.name: rank_grid(M, o.points) for M in mats}
    t0 = time.perf_counter()
    measure(model, infos, factors, sl, grid, CPU, metric=o.metric)
    secs = time.perf_counter() - t0
    n = sum(map(len, grid.values()))
    print(f"MiniLM-L6 ({len(infos)} matrices, {c.method} factors): {n} measurements on {o.slice} training "
          f"examples in {secs:.0f} s ({secs / 60:.1f} min; target <= 5 min)")
    return secs


def big(params, splits, path):
    from transformers import AutoModelForSequenceClassification
    o = params.allocate.opts("measured")
    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).float().eval()
    infos = compressible_linears(model)
    L = 1 + max(m.layer for m in infos)
    sl = training_slice(splits["train"], o.slice, tok, params.finetune.max_length)
    W = {m.name: model.get_submodule(m.name).weight.detach() for m in infos}
    mats = {m.name: make_matrix(m.name, m.layer, m.type, W[m.name], torch.ones_like(W[m.name])) for m in infos}
    per_block = {}
    for layer in (0, L - 1):
        sub = [m for m in infos if m.layer == layer and m.type in ("q", "ffn_in")]   # a small and a large one
        grid = {m.name: rank_grid(mats[m.name], o.points) for m in sub}
        t0 = time.perf_counter()
        measure(model, sub, lambda n, r: factorize("svd", W[n], None, r), sl, grid, CPU, metric=o.metric)
        per_block[layer] = (time.perf_counter() - t0) / sum(map(len, grid.values()))
    a, b = per_block[0], per_block[L - 1]
    per_layer = [b + (a - b) * (L - 1 - l) / (L - 1) for l in range(L)]      # linear in blocks run
    n_per_layer = len(infos) // L * o.points
    total = sum(t * n_per_layer for t in per_layer)
    print(f"{path.rstrip('/').rsplit('/', 1)[-1]} ({len(infos)} matrices, {L} blocks, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params): per measurement {a:.2f} s (block 0) .. "
          f"{b:.2f} s (block {L - 1}); {len(infos) * o.points} measurements on {o.slice} training examples: "
          f"~{total:.0f} s ({total / 60:.0f} min) extrapolated")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mpnet", default=None, help="directory of all-mpnet-base-v2 (python -m fisvd.mpnet)")
    a = ap.parse_args()
    params = load_params("params.yaml")
    _, splits = load_prepared(PREPARED)
    print(f"torch threads {torch.get_num_threads()}; allocate.measured: {params.allocate.opts('measured')}\n")
    minilm(params, splits)
    if a.mpnet:
        big(params, splits, a.mpnet)


if __name__ == "__main__":
    with recorded("benchmarks/results/measured_cost.md"):
        main()
