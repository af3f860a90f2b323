"""Two-sided statistics of every compressible Linear for the closed-form factorisations (methods.md §4b).

For a Linear y = x Wᵀ + b (W: [out = m, in = n]), over the non-padding tokens t of a list of batches:

    Σx = Σ_t x_t x_tᵀ          (n×n, x_t = the Linear's input at token t)
    Σg = Σ_t g_t g_tᵀ          (m×m, g_t = B · ∂L/∂y_t)

Gradient-weighted pair (`weighted=True`, for kfac_gw), per matrix:

    Σx^g = Σ_t ‖g_t‖² x_t x_tᵀ     Σĝ = Σ_t ĝ_t ĝ_tᵀ,  ĝ_t = g_t / ‖g_t‖

The loss model Σ_t (g_tᵀ ΔW x_t)² = Σ_t ‖g_t‖² (ĝ_tᵀ ΔW x_t)² factorises as tr(ΔWᵀ Σĝ ΔW Σx^g)
when the gradient's direction is independent of its norm and the input, rather than of the input
alone: tokens whose output the loss does not feel (every token but the pooled one in the last
block) drop out of Σx^g instead of counting like the rest.

L is the model's own task loss on the batch (CE; MSE for regression), the mean of the B per-example
losses ℓ_b of the batch, so ∂L/∂y_t = (1/B) ∂ℓ_b/∂y_t: scaling by the batch size B makes g_t the
gradient of token t's own example loss, and Σg does not depend on how the data are cut into
batches. Model in eval() (no dropout); one forward and one backward per batch; fp32 accumulation
(`addmm_` of XᵀX on the token rows selected by the batch's attention_mask, so padded tokens never
enter; no mask = every token counts); the sums are symmetrised once at the end.

Under `accelerate launch` / `torchrun` with N processes (torch.distributed initialised, see
`fisvd.dist`), each rank takes the batches `batches[rank::N]` (whole batches, so every batch's
gradient is the single-process one) and the raw sums and counts are all-reduced: every rank returns
the single-process result, up to float summation order.

Matrices that read the same input tensor (BERT q, k, v) share one Σx, computed once and stored once
under the name of the first of them in model order; `meta["cov_x_of"]` maps every matrix to its Σx.

A Linear called more than once per forward pass adds every call: its calls on the batch's tokens
(input shaped [batch, length, in]) over their non-padding rows, any other call (DeBERTa's
query/key projections applied again to the relative-position embeddings, [1, 2k, in]) over all its
rows; the token counts count every row added. Σx is then shared only by matrices whose calls read
the same tensors. An approximation for such a non-token call: its input is shared by the whole
batch, so the gradient reaching its output row is already summed over the batch's examples; Σg
adds (B·Σ_b g_b)(B·Σ_b g_b)ᵀ for that row rather than a per-example sum.

Layout (safetensors, raw sums; one metadata key `fisvd` with sorted JSON, so reruns are
byte-identical): tensors `cov_x/<key>` and `cov_g/<matrix>`; metadata
`{"kind": "twosided", "batches", "examples", "tokens": {matrix: count}, "cov_x_of": {matrix: key},
"g_scale": "batch_size"}`. `load_stats` divides every sum by its token count (per-token means, like
`fisher.load_fisher`); `matrix_stats(stats, meta, name)` gives the `{"cov_x", "cov_g"}` dict that
`fisvd.factorize.factorize` takes:

    stats, meta = collect_stats(model, names, batches, device)
    save_stats("data/stats.safetensors", stats, meta)
    stats, meta = load_stats("data/stats.safetensors")
    A, B = factorize("kfac", W, matrix_stats(stats, meta, name), r, alpha_x=0.01, alpha_g=0.01)

`damped_cholesky(M, α)` is the lower Cholesky factor (float64) of M + α·mean(diag M)·I.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .dist import all_reduce, shard, sum_counts, world_size
from .errors import InputError
from .fisher import check_against as check_fisher, load_fisher

KIND = "twosided"


class StatsError(InputError):
    """A statistics file is missing, corrupt, or does not match the model."""


def damped_cholesky(M: torch.Tensor, alpha: float) -> torch.Tensor:
    """Lower L (float64) with L Lᵀ = M + α·mean(diag M)·I; ValueError if that is not positive definite."""
    if M.dim() != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(M.shape)}")
    M = M.double()
    if not torch.isfinite(M).all():
        raise ValueError("matrix contains NaN or inf")
    damp = alpha * M.diagonal().mean()
    L, info = torch.linalg.cholesky_ex(M + damp * torch.eye(M.shape[0], dtype=M.dtype, device=M.device))
    if int(info) != 0:
        raise ValueError(f"{M.shape[0]}×{M.shape[0]} matrix is not positive definite after damping "
                         f"α={alpha} (mean diagonal {float(M.diagonal().mean()):.3g}); raise α above 0, "
                         f"or check that the statistics are not all zero")
    return L


def collect_stats(model: nn.Module, names: list[str], batches: Iterable[dict], device: torch.device,
                  progress: Callable = lambda it: it, fisher_out: dict | None = None, weighted: bool = False
                  ) -> tuple[dict[str, torch.Tensor], dict]:
    """Raw sums Σx (shared per input tensor) and Σg of the Linears `names` (model order); see above.

    `weighted`: also the gradient-weighted pair of every matrix (kfac_gw; module docstring):
    `cov_xg/<matrix>` = Σ_t ‖g_t‖² x_t x_tᵀ and `cov_gn/<matrix>` = Σ_t ĝ_t ĝ_tᵀ, ĝ_t = g_t / ‖g_t‖.

    With `fisher_out` (a dict), the same backward pass also yields the per_batch diagonal Fisher:
    `fisher_out[name]` = Σ_b (∂L_b/∂W)² (raw sums over batches, as `fisher.fisher_per_batch`).

    Several processes: this rank's share of the batches, then sums all-reduced (module docstring)."""
    world = world_size()
    if world > 1:
        batches = list(batches)
        if len(batches) < world:    # every rank must learn the Σx sharing from a forward pass
            raise StatsError(f"{len(batches)} batches for {world} processes: every process needs at least one "
                             f"batch; use fewer processes or a smaller fisher.batch_size")
        batches = shard(batches)
    model.eval().to(device)
    mods = {n: model.get_submodule(n) for n in names}
    for n, m in mods.items():
        if not isinstance(m, nn.Linear):
            raise ValueError(f"{n} is a {type(m).__name__}, not a dense nn.Linear")
    order = {n: i for i, n in enumerate(names)}
    flags = {p: p.requires_grad for p in model.parameters()}
    weights = [m.weight for m in mods.values()]
    ids = {id(w) for w in weights}
    for p in model.parameters():        # gradients reach every Linear output and nothing else
        p.requires_grad_(id(p) in ids)
    sums: dict[str, torch.Tensor] = {}
    tokens = {n: 0 for n in names}
    cov_x_of: dict[str, str] | None = None
    state: dict = {}

    def add(key: str, rows: torch.Tensor, scale: int = 1) -> None:
        rows = rows.detach().float() * scale    # fp32, never part of the autograd graph
        if key not in sums:
            sums[key] = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float32, device=rows.device)
        sums[key].addmm_(rows.T, rows)

    def rows_of(t: torch.Tensor, token: bool) -> torch.Tensor:
        return t[state["mask"]] if token else t.reshape(-1, t.shape[-1])

    def fwd_hook(name):
        def hook(mod, inputs, out):
            x = inputs[0]
            token = tuple(x.shape[:-1]) == tuple(state["mask"].shape)
            state["x"].setdefault(name, []).append((x, token))

            def on_grad(g):
                gr = rows_of(g, token).detach().float() * state["B"]
                add(f"cov_g/{name}", gr)
                if weighted:
                    norms = gr.norm(dim=1, keepdim=True)
                    add(f"cov_xg/{name}", rows_of(x.detach(), token).float() * norms)
                    add(f"cov_gn/{name}", gr / norms.clamp_min(torch.finfo(gr.dtype).tiny))
            out.register_hook(on_grad)
        return hook

    handles = [m.register_forward_hook(fwd_hook(n)) for n, m in mods.items()]
    batches_n = examples = 0
    try:
        for batch in progress(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones(batch["input_ids"].shape, dtype=torch.long, device=device)
            mask = mask.bool()
            state.update(x={}, mask=mask, B=batch["input_ids"].shape[0])
            loss = model(**batch).loss
            groups: list[list[str]] = []        # the matrices reading the same input tensors
            same_inputs = lambda a, b: len(a) == len(b) and all(x is y for (x, _), (y, _) in zip(a, b))  # noqa: E731
            for n, calls in state["x"].items():
                same = next((g for g in groups if same_inputs(state["x"][g[0]], calls)), None)
                if same is None:
                    groups.append([n])
                else:
                    same.append(n)
            of = {n: min(g, key=order.get) for g in groups for n in g}
            if cov_x_of is None:
                cov_x_of = of
            elif of != cov_x_of:
                raise ValueError("the Linears sharing an input differ between batches")
            missing = sorted(set(names) - set(of))
            if missing:
                raise ValueError(f"{missing[0]} was not called in the forward pass")
            for key in sorted(set(of.values()), key=order.get):
                for x, token in state["x"][key]:
                    add(f"cov_x/{key}", rows_of(x, token))
            rows = {n: sum(int(mask.sum()) if token else x[..., 0].numel() for x, token in state["x"][n])
                    for n in names}
            state["x"] = {}
            # fires the output hooks; the weight gradients (one GEMM per matrix) are returned and
            # dropped, so the model's .grad stays untouched
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            if fisher_out is not None:
                for n, g in zip(names, grads):
                    if n not in fisher_out:
                        fisher_out[n] = torch.zeros(mods[n].weight.shape, dtype=torch.float32, device=device)
                    if g is not None:
                        fisher_out[n] += g.float() ** 2
            for n in names:
                tokens[n] += rows[n]
            batches_n += 1
            examples += state["B"]
    finally:
        for h in handles:
            h.remove()
        for p, f in flags.items():
            p.requires_grad_(f)
        state.clear()
    if cov_x_of is None:
        raise ValueError("no batches: the statistics would be empty")
    for n, m in mods.items():           # no gradient reached it: all zero (check_against rejects it)
        sums.setdefault(f"cov_g/{n}", torch.zeros(m.out_features, m.out_features, device=device))
        if weighted:
            sums.setdefault(f"cov_xg/{n}", torch.zeros(m.in_features, m.in_features, device=device))
            sums.setdefault(f"cov_gn/{n}", torch.zeros(m.out_features, m.out_features, device=device))
    if world > 1:
        all_reduce(sums)
        if fisher_out is not None:
            all_reduce(fisher_out)
        counts = sum_counts({"batches": batches_n, "examples": examples,
                             **{f"tokens/{n}": c for n, c in tokens.items()}}, device)
        batches_n, examples = counts["batches"], counts["examples"]
        tokens = {n: counts[f"tokens/{n}"] for n in names}
    stats = {k: ((s + s.T) / 2).cpu() for k, s in sorted(sums.items())}
    if fisher_out is not None:
        fisher_out.update({n: f.cpu() for n, f in fisher_out.items()})
    meta = {"kind": KIND, "batches": batches_n, "examples": examples, "tokens": tokens,
            "cov_x_of": cov_x_of, "g_scale": "batch_size", **({"weighted": True} if weighted else {})}
    return stats, meta


def save_stats(path: str | Path, stats: dict[str, torch.Tensor], meta: dict) -> None:
    # one metadata key with sorted JSON: safetensors writes metadata maps in arbitrary order
    save_file({k: v.float().contiguous() for k, v in stats.items()}, str(path),
              metadata={"fisvd": json.dumps(meta, sort_keys=True)})


def load_stats(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """({`cov_x/<key>` and `cov_g/<matrix>`: raw sum / token count}, metadata), checked."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"{path}: statistics file not found; run the stage that writes it")
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("fisvd", "{}")
        sums = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise StatsError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
    try:
        meta = json.loads(raw)
        tokens = {str(n): int(c) for n, c in meta["tokens"].items()}
        cov_x_of = {str(n): str(k) for n, k in meta["cov_x_of"].items()}
        if meta["kind"] != KIND:
            raise ValueError
    except (KeyError, ValueError, TypeError, AttributeError):
        raise StatsError(f"{path}: metadata lacks the two-sided statistics' token counts and Σx map") from None
    out = {}
    extra = ("cov_xg", "cov_gn") if meta.get("weighted") else ()
    for n in tokens:
        for key in (f"cov_x/{cov_x_of.get(n)}", f"cov_g/{n}", *(f"{k}/{n}" for k in extra)):
            if key not in sums:
                raise StatsError(f"{path}: no tensor {key} for matrix {n}")
            if tokens[n] < 1:
                raise StatsError(f"{path}: matrix {n} has token count {tokens[n]} < 1")
            out[key] = sums[key] / tokens[n]
    for key, s in sums.items():
        if key not in out:
            raise StatsError(f"{path}: tensor {key} belongs to no matrix")
        if s.dim() != 2 or s.shape[0] != s.shape[1] or not torch.isfinite(s).all():
            raise StatsError(f"{path}: {key} is not a finite square matrix")
        if (s.diagonal() < 0).any():
            raise StatsError(f"{path}: {key} has a negative diagonal (not a covariance)")
    return out, meta


def matrix_stats(stats: dict[str, torch.Tensor], meta: dict, name: str) -> dict[str, torch.Tensor]:
    """{"cov_x": Σx, "cov_g": Σg} of matrix `name` (+ "cov_xg", "cov_gn" when collected `weighted`),
    the statistics dict `factorize` takes."""
    out = {"cov_x": stats[f"cov_x/{meta['cov_x_of'][name]}"], "cov_g": stats[f"cov_g/{name}"]}
    for k in ("cov_xg", "cov_gn"):
        if f"{k}/{name}" in stats:
            out[k] = stats[f"{k}/{name}"]
    return out


def check_against(stats: dict[str, torch.Tensor], meta: dict, shapes: dict[str, tuple[int, int]],
                  path="stats") -> None:
    """Every matrix of `shapes` (name → weight shape [m, n]) has Σx n×n and Σg m×m, not all zero."""
    for name, (m, n) in shapes.items():
        if name not in meta.get("cov_x_of", {}) or f"cov_g/{name}" not in stats:
            raise StatsError(f"{path}: no statistics for matrix {name}")
        got = matrix_stats(stats, meta, name)
        for kind, d in (("cov_x", n), ("cov_g", m)):
            if tuple(got[kind].shape) != (d, d):
                raise StatsError(f"{path}: {kind} of {name} has shape {tuple(got[kind].shape)}, "
                                 f"weight {(m, n)} needs ({d}, {d})")
            if not bool((got[kind].diagonal() > 0).any()):
                raise StatsError(f"{path}: {kind} of {name} is all zero (no data or no gradient reached it)")


def load_statistics(needs, shapes: dict[str, tuple[int, int]], fisher_path: str | Path,
                    stats_path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """The one per-matrix statistics builder: {matrix: {"fisher": F, "cov_x": Σx, "cov_g": Σg}}
    holding the statistics `needs` names (a factorisation's `needs`, plus "fisher" where the Fisher
    scores are read), for every matrix of `shapes` (name → weight shape), each file checked against
    the shapes. Files a need does not name are not opened."""
    needs = set(needs)
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in shapes}
    if "fisher" in needs:
        fisher, _ = load_fisher(fisher_path)
        check_fisher(fisher, shapes, str(fisher_path))
        for name in shapes:
            out[name]["fisher"] = fisher[name]
    if needs & {"cov_x", "cov_g", "cov_xg", "cov_gn"}:
        stats, meta = load_stats(stats_path)
        check_against(stats, meta, shapes, str(stats_path))
        if needs & {"cov_xg", "cov_gn"} and not meta.get("weighted"):
            raise StatsError(f"{stats_path}: no gradient-weighted statistics (cov_xg, cov_gn); set "
                             f"fisher.weighted: true and re-run the fisher stage")
        for name in shapes:
            out[name].update(matrix_stats(stats, meta, name))
    return out
