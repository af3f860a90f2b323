"""kfac_seq and kfac_gw vs kfac at low budgets on the workspace's fine-tuned model (`dvc repro fisher` first).

1. (`--select`) `compress.kfac_seq.examples`, chosen on TRAINING data: for each candidate number of
   calibration rows, kfac_seq compresses the model at p = 0.3, 0.2, 0.1 (max_fi ranks on kfac's
   spectrum, the same for every candidate and for kfac); the score is the KL of compressed vs dense
   logits on 256 seeded training rows that no candidate calibrates on (geometric mean over the
   budgets); each candidate's weighting too. The lowest wins unless a smaller candidate is within 2 %
   (cost). Written to benchmarks/results/sequential_select_<task>.md.
2. Dev score of every variant at p = 0.5, 0.3, 0.2, 0.1, the same ranks for all (max_fi on kfac's
   spectrum, so the difference is the fit alone): kfac, kfac_gw (gradient-weighted statistics, from
   one more statistics pass in this run), kfac_seq with token and with gradient weighting (the
   params.yaml examples): score ×100 with a 95 % bootstrap interval over dev examples, margin kept
   over the constant predictor, and the paired bootstrap interval of each variant − kfac (the same
   resamples for all).
1b. (`--select-block`) block output matching (`compress.kfac_seq.block_steps`, `block_lr`), chosen on
   the same held-out TRAINING rows and rule as 1 (KL geo-mean over p = 0.3, 0.2, 0.1; the fewest passes
   within 2 % of the lowest), each candidate on top of the params.yaml examples and weighting, 0 passes
   (the closed form alone) included. Written to benchmarks/results/sequential_block_select_<task>.md.
1c. (`--select-spectrum`) kfac_seq's allocation: max_fi ranks on kfac's spectrum of the dense model
   (one kfac_seq pass) against ranks recomputed sequentially (two passes: the first, at kfac's ranks,
   records each Linear's sequential spectrum s_k(T)², T = L_gᵀ W C L⁻ᵀ of its fit on the compressed
   prefix (fisvd.sequential), every Linear included; max_fi re-allocates the budget on those spectra;
   the second pass fits at the new ranks). Chosen on the same held-out TRAINING rows and rule as 1
   (KL geo-mean over p = 0.3, 0.2, 0.1; the one-pass allocation unless the two-pass one is more than 2 %
   lower). Written to benchmarks/results/sequential_spectrum_select_<task>.md.
3. Cost: each variant's extra pass against the Fisher + statistics pass (fisvd.stats.collect_stats with
   the Fisher over the whole training split), timed in this run.
1d. (`--replay`) the driver's passes three ways: chained (the default: each group's passes start at its
   block, from the block's recorded inputs, which come from the previous block's outputs), block replay
   with each block's inputs recorded by a pass from the embeddings (`chain=False`), and every pass from
   the embeddings (`replay=False`, the method as first written): kfac_seq at p = 0.2 with the params.yaml
   options, interleaved rounds, each time and the ratios of the medians, and whether all give the same
   factors to the byte. Written to benchmarks/results/sequential_replay_<task>.md.

    python benchmarks/sequential.py [--select --examples 128,512,1024]
    python benchmarks/sequential.py --select-block [--block-steps 1,2 --block-lrs 3e-5,1e-4]
    python benchmarks/sequential.py --select-spectrum
    python benchmarks/sequential.py --replay [--rounds 2]
"""
import argparse
import random
import sys
import time

import numpy as np
import torch

from fisvd.data import collate, dev_features, load_prepared, tokenize, training_slice, batches as batches_of
from fisvd.calibrate import joint_deltas
from fisvd.cells import Swapped
from fisvd.evaluate import score_dev
from fisvd.factorize import Factors
from fisvd.methods import FACTORISATIONS, KfacSeqParams
from fisvd.metrics import constant_score, margin_kept, scoring_of
from fisvd.models import compressible_linears, load_classifier, load_tokenizer
from fisvd.params import load_params
from fisvd.paths import FISHER, MODEL, PREPARED, STATS
from fisvd.plan import matrices, plan
from fisvd.report import boot_scores, interval, resample_indices
from fisvd.results import recorded
from fisvd.sequential import build_factors
from fisvd.stats import collect_stats, load_statistics, matrix_stats

SELECT_BUDGETS = (0.3, 0.2, 0.1)
DEV_BUDGETS = (0.5, 0.3, 0.2, 0.1)
CPU = torch.device("cpu")


