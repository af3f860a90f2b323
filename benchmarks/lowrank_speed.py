"""Dense vs low-rank latency of MiniLM-L6 at batch 32 × length 128, for kept ratios p = 0.75, 0.5, 0.25.

Ranks come from the pipeline's own allocator (`uniform_ratio`, exactly r = ⌊p·r̄⌋), once with
`rank_multiple` 1 (any rank) and once with 16 (AVX-512 holds 16 fp32 lanes; pass --multiples to
change). FLOPs depend only on the ranks, so the factor values (plain SVD) do not matter here.
Everything is measured in this one run: for each (p, k), both whole models and the dense and
low-rank Linears of every type are timed in the same interleaved rounds (medians), so a change in
machine load hits all of them alike:
1. whole model: speed-up divided by the linear-FLOPs reduction and by the model's matmul-FLOPs
   reduction (Linears + attention QKᵀ, AV), and vs the Amdahl bound = the speed-up if the
   compressed Linears ran exactly FLOPs-proportionally while everything else in the forward
   (GELU, LayerNorm, softmax, attention, embeddings) kept its dense time (dense model ms − dense
   Linears ms). The rest does not shrink, so the whole model cannot reach 0.8 of the linear-FLOPs
   reduction at small p; the bound shows how much of what is reachable is reached;
2. compressible Linears alone (all 36 on [batch·length, in] inputs, in model order): speed-up vs the
   linear-FLOPs reduction Σ mn / Σ r(m+n), in total and per matrix type. Goal: ratio ≥ 0.8.
CPU in fp32; on CUDA (when present) also in bf16. --compile adds both whole models under
torch.compile (inductor with frozen weights: prepacked GEMMs, fused bias/GELU/LayerNorm) to the same
rounds; compiling costs ~25 s for the dense model and ~8 s per low-rank one on 2 cores.

    python benchmarks/lowrank_speed.py [--rounds 15] [--threads N] [--multiples 1,16] [--compile]
"""
import argparse
import collections
import copy

import torch

from fisvd.allocate import allocate
from fisvd.evaluate import forward_fn, interleaved_ms, model_inputs
from fisvd.factorize import svd
from fisvd.lowrank import LowRankLinear, apply_lowrank
from fisvd.models import compressible_linears, load_classifier, resolve_model
from fisvd.plan import make_matrix
from fisvd.results import recorded

TYPES = ("q", "k", "v", "attn_out", "ffn_in", "ffn_out")


def allocated_ranks(model, p, multiple):
    """{matrix name: rank} from uniform_ratio at kept ratio p; dense-kept matrices are left out."""
    infos = compressible_linears(model)
    stats = []
    for m in infos:
        W = model.get_submodule(m.name).weight.detach()
        stats.append(make_matrix(m.name, m.layer, m.type, W, torch.ones_like(W)))
    ranks, _ = allocate("uniform_ratio", stats, budget=p, rank_multiple=multiple)
    return {M.name: r for M, r in zip(stats, ranks) if r < M.rbar}


