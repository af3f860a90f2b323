"""Sequential two-sided factorisation (`kfac_seq`; derivation in docs/methods.md): each Linear is fitted to the dense
model's output while it reads the activations of the model whose earlier Linears are already
factorised, so truncation errors stop compounding through the blocks (SAES-SVD, SVD-LLM v2).

For one Linear (dense weight W [m, n]) over the calibration tokens t: x_t is its input in the dense
model, x̃_t its input in the partly compressed model. With Σg = L_g L_gᵀ the dense model's
output-gradient covariance (kfac's, damped by α_g) the factors minimise, over rank-r Ŵ,

    J(Ŵ) = Σ_t ‖L_gᵀ (W x_t − Ŵ x̃_t)‖² + δ ‖L_gᵀ (W − Ŵ)‖²_F,        δ = α_x · mean diag(S),

(means over tokens; the δ term is kfac's damping, a pull towards the dense weight). With the cross
covariance C = Σ_t x_t x̃_tᵀ + δI and S' = Σ_t x̃_t x̃_tᵀ + δI = L Lᵀ (lower Cholesky),

    J = const − ‖T‖² + ‖T − L_gᵀ Ŵ L‖²_F,       T = L_gᵀ W C L⁻ᵀ,

so Ŵ = L_g⁻ᵀ SVD_r(T) L⁻¹: A = L_g⁻ᵀ U_r S_r, B = V_rᵀ L⁻¹ (`seq_kfac`). `weighting: gradient`
weights token t by ‖g_t‖² (the dense model's loss gradient at the Linear's output; its own C, S per
Linear) and uses the directions' covariance Σĝ = mean ĝ_t ĝ_tᵀ for Σg (kfac_gw's pair). The truncation costs
Σ_{k>r} s_k(T)² on top of the part no linear map of x̃ can recover. When x̃ = x, C = S' and T =
L_gᵀ W L: exactly kfac.

`sequential_factors(model, ranks, cov_g, batches, opts, device)` runs it over a model: the Linears to
factorise are grouped by the input tensor they read (BERT q, k, v: one group) in the order the
forward pass calls them; for each group, one pass over the calibration batches runs the dense
model and the partly compressed copy up to that group's input (a forward hook stops the pass there),
accumulates C and S over the non-padding tokens in float64, factorises every member, and swaps the
factors into the copy. The passes start at the group's block: at each block's first group the block's
inputs (hidden states, masks, position embeddings; a KV cache dropped) are recorded for each calibration
batch per model, and each group of the block then replays the block alone on them, cut at the group —
the same tensors as a pass from the embeddings, so the same bytes. Block k's inputs come from block
k−1's outputs on its own recorded inputs: a forward pass in which blocks 0 … k−1 only hand on those
outputs, cut at block k, so whatever the model computes before its blocks (masks, positions) is as in a
full pass; on the first batch they are compared with a real pass from the embeddings, and should they
differ (an operation between the blocks) that block and every later one are recorded by such passes.
Cost per model: about three block calls per block (the first block's inputs from one pass cut there);
a block called more than once per forward (ALBERT's shared layer) runs the whole prefix per group
instead. Memory: each model's inputs to one block for all calibration batches
(benchmarks/results/sequential_replay_mrpc.md times the three ways). The ranks come from
the allocation (on kfac's spectrum of the dense model's statistics: `whitened`).

Block output matching (`block_steps` > 0, `match_block`): once every group of a block is fitted,
`block_steps` Adam passes (`block_lr`) over the calibration batches move that block's factors (all
else frozen) to minimise the mean squared error over non-padding tokens between the block's output
on the compressed prefix's input and the dense block's output on the dense input, starting from the
closed form; later blocks then read the matched block.

    factors = sequential_factors(model, {"bert.encoder.layer.0.attention.self.query": 64, ...},
                                 {name: Σg}, batches, KfacSeqParams(alpha_x=1e-3, alpha_g=1e-2, examples=512),
                                 torch.device("cpu"))
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Callable

import torch
from torch import nn

from .factorize import Factors, _check_cov, _check_rank
from .lowrank import LowRankLinear, set_module
from .methods import FACTORISATIONS, KfacSeqParams
from .models import find_blocks
from .stats import damped_cholesky

log = logging.getLogger("fisvd")


def seq_kfac(W: torch.Tensor, cov_g: torch.Tensor, cross: torch.Tensor, cov_xt: torch.Tensor, r: int,
             alpha_x: float, alpha_g: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-r (A, B) minimising J (module docstring). `cross` = C = Σ_t x_t x̃_tᵀ, `cov_xt` = S =
    Σ_t x̃_t x̃_tᵀ (n×n, per-token means), `cov_g` = Σg (m×m). In W's dtype and device."""
    _check_rank(W, r)
    n = W.shape[1]
    _check_cov(W, cross, "cross", n)
    _check_cov(W, cov_xt, "cov_xt", n)
    _check_cov(W, cov_g, "cov_g", W.shape[0])
    dev = W.device
    S = cov_xt.to(dev).double()
    delta = alpha_x * S.diagonal().mean()
    L = damped_cholesky(S, alpha_x)                                      # L Lᵀ = S + δI
    Lg = damped_cholesky(cov_g.to(dev), alpha_g)
    C = cross.to(dev).double() + delta * torch.eye(n, dtype=torch.float64, device=dev)
    T = torch.linalg.solve_triangular(L, (Lg.T @ W.double() @ C).T, upper=False).T   # (…) L⁻ᵀ
    U, s, Vh = torch.linalg.svd(T, full_matrices=False)
    A = torch.linalg.solve_triangular(Lg.T, U[:, :r] * s[:r], upper=True)          # L_gᵀ A = U_r S_r
    B = torch.linalg.solve_triangular(L, Vh[:r], upper=False, left=False)          # B L = V_rᵀ
    return A.to(W.dtype), B.to(W.dtype)