def held_out_rows(train: list[dict], candidates: list[int], n: int = 256, seed: int = 1) -> list[dict]:
    """`n` seeded training rows outside every candidate's calibration subset (fisvd.data.subset, seed 0)."""
    used = set()
    for k in candidates:
        if k < len(train):
            used |= set(random.Random(0).sample(range(len(train)), k))
    free = [i for i in range(len(train)) if i not in used]
    return [train[i] for i in sorted(random.Random(seed).sample(free, min(n, len(free))))]


def select_spectrum(model, infos, W, stats, mats, ranks, seq, held, params, sopts):
    """Section 1c (module docstring)."""
    import fisvd.sequential as fseq
    from fisvd.plan import make_matrix
    from fisvd.stats import damped_cholesky
    if sopts.block_steps:       # the first pass would train the dense Linears' (W, I) stand-ins too
        raise SystemExit("--select-spectrum compares allocations for the closed form: set compress.kfac_seq.block_steps: 0")
    held_rows, hb = held
    name_of = {W[m.name].data_ptr(): m.name for m in infos}
    fit = fseq.seq_kfac

    def recording(spectra: dict, dense: set):
        """seq_kfac at full rank: the whole spectrum s_k = ‖L_gᵀ A_k‖ (L_gᵀ A = U S), then the rank-r
        truncation of the same SVD (= seq_kfac at r); a Linear the allocation keeps dense stays W."""
        def rec(Wm, cov_g, cross, cov_xt, r, alpha_x, alpha_g):
            name = name_of[Wm.data_ptr()]
            A, B = fit(Wm, cov_g, cross, cov_xt, min(Wm.shape), alpha_x, alpha_g)
            Lg = damped_cholesky(cov_g.to(A.device), alpha_g).double()
            spectra[name] = ((Lg.T @ A.double()).norm(dim=0) ** 2).cpu()
            if name in dense:
                return Wm.clone(), torch.eye(Wm.shape[1], dtype=Wm.dtype, device=Wm.device)
            return A[:, :r].contiguous(), B[:r].contiguous()
        return rec

    full = {m.name: min(W[m.name].shape) for m in infos}
    print(f"## 1c. allocation for kfac_seq, chosen on {len(held_rows)} held-out TRAINING rows (KL of logits vs "
          f"dense); kfac_seq with {sopts.examples} rows, {sopts.weighting} weighting\n")
    print("| p | ranks | KL | Linears whose rank moved | total rank moved | pass s |")
    print("|---|---|---|---|---|---|")
    kl, cost = {"one pass": [], "two passes": []}, {"one pass": 0.0, "two passes": 0.0}
    for p in SELECT_BUDGETS:
        t1, t2, t3 = {}, {}, {}
        base = seq(p, sopts.examples, t1)
        spectra, seq_ranks = {}, ranks[p]
        fseq.seq_kfac = recording(spectra, {n for n in full if n not in ranks[p]})
        try:
            ranks[p] = {n: ranks[p].get(n, r) for n, r in full.items()}   # every Linear: its spectrum too
            seq(p, sopts.examples, t2)
        finally:
            fseq.seq_kfac, ranks[p] = fit, seq_ranks
        smats = [make_matrix(m.name, m.layer, m.type, W[m.name], stats[m.name]["fisher"], spectra[m.name]) for m in infos]
        r2, _ = plan("max_fi", smats, budget=p, rank_multiple=params.allocate.rank_multiple,
                     opts=params.allocate.opts("max_fi"))
        new = {M.name: k for M, k in zip(smats, r2) if k < M.rbar}
        ranks[p] = new
        try:
            second = seq(p, sopts.examples, t3)
        finally:
            ranks[p] = seq_ranks
        k1, k2 = joint_deltas(model, [base, second], hb, CPU, metric="kl")
        old_r = {M.name: seq_ranks.get(M.name, M.rbar) for M in mats}
        new_r = {M.name: new.get(M.name, M.rbar) for M in smats}
        moved = [n for n in old_r if old_r[n] != new_r[n]]
        kl["one pass"].append(k1), kl["two passes"].append(k2)
        cost["one pass"] += t1["total_s"]
        cost["two passes"] += t2["total_s"] + t3["total_s"]
        print(f"| {p} | kfac's spectrum (one pass) | {k1:.4g} | — | — | {t1['total_s']} |")
        print(f"| {p} | sequential spectrum (two passes) | {k2:.4g} | {len(moved)} of {len(old_r)} | "
              f"{sum(abs(old_r[n] - new_r[n]) for n in moved)} of {sum(old_r.values())} | {t2['total_s']} + {t3['total_s']} |",
              flush=True)
    geo = {k: float(np.exp(np.mean(np.log(v)))) for k, v in kl.items()}
    chosen = "two passes" if geo["two passes"] < geo["one pass"] / 1.02 else "one pass"
    print(f"\nKL geo-mean over p = {', '.join(map(str, SELECT_BUDGETS))}: one pass {geo['one pass']:.4g}, two passes "
          f"{geo['two passes']:.4g}; kfac_seq seconds over the three budgets: {cost['one pass']:.1f} vs "
          f"{cost['two passes']:.1f}.\nchosen: {chosen} (the two-pass allocation only if its KL is more than 2 % lower)")


