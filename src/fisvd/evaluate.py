"""Dev-set evaluation and latency measurement of a (dense or compressed) classifier.

`predict` runs the dev split in fixed order (bf16 autocast on CUDA, fp32 on CPU) and returns logits;
`latency_ms` is the median wall time of one forward pass of each model on a [batch, length] batch
of real token ids (warm-up first), on CPU unless a device is given; `latency_batch` builds that batch
with only the inputs `model_inputs(model)` finds in the forward's signature (no token_type_ids for
DistilBERT or MPNet). The models are timed in interleaved rounds (dense, compressed, dense, …) by
`interleaved_ms`, so a change in machine load during the measurement hits both alike instead of
biasing their ratio. `kept_ratio` recounts p = Σ size / Σ m n from the modules themselves
(methods.md §5), independently of ranks.json.
"""
from __future__ import annotations

import inspect
import statistics
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import batches, by_length
from .lowrank import LowRankLinear
from .metrics import constant_score, margin_kept, predictions, task_metrics
from .models import compressible_linears


@torch.inference_mode()
def predict(model: nn.Module, batches, device: torch.device) -> np.ndarray:
    model.eval().to(device)
    out = []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(**batch).logits.float().cpu())
    return torch.cat(out).numpy()


def predict_sorted(model: nn.Module, features: list[dict], batch_size: int, collator,
                   device: torch.device) -> np.ndarray:
    """`predict` over `features` batched in token-length order (far less padding), logits returned
    in the original order."""
    order = by_length(features)
    logits = predict(model, batches([features[i] for i in order], batch_size, collator), device)
    out = np.empty_like(logits)
    out[order] = logits
    return out


def score_dev(model: nn.Module, devs: dict[str, list[dict]], task: str, batch_size: int, collator,
              device: torch.device, by_length: bool = True) -> tuple[dict, dict]:
    """The one dev scoring: `model` on every dev split (`devs`: split → tokenised features with labels)
    → (task_metrics(task, per_split), per_split = {split: (predictions, labels)}). Batches in
    token-length order (`by_length`, far less padding), or in file order."""
    per_split = {}
    for s, feats in devs.items():
        logits = predict_sorted(model, feats, batch_size, collator, device) if by_length else \
            predict(model, batches(feats, batch_size, collator), device)
        per_split[s] = (predictions(task, logits), np.array([f["labels"] for f in feats]))
    return task_metrics(task, per_split), per_split


def dev_record(m: dict, per_split: dict) -> dict:
    """The JSON record of a dev scoring (dense, grid cells, recovery): score (rounded to 4 places),
    collapsed flag, the other metrics (6 places) and every split's predictions (5 places)."""
    return {"score": round(m["score"], 4), "collapsed": m["collapsed"],
            "metrics": {k: round(v, 6) for k, v in m.items() if k not in ("score", "collapsed")},
            "predictions": {s: [round(float(v), 5) for v in p] for s, (p, _) in per_split.items()}}


def comparison(task: str, scores: dict[str, dict], labels: dict, p: float) -> dict:
    """metrics.json of the evaluate stage: the dense and compressed models' metrics (4 places) and
    params, kept ratio p, compression ratio, score drop, the best constant predictor's score on these
    `labels`, % of dense and the margin kept (fisvd.metrics.margin_kept)."""
    out = {"task": str(task), **{name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}
                            for name, s in scores.items()}}
    d, c = out["dense"], out["compressed"]
    const = constant_score(task, labels)
    margin = margin_kept(c["score"], d["score"], const)
    out["kept_ratio"] = round(p, 6)
    out["compression_ratio"] = round(d["params"] / c["params"], 4)
    out["score_drop"] = round(d["score"] - c["score"], 4)
    out["constant_score"] = round(const, 4)
    out["pct_of_dense"] = round(100 * c["score"] / d["score"], 2) if d["score"] > 0 else None
    out["margin_kept"] = None if margin is None else round(margin, 4)
    return out