class _Stop(Exception):
    """Raised by a forward hook once the group's inputs of a batch are captured."""


def _groups(model: nn.Module, names: list[str], batch: dict, blocks: list[str] = ()
            ) -> tuple[list[list[str]], dict[str, int], dict[str, int]]:
    """Linears of `names` grouped by the input tensors they read, groups in call order, each Linear's
    number of calls per forward pass, and each of `blocks`' (one forward of `batch`)."""
    seen: dict[str, list] = {}
    first: dict[str, int] = {}
    block_calls = dict.fromkeys(blocks, 0)

    def count(name):
        def f(mod, inputs):
            block_calls[name] += 1
        return f

    def hook(name):
        def f(mod, inputs, out):
            seen.setdefault(name, []).append(inputs[0])
            first.setdefault(name, len(first))
        return f

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    handles += [model.get_submodule(b).register_forward_pre_hook(count(b)) for b in blocks]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"{missing[0]} was not called in the forward pass")
    groups: list[list[str]] = []
    for n in sorted(names, key=first.get):
        same = next((g for g in groups if len(seen[g[0]]) == len(seen[n])
                     and all(a is b for a, b in zip(seen[g[0]], seen[n]))), None)
        (same.append(n) if same is not None else groups.append([n]))
    return groups, {n: len(seen[n]) for n in names}, block_calls