MODES = {"chained": dict(), "block replay": dict(chain=False), "from the embeddings": dict(replay=False)}


def replay_cost(model, stats, ranks, sopts, batches, rounds):
    """Section 1d (module docstring)."""
    from fisvd.sequential import sequential_factors
    cov_g = {n: stats[n]["cov_g"] for n in ranks}
    print(f"## 1d. chained block inputs vs block replay vs passes from the embeddings: kfac_seq at p = 0.2, "
          f"{len(ranks)} Linears factorised, {sum(len(b['input_ids']) for b in batches)} calibration rows, "
          f"{sopts.weighting} weighting\n")
    print("| round | passes | total s | of which forward passes s |\n|---|---|---|---|")
    times, first = {m: [] for m in MODES}, {}
    for k in range(rounds):
        for mode, kw in MODES.items():
            t = {}
            out = sequential_factors(model, ranks, cov_g, batches, sopts, CPU, timing=t, **kw)
            first.setdefault(mode, out)
            times[mode].append(t["total_s"])
            print(f"| {k + 1} | {mode} | {t['total_s']} | {t['forward_s']} |", flush=True)
    a = first["chained"]
    same = all(set(a) == set(b) and all(torch.equal(a[n][i], b[n][i]) for n in a for i in (0, 1)) for b in first.values())
    med = {m: float(np.median(v)) for m, v in times.items()}
    print("\nmedians: " + ", ".join(f"{m} {v:.1f} s" for m, v in med.items())
          + f"; chained is {med['block replay'] / med['chained']:.2f}x faster than block replay and "
          f"{med['from the embeddings'] / med['chained']:.2f}x faster than passes from the embeddings; factors "
          f"{'identical to the byte' if same else 'DIFFERENT'} in all three ({len(a)} Linears, first round of each)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", default="128,512,1024")
    ap.add_argument("--select", action="store_true", help="section 1 only")
    ap.add_argument("--select-block", action="store_true", help="section 1b only")
    ap.add_argument("--select-spectrum", action="store_true", help="section 1c only")
    ap.add_argument("--replay", action="store_true", help="section 1d only")
    ap.add_argument("--rounds", type=int, default=2, help="1d: interleaved rounds of each mode")
    ap.add_argument("--block-steps", default="1,2", help="1b: Adam passes per block to try (0 always runs)")
    ap.add_argument("--block-lrs", default="3e-5,1e-4", help="1b: Adam learning rates to try")
    a = ap.parse_args()
    params = load_params("params.yaml")
    meta, splits = load_prepared(PREPARED)
    task, L = scoring_of(meta), params.finetune.max_length
    tok = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float().eval()
    infos = compressible_linears(model)
    W = {m.name: model.get_submodule(m.name).weight.detach() for m in infos}
    stats = load_statistics({"fisher", "cov_x", "cov_g"}, {m.name: m.shape for m in infos}, FISHER, STATS)
    kopts, sopts = params.compress.opts("kfac"), params.compress.opts("kfac_seq")
    factors = Factors("kfac", W, stats, kopts)
    mats = matrices(infos, W, stats, factors)
    ranks = {}
    for p in sorted(set(SELECT_BUDGETS) | set(DEV_BUDGETS)):
        r, _ = plan("max_fi", mats, budget=p, rank_multiple=params.allocate.rank_multiple,
                    opts=params.allocate.opts("max_fi"))
        ranks[p] = {M.name: k for M, k in zip(mats, r) if k < M.rbar}
    kfac = {p: {n: factors.at(n, k) for n, k in rk.items()} for p, rk in ranks.items()}
    print(f"{meta['task']}, {len(splits['train'])} training rows; ranks: max_fi on kfac's spectrum "
          f"(alpha_x {kopts.alpha_x:g}, alpha_g {kopts.alpha_g:g}), the same for kfac and kfac_seq\n")

    def seq(p, examples, timing=None, weighting=sopts.weighting, steps=sopts.block_steps, lr=sopts.block_lr):
        opts = KfacSeqParams(sopts.alpha_x, sopts.alpha_g, examples, weighting, steps, lr)
        return build_factors("kfac_seq", model, stats, ranks[p], opts,
                             lambda: training_slice(splits["train"], examples, tok, L), CPU, timing=timing)

    def held_batches(cands):
        held = held_out_rows(splits["train"], cands)
        feats = tokenize(tok, held, L)
        return held, list(batches_of([feats[i] for i in np.argsort([len(f["input_ids"]) for f in feats], kind="stable")],
                                     32, collate(tok)))

    if a.select_block:
        held, hb = held_batches([sopts.examples])
        print(f"## 1b. block output matching, chosen on {len(held)} held-out TRAINING rows (KL of logits vs dense); "
              f"kfac_seq with {sopts.examples} rows, {sopts.weighting} weighting\n")
        print("| block passes | Adam lr | " + " | ".join(f"p = {p}" for p in SELECT_BUDGETS)
              + " | geo-mean | pass s (p = 0.2) | block s (p = 0.2) |")
        print("|---|---|" + "---|" * (len(SELECT_BUDGETS) + 3))
        geo = {}
        cands = [(0, sopts.block_lr)] + [(int(k), float(lr)) for k in a.block_steps.split(",") if int(k) > 0
                                         for lr in a.block_lrs.split(",")]
        for k, lr in cands:
            t = {}
            kl = joint_deltas(model, [seq(p, sopts.examples, t if p == 0.2 else None, steps=k, lr=lr)
                                      for p in SELECT_BUDGETS], hb, CPU, metric="kl")
            geo[(k, lr)] = float(np.exp(np.mean(np.log(kl))))
            print(f"| {k} | {lr:g} | " + " | ".join(f"{v:.4g}" for v in kl)
                  + f" | {geo[(k, lr)]:.4g} | {t['total_s']} | {t['block_s']} |", flush=True)
        best = min(geo, key=geo.get)
        chosen = min((c for c in geo if geo[c] <= 1.02 * geo[best]), key=lambda c: (c[0], c[1]))
        print(f"\nchosen: {chosen[0]} passes, lr {chosen[1]:g} (lowest geo-mean {best}: {geo[best]:.4g}; the fewest "
              "passes within 2 %)")
        return

    if a.replay:
        replay_cost(model, stats, ranks[0.2], sopts, training_slice(splits["train"], sopts.examples, tok, L), a.rounds)
        return

    if a.select_spectrum:
        select_spectrum(model, infos, W, stats, mats, ranks, seq, held_batches([sopts.examples]), params, sopts)
        return

    if a.select:
        cands = [int(x) for x in a.examples.split(",")]
        held, hb = held_batches(cands)
        print(f"## 1. calibration rows, chosen on {len(held)} held-out TRAINING rows (KL of logits vs dense)\n")
        print("| factors | " + " | ".join(f"p = {p}" for p in SELECT_BUDGETS) + " | geo-mean | pass s (p = 0.2) |")
        print("|---|" + "---|" * (len(SELECT_BUDGETS) + 2))
        kl = joint_deltas(model, [kfac[p] for p in SELECT_BUDGETS], hb, CPU, metric="kl")
        print("| kfac | " + " | ".join(f"{v:.4g}" for v in kl)
              + f" | {np.exp(np.mean(np.log(kl))):.4g} | — |", flush=True)
        geo = {}
        for w in ("token", "gradient"):
            for k in cands:
                t = {}
                cand = [seq(p, k, t if p == 0.2 else None, w) for p in SELECT_BUDGETS]
                kl = joint_deltas(model, cand, hb, CPU, metric="kl")
                geo[(k, w)] = float(np.exp(np.mean(np.log(kl))))
                print(f"| kfac_seq, {k} rows, {w} | " + " | ".join(f"{v:.4g}" for v in kl)
                      + f" | {geo[(k, w)]:.4g} | {t['total_s']} |", flush=True)
        best = min(geo, key=geo.get)
        chosen = min((k for k in geo if geo[k] <= 1.02 * geo[best]), key=lambda k: (k[0], k[1] != "token"))
        print(f"\nchosen: {chosen[0]} rows, {chosen[1]} weighting (lowest geo-mean {best}: {geo[best]:.4g}; "
              f"the smallest within 2 %)")
        return

    t0 = time.perf_counter()
    feats = tokenize(tok, splits["train"], L)
    train_batches = list(batches_of(feats, params.fisher.batch_size, collate(tok)))
    raw, smeta = collect_stats(model, [m.name for m in infos], train_batches, CPU, fisher_out={}, weighted=True)
    weighted_s = time.perf_counter() - t0
    n_tok = smeta["tokens"]
    wstats = {m.name: {k: v / n_tok[m.name] for k, v in matrix_stats(raw, smeta, m.name).items()} for m in infos}
    gw = Factors("kfac_gw", W, wstats, params.compress.opts("kfac_gw"))
    variants = {"kfac": lambda p, t: kfac[p],
                "kfac_gw": lambda p, t: {n: gw.at(n, k) for n, k in ranks[p].items()},
                "kfac_seq": lambda p, t: seq(p, sopts.examples, t, "token"),
                "kfac_seq gradient": lambda p, t: seq(p, sopts.examples, t, "gradient")}
    print(f"## 2. dev score at the same ranks (kfac_seq: {sopts.examples} calibration rows)\n")
    devs = dev_features(task, splits, tok, L)
    labels = {s: np.array([f["labels"] for f in fs]) for s, fs in devs.items()}
    const = constant_score(task, labels if len(labels) > 1 else next(iter(labels.values())))
    idx = resample_indices({s: len(y) for s, y in labels.items()})
    bs, coll = params.evaluate.batch_size, collate(tok)

    def scored(factor_map):
        with Swapped(model, factor_map) as cm:
            m, per = score_dev(cm, devs, task, bs, coll, CPU)
        return m, boot_scores(task, [{s: p for s, (p, _) in per.items()}], labels, idx)

    dm, dboot = scored({})
    lo, hi = interval(dboot)
    print(f"dense {dm['score']:.2f} [{lo:.2f}, {hi:.2f}], constant predictor {const:.2f}\n")
    print("| p | variant | score [95 %] | margin kept | − kfac [95 % paired] | pass s |")
    print("|---|---|---|---|---|---|")
    seconds = {}
    for p in DEV_BUDGETS:
        base = None
        for name, make in variants.items():
            t = {}
            m, b = scored(make(p, t))
            if base is None:
                base, kscore = b, m["score"]
            lo, hi = interval(b)
            dlo, dhi = interval(b - base)
            mk = margin_kept(m["score"], dm["score"], const)
            seconds.setdefault(name, {})[p] = t.get("total_s")
            print(f"| {p} | {name} | {m['score']:.2f} [{lo:.2f}, {hi:.2f}]{' †' if m['collapsed'] else ''} | "
                  f"{mk:.3f} | " + ("—" if name == "kfac" else
                                   f"{m['score'] - kscore:+.2f} [{dlo:+.2f}, {dhi:+.2f}]")
                  + f" | {t.get('total_s', '—')} |", flush=True)

    print("\n## 3. cost\n")
    t0 = time.perf_counter()
    collect_stats(model, [m.name for m in infos], train_batches, CPU, fisher_out={})
    ref = time.perf_counter() - t0
    print(f"Fisher + statistics pass over {len(feats)} training rows: {ref:.1f} s; with the gradient-weighted "
          f"statistics (fisher.weighted): {weighted_s:.1f} s ({weighted_s / ref:.2f}x).")
    for name in ("kfac_seq", "kfac_seq gradient"):
        s02 = seconds[name][0.2]
        print(f"{name} at p = 0.2 over {sopts.examples} rows: {s02} s = {s02 / ref:.2f}x the Fisher + statistics pass")


if __name__ == "__main__":
    task = load_params("params.yaml").data.task
    name = ("sequential_block_select" if "--select-block" in sys.argv else
            "sequential_replay" if "--replay" in sys.argv else
            "sequential_spectrum_select" if "--select-spectrum" in sys.argv else
            "sequential_select" if "--select" in sys.argv else "sequential")
    with recorded(f"benchmarks/results/{name}_{task}.md"):
        main()