LATENCY_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(model: nn.Module) -> tuple[str, ...]:
    """The latency-batch inputs `model.forward` names: input_ids, attention_mask, and token_type_ids
    only where the forward has that parameter (BERT, RoBERTa, ELECTRA; not DistilBERT or MPNet).
    A `**kwargs` catch-all does not count as accepting token_type_ids."""
    params = inspect.signature(model.forward).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    missing = [n for n in LATENCY_INPUTS[:2] if n not in named]
    if missing:
        raise TypeError(f"{type(model).__name__}.forward takes no {', '.join(missing)}; "
                        f"not a sequence-classification encoder")
    return tuple(n for n in LATENCY_INPUTS if n in named)


def latency_batch(features: list[dict], batch_size: int, length: int,
                  input_names: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
    """A [batch_size, length] batch from real token ids (examples repeated and concatenated), with
    exactly the tensors in `input_names` (use `model_inputs(model)`): input_ids, attention_mask
    (all ones) and/or token_type_ids (all zeros)."""
    unknown = [n for n in input_names if n not in LATENCY_INPUTS]
    if unknown or "input_ids" not in input_names:
        raise ValueError(f"input_names {tuple(input_names)!r}: must include input_ids and name only "
                         f"{', '.join(LATENCY_INPUTS)}")
    ids = [t for f in features for t in f["input_ids"]]
    if not ids:
        raise ValueError("latency_batch: no token ids in features")
    need = batch_size * length
    ids = (ids * (need // len(ids) + 1))[:need]
    input_ids = torch.tensor(ids, dtype=torch.long).view(batch_size, length)
    make = {"input_ids": lambda: input_ids, "attention_mask": lambda: torch.ones_like(input_ids),
            "token_type_ids": lambda: torch.zeros_like(input_ids)}
    return {n: make[n]() for n in input_names}


@torch.inference_mode()
def interleaved_rounds(fns: dict[str, Callable[[], object]], repeats: int,
                       device: torch.device = torch.device("cpu"), warmup: int = 2) -> dict[str, list[float]]:
    """Wall time (ms) of each callable in each of `repeats` rounds (after `warmup` rounds); each
    round calls every callable once, in the given order."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000)
    return times


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int,
                   device: torch.device = torch.device("cpu"), warmup: int = 2) -> dict[str, float]:
    """Median wall time (ms) of each callable over `repeats` interleaved rounds."""
    return {name: statistics.median(t) for name, t in interleaved_rounds(fns, repeats, device, warmup).items()}


def speedup_spread(rounds: dict[str, list[float]], base: str, other: str) -> dict[str, float]:
    """Per-round speed-up base/other (the two timed in the same round): median and quartiles."""
    r = sorted(b / o for b, o in zip(rounds[base], rounds[other]))
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0]] * 3
    return {"speedup_median": round(q[1], 3), "speedup_q25": round(q[0], 3), "speedup_q75": round(q[2], 3),
            "speedup_min": round(r[0], 3), "rounds": len(r)}


def forward_fn(model: nn.Module, batch: dict, device: torch.device) -> Callable[[], object]:
    """A no-argument forward pass of `model` on `batch`, both moved to `device` (bf16 autocast on CUDA)."""
    model.eval().to(device)
    batch = {k: v.to(device) for k, v in batch.items()}

    def fn():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return model(**batch)
    return fn


def latency_ms(models: dict[str, nn.Module], batch: dict, repeats: int,
               device: torch.device = torch.device("cpu"), warmup: int = 2) -> dict[str, float]:
    """Median forward latency (ms) of each model on `batch`, timed in interleaved rounds."""
    return interleaved_ms({name: forward_fn(m, batch, device) for name, m in models.items()},
                          repeats, device, warmup)


def latency_rounds(models: dict[str, nn.Module], batch: dict, repeats: int,
                   device: torch.device = torch.device("cpu"), warmup: int = 2) -> dict[str, list[float]]:
    """Per-round forward latency (ms) of each model on `batch`, interleaved rounds."""
    return interleaved_rounds({name: forward_fn(m, batch, device) for name, m in models.items()},
                              repeats, device, warmup)


def kept_ratio(model: nn.Module) -> tuple[float, int, int]:
    """(p, kept, dense) over the compressible matrices, counted from the modules."""
    kept = dense = 0
    for info in compressible_linears(model):
        m, n = info.shape
        mod = model.get_submodule(info.name)
        dense += m * n
        kept += mod.rank * (m + n) if isinstance(mod, LowRankLinear) else m * n
    return kept / dense, kept, dense
