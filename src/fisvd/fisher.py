"""Empirical diagonal Fisher of every compressible Linear (methods.md §3).

Model in eval() (no dropout), gradients on, fp32, task loss (CE; MSE for STS-B), fixed order:
- per_batch:  F_ij = (1/B) Σ_b (∂L_b/∂W_ij)²,  L_b = mean loss of mini-batch b, B = #batches.
- per_sample: F_ij = (1/N) Σ_d (∂L_d/∂W_ij)², one gradient per example (torch.func vmap(grad)
  over chunks of `batch_size` examples, each example at its own unpadded length).
Stored raw: the un-normalised sums Σ (∂L/∂W)² per matrix and the count (B or N), in safetensors;
`load_fisher` divides. Never normalised per layer, so magnitudes stay comparable across layers.

Under `accelerate launch` / `torchrun` with N processes (`fisvd.dist`), each rank takes a
round-robin share of the whole mini-batches (per_batch) or of the length-sorted vmap chunks
(per_sample), and the sums and counts are all-reduced: every rank returns the single-process
result, up to float summation order.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .dist import all_reduce, shard, sum_counts
from .errors import FisherError

log = logging.getLogger(__name__)




def _weights(model: nn.Module, names: list[str]) -> dict[str, nn.Parameter]:
    return {n: model.get_submodule(n).weight for n in names}


def _freeze_others(model: nn.Module, keep: dict[str, nn.Parameter]) -> None:
    ids = {id(p) for p in keep.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)


def fisher_per_batch(model: nn.Module, names: list[str], batches: Iterable[dict],
                     device: torch.device, progress: Callable = lambda it: it):
    """Sum over mini-batches of squared mean-loss gradients; returns (sums, #batches, #examples)."""
    model.eval().to(device)
    weights = _weights(model, names)
    _freeze_others(model, weights)
    sums = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    count = examples = 0
    for batch in progress(shard(batches)):
        batch = {k: v.to(device) for k, v in batch.items()}
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        for n, w in weights.items():
            sums[n] += w.grad.float() ** 2
        count += 1
        examples += batch["input_ids"].shape[0]
    model.zero_grad(set_to_none=True)
    all_reduce(sums)
    counts = sum_counts({"count": count, "examples": examples}, device)
    return {n: s.cpu() for n, s in sums.items()}, counts["count"], counts["examples"]


def fisher_per_sample(model: nn.Module, names: list[str], features: list[dict], collator,
                      device: torch.device, chunk: int = 16, progress: Callable = lambda it: it):
    """Exact per-example squared gradients, summed; returns (sums, N, N).

    Examples are grouped by length so that a vmap chunk needs no padding; each example's loss is
    computed exactly as in a micro-batch of one. Several processes: each takes its share of the
    chunks (a rank may get none), then the sums are all-reduced.
    """
    from torch.func import functional_call, grad, vmap

    model.eval().to(device)
    weights = _weights(model, names)
    _freeze_others(model, weights)
    params = {f"{n}.weight": w.detach() for n, w in weights.items()}
    sums = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}

    def loss_one(p, ex):
        batch = {k: v.unsqueeze(0) for k, v in ex.items()}
        return functional_call(model, p, args=(), kwargs=batch).loss

    per_example_grads = vmap(grad(loss_one), in_dims=(None, 0))
    order = sorted(range(len(features)), key=lambda i: (len(features[i]["input_ids"]), i))
    groups, cur = [], []
    for i in order:
        if cur and (len(features[i]["input_ids"]) != len(features[cur[0]]["input_ids"]) or len(cur) == chunk):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    for idx in progress(shard(groups)):
        batch = {k: v.to(device) for k, v in collator([features[i] for i in idx]).items()}
        batch.pop("attention_mask", None)  # equal lengths: all-ones mask == no mask (vmap-safe)
        g = per_example_grads(params, batch)
        for n in names:
            sums[n] += (g[f"{n}.weight"].float() ** 2).sum(0)
    all_reduce(sums)
    return {n: s.cpu() for n, s in sums.items()}, len(features), len(features)


def save_fisher(path: str | Path, sums: dict[str, torch.Tensor], count: int, mode: str,
                examples: int) -> None:
    # one metadata key: safetensors writes metadata maps in arbitrary order, which would break
    # byte-identical reruns (and so DVC's skipping of unchanged downstream stages)
    meta = json.dumps({"mode": mode, "count": count, "examples": examples}, sort_keys=True)
    save_file({n: s.contiguous() for n, s in sums.items()}, str(path), metadata={"fisvd": meta})


def load_fisher(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return ({matrix name: F = sums / count}, metadata) with checks for NaN/inf/negatives."""
    path = Path(path)
    if not path.is_file():
        raise FisherError(f"{path}: Fisher file not found; run `dvc repro fisher`")
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("fisvd", "{}")
        sums = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FisherError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
    try:
        meta = json.loads(raw)
        count = int(meta["count"])
    except (KeyError, ValueError, TypeError):
        raise FisherError(f"{path}: metadata lacks the example/batch count") from None
    if count < 1:
        raise FisherError(f"{path}: count {count} < 1")
    out = {}
    for n, s in sums.items():
        if not torch.isfinite(s).all():
            raise FisherError(f"{path}: matrix {n} has NaN or inf Fisher values")
        if (s < 0).any():
            raise FisherError(f"{path}: matrix {n} has negative Fisher values")
        out[n] = s / count
    meta["count"] = count
    return out, meta


def check_against(fisher: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], path="fisher") -> None:
    """Every compressible matrix must have a Fisher tensor of its shape."""
    for n, shape in shapes.items():
        if n not in fisher:
            raise FisherError(f"{path}: no Fisher for matrix {n}")
        if tuple(fisher[n].shape) != tuple(shape):
            raise FisherError(f"{path}: Fisher for {n} has shape {tuple(fisher[n].shape)}, "
                              f"weight has {tuple(shape)}")
        if not bool((fisher[n] > 0).any()):
            raise FisherError(f"{path}: Fisher for {n} is all zero (no gradient reached it); check "
                              f"that the loss depends on this matrix and fisher.max_samples > 0")


def summary(fisher: dict[str, torch.Tensor], mats) -> dict:
    """Per matrix of `mats` (MatrixInfo, model order), looked up by name: layer, type, shape,
    total FI Σ F and density Σ F / (m n)."""
    out = {}
    for m in mats:
        F = fisher[m.name]
        total = float(F.double().sum())
        out[m.name] = {"layer": m.layer, "type": m.type, "shape": list(F.shape), "total": total,
                       "density": total / F.numel()}
    return out
