"""fisher: empirical diagonal Fisher of every compressible Linear of the fine-tuned model over the
training split → data/fisher.safetensors (raw sums Σ(∂L/∂W)² + count), metrics/fisher/summary.json.

per_batch: F = (1/B) Σ_b g_b², g_b the gradient of mini-batch b's mean loss (cheap).
per_sample: F = (1/N) Σ_d g_d², exact per-example gradients via torch.func vmap(grad).
Eval mode (no dropout), fp32, fixed example order: deterministic on CPU.
"""
import logging
import os

from tqdm.auto import tqdm

from fisvd.cli import run_stage
from fisvd.data import batches, collate, load_prepared, tokenize
from fisvd.fisher import fisher_per_batch, fisher_per_sample, load_fisher, save_fisher, summary
from fisvd.io import remove, write_json
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, pick_device
from fisvd.paths import FISHER, FISHER_SUMMARY, MODEL, PREPARED

KEYS = ["fisher.mode", "fisher.batch_size", "fisher.max_samples", "finetune.max_length"]
log = logging.getLogger("fisvd")


def main(params):
    import torch

    fp = params.fisher
    meta, splits = load_prepared(PREPARED)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float()
    remove(FISHER, FISHER_SUMMARY)
    if fp.mode == "per_sample":
        model.config._attn_implementation = "eager"  # vmap has no batching rule for CPU SDPA
    rows = splits["train"][: fp.max_samples] if fp.max_samples else splits["train"]
    feats = tokenize(tokenizer, rows, params.finetune.max_length)
    mats = compressible_linears(model)
    names = [m.name for m in mats]
    device = pick_device()
    log.info("Fisher (%s) of %d matrices over %d examples on %s", fp.mode, len(names), len(feats), device)
    if fp.mode == "per_batch":
        sums, count, n = fisher_per_batch(model, names, list(batches(feats, fp.batch_size, collate(tokenizer))),
                                          device, progress=lambda it: tqdm(it, desc="fisher", unit="batch"))
    else:
        sums, count, n = fisher_per_sample(model, names, feats, collate(tokenizer), device, chunk=fp.batch_size,
                                           progress=lambda it: tqdm(it, desc="fisher", unit="chunk"))
    tmp = FISHER + ".tmp"
    save_fisher(tmp, sums, count, fp.mode, n)
    os.replace(tmp, FISHER)
    fisher, _ = load_fisher(FISHER)
    write_json(FISHER_SUMMARY, {"mode": fp.mode, "count": count, "examples": n, "matrices": summary(fisher, mats)})
    log.info("wrote %s (count %d)", FISHER, count)


if __name__ == "__main__":
    run_stage("fisher", __doc__, KEYS, main)