def _grad_norms(model: nn.Module, names: list[str], batch: dict, mask: torch.Tensor,
                dircov: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """‖g_t‖ at the output of each Linear of `names` for the rows `_inputs` returns (same order), g_t =
    B · ∂L/∂y_t (the gradient of token t's own example loss, as fisvd.stats), from one forward and
    backward pass of the dense model on `batch` (with labels); adds Σ_t ĝ_t ĝ_tᵀ to `dircov[name]`."""
    outs: dict[str, list] = {}

    def hook(name):
        def f(mod, inputs, out):
            out.retain_grad()
            outs.setdefault(name, []).append(out)
        return f
    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            emb = model.get_input_embeddings()
            h = emb.register_forward_hook(lambda m, i, o: o.requires_grad_())   # a graph without weight grads
            try:
                loss = model(**batch).loss * batch["input_ids"].shape[0]
                loss.backward()
            finally:
                h.remove()
    finally:
        for h in handles:
            h.remove()
        for p, f in flags.items():
            p.requires_grad_(f)
    norms = {}
    for n, calls in outs.items():
        rows = []
        for y in calls:
            g = y.grad if y.grad is not None else torch.zeros_like(y)
            token = tuple(g.shape[:-1]) == tuple(mask.shape)
            rows.append((g[mask] if token else g.reshape(-1, g.shape[-1])).double())
        G = torch.cat(rows)
        norms[n] = G.norm(dim=1)
        D = G / norms[n].clamp_min(torch.finfo(G.dtype).tiny)[:, None]
        dircov[n] = dircov.get(n, 0) + D.T @ D
    return norms
    return norms


def _inputs(model: nn.Module, name: str, calls: int, batch: dict, mask: torch.Tensor,
            block: tuple[str, tuple[tuple, dict]] | None = None) -> torch.Tensor:
    """Rows of the inputs of Linear `name` over its `calls` calls on `batch` (token calls: the
    non-padding rows), the forward pass cut right after the last call. `block`: (the name of the block
    holding `name`, that block's inputs on `batch` from `_block_inputs`): replay that block alone."""
    rows = []

    def hook(mod, inputs, out):
        x = inputs[0]
        token = tuple(x.shape[:-1]) == tuple(mask.shape)
        rows.append((x[mask] if token else x.reshape(-1, x.shape[-1])).double())
        if len(rows) == calls:
            raise _Stop
    handle = model.get_submodule(name).register_forward_hook(hook)
    if block is None:
        _forward_until(model, batch, handle)
    else:
        mod, (args, kwargs) = model.get_submodule(block[0]), block[1]
        _forward_until(lambda: mod(*args, **kwargs), None, handle)
    if len(rows) != calls:
        raise RuntimeError(f"{name}: {len(rows)} of its {calls} calls seen")
    return torch.cat(rows)


def _forward_until(model: nn.Module | Callable, batch: dict | None, handle) -> None:
    """One forward pass of `batch` (None: call `model()`) without gradients, cut where a hook raises
    _Stop; `handle` removed."""
    try:
        with torch.no_grad():
            model(**batch) if batch is not None else model()
    except _Stop:
        pass
    finally:
        handle.remove()


def _block_inputs(model: nn.Module, block: str, batch: dict) -> tuple[tuple, dict]:
    """(args, kwargs) the block `block` is called with on `batch` (the forward cut there). A KV cache
    (transformers' `Cache`, filled as the blocks run) is dropped: a replay would append to it."""
    from transformers.cache_utils import Cache
    got = {}

    def pre(mod, args, kwargs):
        drop = lambda v: None if isinstance(v, Cache) else v   # noqa: E731
        got["in"] = (tuple(map(drop, args)), {k: drop(v) for k, v in kwargs.items()})
        raise _Stop
    _forward_until(model, batch, model.get_submodule(block).register_forward_pre_hook(pre, with_kwargs=True))
    return got["in"]


def _chained_inputs(model: nn.Module, blocks: nn.ModuleList, block: str, k: int, prev_out, batch: dict
                    ) -> tuple[tuple, dict]:
    """`_block_inputs` of block k (> 0, named `block`) on `batch` without running blocks 0 … k−1: each returns
    (a copy of) `prev_out`, block k−1's whole output on its recorded inputs, so block k reads the
    hidden state a full pass would give it; what the model computes before its blocks (masks, positions)
    is computed as in a full pass. Blocks restored on return."""
    def stub(*args, **kwargs):              # a copy: whatever the model does to it leaves prev_out alone
        if isinstance(prev_out, torch.Tensor):
            return prev_out.clone()
        return type(prev_out)(v.clone() if isinstance(v, torch.Tensor) else v for v in prev_out)
    for blk in blocks[:k]:
        blk.forward = stub
    try:
        return _block_inputs(model, block, batch)
    finally:
        for blk in blocks[:k]:
            del blk.forward


def _same(a, b) -> bool:
    """Recorded block inputs equal to the byte (tensors) or by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:        # noqa: BLE001 - objects without a comparable ==: not provably the same
        return False


def _block_out(block: nn.Module, inputs: tuple[tuple, dict]) -> torch.Tensor:
    out = block(*inputs[0], **inputs[1])
    return out[0] if isinstance(out, tuple) else out


def match_block(dense: nn.Module, comp: nn.Module, block: str, names: list[str], batches: list[dict],
                masks: list[torch.Tensor], steps: int, lr: float,
                recorded: tuple[list, list] | None = None) -> list[float]:
    """Block output matching: `steps` Adam passes over `batches` on the factors of the LowRankLinears
    `names` inside `comp`'s block `block`, minimising the mean squared error over non-padding tokens
    between that block's output on the compressed prefix's input and the dense block's output on the
    dense input (everything else frozen). `recorded`: the block's inputs per batch in the dense and
    in the compressed model (`_block_inputs`), if already at hand. Returns the loss of each pass
    (before its updates)."""
    targets, inputs = [], []
    for i, b in enumerate(batches):
        d_in = recorded[0][i] if recorded else _block_inputs(dense, block, b)
        with torch.no_grad():
            targets.append(_block_out(dense.get_submodule(block), d_in).detach())
        inputs.append(recorded[1][i] if recorded else _block_inputs(comp, block, b))
    mods = [comp.get_submodule(n) for n in names if isinstance(comp.get_submodule(n), LowRankLinear)]
    params = [p for m in mods for p in (m.first.weight, m.second.weight)]
    flags = {p: p.requires_grad for p in comp.parameters()}
    for p in comp.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    try:
        with torch.enable_grad():
            for _ in range(steps):
                total = 0.0
                for x, y, m in zip(inputs, targets, masks):
                    opt.zero_grad()
                    loss = ((_block_out(comp.get_submodule(block), x) - y)[m] ** 2).mean()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach())
                history.append(total / len(inputs))
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
    return history


@FACTORISATIONS.implements("kfac_seq", "model")
def sequential_factors(model: nn.Module, ranks: dict[str, int], cov_g: dict[str, torch.Tensor], batches: list[dict],
                       opts: KfacSeqParams, device: torch.device, progress: Callable = lambda it: it,
                       timing: dict | None = None, replay: bool = True, chain: bool = True
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (A, B)} for every Linear of `ranks` (rank below full), fitted group by group against the
    dense `model` (left unchanged) on `batches` (module docstring). `cov_g[name]`: its Σg (per-token
    mean, as `fisvd.stats.load_stats`). Factors on the CPU in the weights' dtype. `replay=False`: every
    pass from the embeddings; `chain=False`: each block's inputs recorded by a pass from the embeddings
    instead of from the previous block's outputs (both the same bytes, slower: the references the fast
    path is tested and timed against)."""
    if not batches:
        raise ValueError("kfac_seq needs at least one calibration batch")
    model = model.eval().to(device)
    comp = copy.deepcopy(model)
    order = [n for n, _ in model.named_modules() if n in ranks]
    labelled = [{k: v.to(device) for k, v in b.items()} for b in batches]
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in labelled]
    masks = [(b["attention_mask"] if "attention_mask" in b else torch.ones_like(b["input_ids"])).bool()
             for b in batches]
    prefix, blocks = find_blocks(model)
    block_names = [f"{prefix}.{k}" for k in range(len(blocks))]
    groups, calls, block_calls = _groups(model, order, batches[0], block_names)
    norms = None
    if opts.weighting == "gradient":        # per-token weights ‖g_t‖², output side Σĝ (kfac_gw's pair)
        if any("labels" not in b for b in labelled):
            raise ValueError("kfac_seq with weighting: gradient needs labelled calibration batches")
        dircov: dict[str, torch.Tensor] = {}
        norms = [_grad_norms(model, order, b, m, dircov) for b, m in zip(labelled, masks)]
        count = sum(int(m.sum()) for m in masks)
        cov_g = {n: d / count for n, d in dircov.items()}
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    t0 = time.perf_counter()
    passes = matched = 0.0
    block_of = {n: next(k for k in range(len(blocks)) if n.startswith(f"{prefix}.{k}.")) for n in order}
    held, d_in, c_in = None, [], []              # the block whose inputs are held, per batch: dense, compressed
    for gi, group in enumerate(progress(groups)):
        lead = group[0]
        bk = block_of[lead]                       # the block's index
        block = block_names[bk]
        replays = replay and block_calls[block] == 1   # every call of its Linears inside one call of the block
        if replays and block != held:
            t1 = time.perf_counter()
            if chain and bk > 0 and held == block_names[bk - 1]:   # from the previous block's outputs
                for net, ins in ((model, d_in), (comp, c_in)):
                    mods = find_blocks(net)[1]
                    for i, b in enumerate(batches):
                        with torch.no_grad():
                            prev = mods[bk - 1](*ins[i][0], **ins[i][1])
                        ins[i] = _chained_inputs(net, mods, block, bk, prev, b)
                if not all(_same(ins[0], _block_inputs(net, block, batches[0])) for net, ins in ((model, d_in), (comp, c_in))):
                    log.warning("kfac_seq: %s's inputs from %s's outputs differ from a pass from the embeddings; "
                                "recording every later block by such passes", block, held)
                    chain = False
            if not chain or bk == 0 or held != block_names[bk - 1]:
                d_in = c_in = None                # the previous block's inputs, freed before recording these
                d_in = [_block_inputs(model, block, b) for b in batches]
                c_in = [_block_inputs(comp, block, b) for b in batches]
            held = block
            passes += time.perf_counter() - t1
        n = model.get_submodule(lead).in_features
        keys = group if norms is not None else [lead]     # gradient weights: each member its own C, S
        C = {k: torch.zeros(n, n, dtype=torch.float64, device=device) for k in keys}
        S = {k: torch.zeros(n, n, dtype=torch.float64, device=device) for k in keys}
        tokens = 0
        t1 = time.perf_counter()
        for i, (b, mask) in enumerate(zip(batches, masks)):
            X = _inputs(model, lead, calls[lead], b, mask, (block, d_in[i]) if replays else None)
            Xt = _inputs(comp, lead, calls[lead], b, mask, (block, c_in[i]) if replays else None)
            for k in keys:
                w = norms[i][k][:, None] if norms is not None else 1.0
                C[k].addmm_((X * w).T, Xt * w)
                S[k].addmm_((Xt * w).T, Xt * w)
            tokens += X.shape[0]
        passes += time.perf_counter() - t1
        for name in group:
            k = name if norms is not None else lead
            dense = model.get_submodule(name)
            A, B = seq_kfac(dense.weight.detach(), cov_g[name].to(device), C[k] / tokens,
                            (S[k] + S[k].T) / (2 * tokens), ranks[name], opts.alpha_x, opts.alpha_g)
            out[name] = (A.cpu(), B.cpu())
            set_module(comp, name, LowRankLinear.from_factors(A, B, dense.bias).to(device))
        if opts.block_steps and (gi + 1 == len(groups) or block_of[groups[gi + 1][0]] != bk):
            t1 = time.perf_counter()             # the block's last group: match its output to the dense block's
            names = [n for n in order if block_of[n] == bk]
            match_block(model, comp, f"{prefix}.{bk}", names, batches, masks, opts.block_steps, opts.block_lr,
                        (d_in, c_in) if replays else None)   # the block's inputs: unchanged by its own fits
            for n in names:
                mod = comp.get_submodule(n)
                out[n] = (mod.second.weight.detach().cpu().clone(), mod.first.weight.detach().cpu().clone())
            matched += time.perf_counter() - t1
    if timing is not None:
        timing.update(forward_s=round(passes, 1), block_s=round(matched, 1), total_s=round(time.perf_counter() - t0, 1),
                      groups=len(groups))
    log.info("kfac_seq: %d matrices in %d groups, %.1f s (forward passes %.1f s)", len(out), len(groups),
             time.perf_counter() - t0, passes)
    return out


def build_factors(method: str, model: nn.Module, stats: dict[str, dict], ranks: dict[str, int], opts,
                  batches: Callable[[], list[dict]], device: torch.device, timing: dict | None = None
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (A, B)} of factorisation `method` at `ranks` (name → rank below full) — the one entry for
    the stages: matrix-by-matrix methods through `fisvd.factorize.Factors` (on `device`, one matrix in
    memory at a time), sequential ones over the model; `batches()` (called only by those) gives the
    calibration batches; `stats[name]`: the matrix's statistics dict (`fisvd.stats.load_statistics`)."""
    entry = FACTORISATIONS[method]
    if entry.sequential:
        return entry.implementation("model")(model, ranks, {n: stats[n]["cov_g"] for n in ranks}, batches(), opts,
                                             device, timing=timing)
    weights = {n: model.get_submodule(n).weight.detach() for n in ranks}
    factors = Factors(method, weights, {n: stats[n] for n in ranks}, opts, device=device, keep=False)
    t0 = time.perf_counter()
    out = {}
    for name, r in ranks.items():
        A, B = factors.at(name, r)
        out[name] = (A.cpu(), B.cpu())
    if timing is not None:
        timing.update(total_s=round(time.perf_counter() - t0, 1))
    return out
