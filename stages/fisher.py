"""fisher: empirical diagonal Fisher and two-sided statistics of every compressible Linear of the
fine-tuned model over the training split → data/fisher.safetensors (raw sums Σ(∂L/∂W)² + count),
data/stats.safetensors (Σx = Σ_t x_t x_tᵀ, Σg = Σ_t g_t g_tᵀ over non-padding tokens, for the
whiten / kfac factorisations; with fisher.weighted also the gradient-weighted pair of kfac_gw;
fisvd.stats), metrics/fisher/summary.json.

per_batch: F = (1/B) Σ_b g_b², g_b the gradient of mini-batch b's mean loss, from the same forward
and backward pass that collects Σx and Σg (one pass over the data).
per_sample: F = (1/N) Σ_d g_d², exact per-example gradients via torch.func vmap(grad); the
statistics then take a second, batched pass.
Eval mode (no dropout), fp32, fixed example order: deterministic on CPU.

`accelerate launch --num_processes N -m stages.fisher` (or `torchrun --nproc_per_node N -m
stages.fisher`) runs N processes, one per GPU: each takes a share of the batches (per_sample: of the
example chunks), the raw sums are all-reduced, and rank 0 alone writes the same files as one process
(equal up to float summation order; fisvd.dist).
"""
import logging
import os
import time

from tqdm.auto import tqdm

from fisvd.cli import run_stage
from fisvd.data import batches, collate, load_prepared, tokenize
from fisvd.dist import close_group, init_group, is_main, local_device, rank, world_size
from fisvd.fisher import fisher_per_sample, load_fisher, save_fisher, summary
from fisvd.io import remove, write_json
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, pick_device
from fisvd.paths import FISHER, FISHER_RUNTIME, FISHER_SUMMARY, MODEL, PREPARED, STATS
from fisvd.stats import collect_stats, save_stats

KEYS = ["fisher.mode", "fisher.batch_size", "fisher.max_samples", "fisher.weighted", "finetune.max_length"]
log = logging.getLogger("fisvd")


def main(params):
    import torch

    fp = params.fisher
    init_group()            # N processes when launched by accelerate / torchrun; else a no-op
    main_rank = is_main()   # the one process that writes
    meta, splits = load_prepared(PREPARED)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float()
    if main_rank:
        remove(FISHER, STATS, FISHER_SUMMARY, FISHER_RUNTIME)
    rows = splits["train"][: fp.max_samples] if fp.max_samples else splits["train"]
    feats = tokenize(tokenizer, rows, params.finetune.max_length)
    mats = compressible_linears(model)
    names = [m.name for m in mats]
    device = local_device(pick_device())
    train_batches = list(batches(feats, fp.batch_size, collate(tokenizer)))
    log.info("Fisher (%s) and two-sided statistics of %d matrices over %d examples on %s%s", fp.mode, len(names),
             len(feats), device, f" (rank {rank()} of {world_size()})" if world_size() > 1 else "")
    t0 = time.perf_counter()
    sums = {} if fp.mode == "per_batch" else None
    stats, stats_meta = collect_stats(model, names, train_batches, device, fisher_out=sums, weighted=fp.weighted,
                                      progress=lambda it: tqdm(it, desc="fisher+stats", unit="batch",
                                                               disable=not main_rank))
    count, n = stats_meta["batches"], stats_meta["examples"]
    runtime = {"fisher_and_stats_pass_s" if fp.mode == "per_batch" else "stats_pass_s": time.perf_counter() - t0}
    if fp.mode == "per_sample":
        model.config._attn_implementation = "eager"  # vmap has no batching rule for CPU SDPA
        sums, count, n = fisher_per_sample(model, names, feats, collate(tokenizer), device, chunk=fp.batch_size,
                                           progress=lambda it: tqdm(it, desc="fisher", unit="chunk",
                                                                    disable=not main_rank))
        runtime["per_sample_fisher_pass_s"] = time.perf_counter() - t0 - sum(runtime.values())
    log.info("passes took %.1f s", time.perf_counter() - t0)
    close_group()
    if not main_rank:
        return
    for path, save in ((FISHER, lambda p: save_fisher(p, sums, count, fp.mode, n)),
                       (STATS, lambda p: save_stats(p, stats, stats_meta))):
        save(path + ".tmp")
        os.replace(path + ".tmp", path)
    fisher, _ = load_fisher(FISHER)
    rows = [{"name": name, **row} for name, row in summary(fisher, mats).items()]   # a list: not metric columns
    write_json(FISHER_SUMMARY, {"mode": fp.mode, "count": count, "examples": n, "matrices": rows})
    write_json(FISHER_RUNTIME, {k: round(v, 1) for k, v in runtime.items()})  # wall clock: not a DVC output
    log.info("wrote %s (count %d) and %s", FISHER, count, STATS)


if __name__ == "__main__":
    run_stage("fisher", __doc__, KEYS, main)
