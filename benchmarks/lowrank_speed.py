"""Dense vs low-rank latency of MiniLM-L6 at batch 32 × length 128, for kept ratios p = 0.75, 0.5, 0.25.

Two views, each measured in this one run (median of `--repeats` timed passes after warm-up):
1. whole model: measured speed-up vs the model's FLOPs reduction (all Linears + attention matmuls);
2. compressible Linears alone (each dense Linear vs its LowRankLinear on a [32·128, in] input,
   summed): measured speed-up vs the linear-FLOPs reduction Σ mn / Σ r(m+n). Goal: ratio ≥ 0.8.
Ranks: uniform_ratio r = ⌊p·r̄⌋ (the FLOPs do not depend on the values, only on the ranks).

    python benchmarks/lowrank_speed.py [--repeats 10] [--threads N]
"""
import argparse
import math
import statistics
import time

import torch

from fisvd.evaluate import latency_ms
from fisvd.factorize import svd
from fisvd.lowrank import LowRankLinear, apply_lowrank
from fisvd.models import compressible_linears, load_classifier, resolve_model


def timed(fn, repeats, device):
    for _ in range(2):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


@torch.inference_mode()
def linear_only(dense_model, ranks, tokens, repeats, device):
    """Sum over matrices of dense vs factorised forward time on a [tokens, in] input."""
    td = tl = 0.0
    for info in compressible_linears(dense_model):
        lin = dense_model.get_submodule(info.name).to(device)
        x = torch.randn(tokens, info.shape[1], device=device)
        td += timed(lambda: lin(x), repeats, device)
        if info.name in ranks:
            A, B = svd(lin.weight.detach().cpu(), ranks[info.name])
            low = LowRankLinear.from_factors(A, B, lin.bias.detach().cpu()).to(device)
            tl += timed(lambda: low(x), repeats, device)
        else:
            tl += timed(lambda: lin(x), repeats, device)
    return td, tl


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    path = resolve_model("minilm-l6")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (args.batch, args.length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    tokens = args.batch * args.length
    print(f"MiniLM-L6, batch {args.batch} x length {args.length}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'device':6} {'p':>5} {'model ms':>17} {'speedup':>8} {'FLOPs red.':>10} {'ratio':>6} | "
          f"{'linears ms':>17} {'speedup':>8} {'FLOPs red.':>10} {'ratio':>6}")
    for device in devices:
        dense = load_classifier(path, 2).eval()
        mats = compressible_linears(dense)
        cfg = dense.config
        attn_macs = cfg.num_hidden_layers * 2 * args.length * cfg.hidden_size  # QKᵀ and AV per token
        lin_dense = sum(m.shape[0] * m.shape[1] for m in mats)
        t_dense = latency_ms(dense, batch, args.repeats, device)
        for p in (0.75, 0.5, 0.25):
            ranks = {m.name: math.floor(p * (m.shape[0] * m.shape[1]) // (m.shape[0] + m.shape[1]))
                     for m in mats}
            ranks = {n: max(1, r) for n, r in ranks.items()}
            lin_low = sum(r * sum(m.shape) for m, r in zip(mats, ranks.values()))
            low = load_classifier(path, 2).eval()
            apply_lowrank(low, {m.name: svd(low.get_submodule(m.name).weight.detach(), ranks[m.name]) for m in mats})
            t_low = latency_ms(low, batch, args.repeats, device)
            model_red = (lin_dense + attn_macs) / (lin_low + attn_macs)
            td, tl = linear_only(load_classifier(path, 2).eval(), ranks, tokens, args.repeats, device)
            lin_red = lin_dense / lin_low
            sp, spl = t_dense / t_low, td / tl
            print(f"{device.type:6} {p:5.2f} {t_dense:7.1f} -> {t_low:7.1f} {sp:8.2f} {model_red:10.2f} {sp / model_red:6.2f} | "
                  f"{td:7.1f} -> {tl:7.1f} {spl:8.2f} {lin_red:10.2f} {spl / lin_red:6.2f}")


if __name__ == "__main__":
    main()
