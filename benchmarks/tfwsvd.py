"""Factorisation cost and quality on all 36 MiniLM-L6 matrices at p = 0.5 (uniform_ratio ranks).

Prints wall time of SVD, FWSVD and TFWSVD over all matrices, and per matrix type the mean
weighted objective Σ F (W − AB)² of TFWSVD relative to FWSVD (and of SVD, for scale).
Uses the pipeline's fine-tuned model and Fisher when present (data/model, data/fisher.safetensors;
run `dvc repro fisher` first); otherwise the pretrained MiniLM and a per-batch Fisher on 64
synthetic sentences. The classifier head's labels come from the fine-tuned model's config.json
(the head it was trained with); for the pretrained fallback, from data/prepared/meta.json when present
(`dvc repro prepare`), else from the pretrained model's config. Goal: TFWSVD on all matrices ≤ 60 s
on 2 CPU cores. ALS sweeps and tolerance default to params.yaml's compress.tfwsvd (what `dvc repro` runs).

    python benchmarks/tfwsvd.py [--max-iters N] [--tol T] [--p 0.5]
"""
import argparse
import collections
import json
import time
from pathlib import Path

import torch

from fisvd.factorize import break_even
from fisvd.factorize import factorize, weighted_error
from fisvd.fisher import fisher_per_batch, load_fisher
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, resolve_model
from fisvd.params import load_params
from fisvd.results import recorded


MODEL_DIR, FISHER_FILE, META_FILE = "data/model", "data/fisher.safetensors", "data/prepared/meta.json"


def label_spec(model_dir: str, meta_file: str | None = None) -> tuple[int, tuple[str, ...]]:
    """(num_labels, label names) for the classifier head: from `meta_file` (the prepared data's
    meta.json: num_labels, label_names) when given and present, else from `model_dir`'s config
    (num_labels, id2label); num_labels 1 = regression, no names."""
    if meta_file is not None and Path(meta_file).is_file():
        meta = json.loads(Path(meta_file).read_text())
        n = int(meta["num_labels"])
        names = () if meta.get("is_regression") or n == 1 else tuple(meta.get("label_names") or ())
        return n, names
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_dir)
    n = config.num_labels
    if getattr(config, "problem_type", None) == "regression" or n == 1:
        return 1, ()
    return n, tuple(config.id2label[i] for i in range(n))


def synthetic_labels(num_labels: int, n: int, g: torch.Generator) -> torch.Tensor:
    if num_labels == 1:
        return torch.rand(n, generator=g) * 5  # regression target (STS-B scale)
    return torch.randint(0, num_labels, (n,), generator=g)


def model_and_fisher():
    if Path(MODEL_DIR).is_dir() and Path(FISHER_FILE).is_file():
        num_labels, names = label_spec(MODEL_DIR)  # the head the pipeline model was fine-tuned with
        model = load_classifier(MODEL_DIR, num_labels, names)
        return model, load_fisher(FISHER_FILE)[0], f"pipeline model ({num_labels} labels) + Fisher"
    path = resolve_model("minilm-l6")
    num_labels, names = label_spec(path, META_FILE)
    model, tok = load_classifier(path, num_labels, names), load_tokenizer(path)
    g = torch.Generator().manual_seed(0)
    words = ["the", "a", "model", "is", "good", "bad", "paper", "fast", "slow", "results", "show", "we"]
    text = [" ".join(words[i] for i in torch.randint(0, len(words), (12,), generator=g)) for _ in range(64)]
    enc = tok(text, padding=True, return_tensors="pt")
    labels = synthetic_labels(num_labels, 64, g)
    batches = [{**{k: v[i:i + 16] for k, v in enc.items()}, "labels": labels[i:i + 16]} for i in range(0, 64, 16)]
    names = [m.name for m in compressible_linears(model)]
    sums, count, _ = fisher_per_batch(model, names, batches, torch.device("cpu"))
    return model, {n: s / count for n, s in sums.items()}, f"pretrained MiniLM + synthetic Fisher ({num_labels} labels)"


def main():
    defaults = load_params().compress.opts("tfwsvd")
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
            r = max(1, int(args.p * break_even(*m.shape)))
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
    with recorded("benchmarks/results/tfwsvd.md"):
        main()