def linear_fns(dense_model, low_model, tokens, device, dtype):
    """Callables "dense <type>" / "low <type>" running copies of that type's Linears of all layers
    (from the dense and the low-rank model) on [tokens, in] inputs, and per type
    [dense MACs/token, low-rank MACs/token]."""
    g = torch.Generator().manual_seed(0)
    inputs, fns, macs = {}, {}, collections.defaultdict(lambda: [0, 0])
    by_type = collections.defaultdict(lambda: ([], []))
    for info in compressible_linears(dense_model):
        m, n = info.shape
        if n not in inputs:
            inputs[n] = torch.randn(tokens, n, generator=g).to(device, dtype)
        lin = copy.deepcopy(dense_model.get_submodule(info.name)).to(device, dtype)
        low = copy.deepcopy(low_model.get_submodule(info.name)).to(device, dtype)
        macs[info.type][0] += m * n
        macs[info.type][1] += low.rank * (m + n) if isinstance(low, LowRankLinear) else m * n
        by_type[info.type][0].append((lin, inputs[n]))
        by_type[info.type][1].append((low, inputs[n]))

    def chain(mods):
        def fn():
            for f, x in mods:
                f(x)  # output freed at once, as in a forward pass (keeping it would add page faults)
        return fn
    for t, (dense, low) in by_type.items():
        fns[f"dense {t}"], fns[f"low {t}"] = chain(dense), chain(low)
    return fns, macs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15, help="timed interleaved rounds (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--multiples", default="1,16", help="rank_multiple values to compare")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd whole models")
    args = ap.parse_args()
    if args.compile:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True  # weights become constants: prepacked GEMMs, fused epilogues
    if args.threads:
        torch.set_num_threads(args.threads)
    multiples = [int(k) for k in args.multiples.split(",")]
    setups = [(torch.device("cpu"), torch.float32)]
    if torch.cuda.is_available():
        setups.append((torch.device("cuda"), torch.bfloat16))
    path = resolve_model("minilm-l6")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (args.batch, args.length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    batch = {k: v for k, v in batch.items() if k in model_inputs(load_classifier(path, 2))}
    tokens = args.batch * args.length
    print(f"MiniLM-L6, batch {args.batch} x length {args.length}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {args.rounds} interleaved rounds")
    print(f"{'':19} | {'whole model':^60} | {'compressible Linears alone':^42}")
    print(f"{'device':11} {'p':>4} {'k':>2} | {'ms':>15} {'speedup':>7} {'/lin-FLOPs':>10} {'/model-FLOPs':>12} "
          f"{'bound':>5} {'of bound':>8} | {'ms':>15} {'speedup':>7} {'FLOPs red.':>10} {'ratio':>6}")
    per_type, compiled = [], []
    for device, dtype in setups:
        dense = load_classifier(path, 2).eval()
        dense_c = torch.compile(dense) if args.compile else None  # compiled once, at its first call
        cfg = dense.config
        attn_macs = cfg.num_hidden_layers * 2 * args.length * cfg.hidden_size  # QKᵀ and AV per token
        for p in (0.75, 0.5, 0.25):
            for k in multiples:
                ranks = allocated_ranks(dense, p, k)
                low = load_classifier(path, 2).eval()
                apply_lowrank(low, {n: svd(low.get_submodule(n).weight.detach(), r) for n, r in ranks.items()})
                fns, macs = linear_fns(dense, low, tokens, device, dtype)
                fns["dense model"], fns["low model"] = forward_fn(dense, batch, device), forward_fn(low, batch, device)
                if args.compile:
                    fns["dense compiled"] = forward_fn(dense_c, batch, device)
                    fns["low compiled"] = forward_fn(torch.compile(low), batch, device)
                ms = interleaved_ms(fns, args.rounds, device)
                comp = (ms.pop("dense compiled"), ms.pop("low compiled")) if args.compile else None
                model_ms = {"dense": ms.pop("dense model"), "low": ms.pop("low model")}
                lin = {t: (ms[f"dense {t}"], ms[f"low {t}"], *macs[t]) for t in macs}
                td, tl = sum(v[0] for v in lin.values()), sum(v[1] for v in lin.values())
                md, ml = sum(v[2] for v in lin.values()), sum(v[3] for v in lin.values())
                lin_red, model_red = md / ml, (md + attn_macs) / (ml + attn_macs)
                sp, spl = model_ms["dense"] / model_ms["low"], td / tl
                fixed = max(model_ms["dense"] - td, 0.0)
                bound = model_ms["dense"] / (fixed + td / lin_red)
                name = f"{device.type} {str(dtype)[6:]}"
                print(f"{name:11} {p:4.2f} {k:2d} | {model_ms['dense']:6.1f} -> {model_ms['low']:6.1f} {sp:7.2f} "
                      f"{sp / lin_red:10.2f} {sp / model_red:12.2f} {bound:5.2f} {sp / bound:8.2f} | "
                      f"{td:6.1f} -> {tl:6.1f} {spl:7.2f} {lin_red:10.2f} {spl / lin_red:6.2f}", flush=True)
                per_type.append((name, p, k, {t: (v[0] / v[1]) / (v[2] / v[3]) for t, v in lin.items()}))
                if comp:
                    compiled.append((name, p, k, sp, *comp, lin_red))
    print("\nspeed-up / FLOPs reduction per matrix type (Linears alone)")
    print(f"{'device':11} {'p':>4} {'k':>2} | " + " ".join(f"{t:>8}" for t in TYPES))
    for name, p, k, ratios in per_type:
        print(f"{name:11} {p:4.2f} {k:2d} | " + " ".join(f"{ratios.get(t, float('nan')):8.2f}" for t in TYPES))
    if compiled:
        print("\nwhole model under torch.compile (same rounds as the eager rows above)")
        print(f"{'device':11} {'p':>4} {'k':>2} | {'eager speedup':>13} | {'compiled ms':>15} {'speedup':>7} {'/lin-FLOPs':>10}")
        for name, p, k, sp, cd, cl, lin_red in compiled:
            print(f"{name:11} {p:4.2f} {k:2d} | {sp:13.2f} | {cd:6.1f} -> {cl:6.1f} {cd / cl:7.2f} {cd / cl / lin_red:10.2f}")


if __name__ == "__main__":
    with recorded(f"benchmarks/results/lowrank_speed_{'cuda' if torch.cuda.is_available() else 'cpu'}.md"):
        main()
