"""Factorisation cost and quality on all 36 MiniLM-L6 matrices at p = 0.5 (uniform_ratio ranks).

Prints wall time of SVD, FWSVD and TFWSVD over all matrices, and per matrix type the mean
weighted objective Σ F (W − AB)² of TFWSVD relative to FWSVD (and of SVD, for scale).
Uses the pipeline's fine-tuned model and Fisher when present (data/model, data/fisher.safetensors;
run `dvc repro fisher` first); otherwise the pretrained MiniLM and a per-batch Fisher on 64
synthetic sentences. Goal: TFWSVD on all matrices ≤ 60 s on 2 CPU cores. ALS sweeps and tolerance
default to params.yaml's compress.tfwsvd (what `dvc repro` runs).

    python benchmarks/tfwsvd.py [--max-iters N] [--tol T] [--p 0.5]
"""
import argparse
import collections
import time
from pathlib import Path

import torch

from fisvd.factorize import factorize, weighted_error
from fisvd.fisher import fisher_per_batch, load_fisher
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, resolve_model
from fisvd.params import load_params


def model_and_fisher():
    if Path("data/model").is_dir() and Path("data/fisher.safetensors").is_file():
        model = load_classifier("data/model", 2)
        return model, load_fisher("data/fisher.safetensors")[0], "pipeline model + Fisher"
    path = resolve_model("minilm-l6")
    model, tok = load_classifier(path, 2), load_tokenizer(path)
    g = torch.Generator().manual_seed(0)
    words = ["the", "a", "model", "is", "good", "bad", "paper", "fast", "slow", "results", "show", "we"]
    text = [" ".join(words[i] for i in torch.randint(0, len(words), (12,), generator=g)) for _ in range(64)]
    enc = tok(text, padding=True, return_tensors="pt")
    labels = torch.randint(0, 2, (64,), generator=g)
    batches = [{**{k: v[i:i + 16] for k, v in enc.items()}, "labels": labels[i:i + 16]} for i in range(0, 64, 16)]
    names = [m.name for m in compressible_linears(model)]
    sums, count, _ = fisher_per_batch(model, names, batches, torch.device("cpu"))
    return model, {n: s / count for n, s in sums.items()}, "pretrained MiniLM + synthetic Fisher"


def main():
    defaults = load_params().compress.tfwsvd
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-iters", type=int, default=defaults.max_iters)
    ap.add_argument("--tol", type=float, default=defaults.tol)
    ap.add_argument("--p", type=float, default=0.5)
    args = ap.parse_args()
    model, fisher, source = model_and_fisher()
    mats = compressible_linears(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{source}; {len(mats)} matrices; p = {args.p}; {device}, {torch.get_num_threads()} threads; "
          f"TFWSVD max_iters {args.max_iters}, tol {args.tol}")
    objective = collections.defaultdict(dict)
    for method in ("svd", "fwsvd", "tfwsvd"):
        kw = {"max_iters": args.max_iters, "tol": args.tol} if method == "tfwsvd" else {}
        t0 = time.perf_counter()
        for m in mats:
            W = model.get_submodule(m.name).weight.detach().to(device)
            F = fisher[m.name].to(device)
            r = max(1, int(args.p * (m.shape[0] * m.shape[1] // sum(m.shape))))
            A, B = factorize(method, W, F, r, **kw)
            objective[method][m.name] = weighted_error(W.cpu(), F.cpu(), A.cpu(), B.cpu())
        print(f"{method:7} all matrices: {time.perf_counter() - t0:7.2f} s")
    print(f"\n{'type':9} {'TFWSVD / FWSVD objective':>26} {'SVD / FWSVD':>12}")
    for t in ("q", "k", "v", "attn_out", "ffn_in", "ffn_out"):
        names = [m.name for m in mats if m.type == t]
        rel = sum(objective["tfwsvd"][n] / objective["fwsvd"][n] for n in names) / len(names)
        rs = sum(objective["svd"][n] / objective["fwsvd"][n] for n in names) / len(names)
        print(f"{t:9} {rel:26.4f} {rs:12.4f}")
    worst = max(objective["tfwsvd"][n] / objective["fwsvd"][n] for n in objective["fwsvd"])
    print(f"\nworst matrix TFWSVD / FWSVD = {worst:.6f} (must be <= 1)")


if __name__ == "__main__":
    main()
