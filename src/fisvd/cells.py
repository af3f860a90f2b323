"""Grid cells of one (task, factorisation): every allocation × budget in one process (`run_cells`).

Per process (the fixed costs, paid once): the fine-tuned model, its statistics, one decomposition
per matrix (`fisvd.factorize.Factors`: one SVD of the whitened matrix T, whose spectrum s_k(T)² the
allocators spend on; tfwsvd, whose factors depend on the rank, factorises each (matrix, rank) once),
the dev features. Per cell: `fisvd.plan.plan` → ranks (methods that need measurements measure their
curves once per process on the seeded training slice, then solve and joint-check each budget),
truncate the factors, swap the LowRankLinears into the dense model (restored afterwards), score the
dev split(s) in token-length order (`fisvd.evaluate.score_dev`).

`Memo` keeps each finished cell under `.cellcache/` keyed by sha256 of everything that determines it
(`memo_context`: the input files' hashes; the code — the same list as the stage's DVC code deps,
`fisvd.deps.code_deps`, so the two cannot drift —; torch/transformers/numpy/scipy/scikit-learn
versions, device and dtype; the params of the cell; the cell and its method options), so an
interrupted stage resumes and a stage re-run because a budget or method was added computes only the
new cells. DVC still caches the stage's result files; the memo is a local speed-up, never a source of
results that DVC does not see.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from .allocate import Matrix, report
from .data import calibration_rows, collate, dev_features, training_slice
from .deps import ROOT, code_deps
from .evaluate import dev_record, score_dev
from .metrics import scoring_of
from .factorize import Factors
from .lowrank import LowRankLinear, set_module
from .methods import FACTORISATIONS
from .models import compressible_linears, count_params, load_classifier, load_tokenizer, pick_device
from .plan import Probe, matrices, plan
from .sequential import build_factors
from .speed import load_table
from .stats import load_statistics

log = logging.getLogger("fisvd")
VERSIONED = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "safetensors")
DTYPE = "float32"       # the model is scored in fp32 (bf16 autocast on CUDA: part of the device)


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (sorted relative names and contents)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _plain(x):
    if is_dataclass(x):
        return asdict(x)
    return x


class Memo:
    """Finished cells on disk: `get(**cell)` → the stored record or None, `put(record, **cell)`."""

    def __init__(self, folder: str | Path, context: dict):
        self.folder = Path(folder)
        self.context = context
        self.computed = 0           # records put by this process

    def key(self, **cell) -> str:
        blob = json.dumps({"context": self.context, "cell": cell}, sort_keys=True, default=_plain)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, **cell) -> dict | None:
        path = self.folder / f"{self.key(**cell)}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:        # a write cut short: recompute
            return None

    def put(self, record: dict, **cell) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.key(**cell)}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        self.computed += 1


class Swapped:
    """Context manager: the model with the given Linears replaced by LowRankLinears, restored on exit."""

    def __init__(self, model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.model, self.factors, self.originals = model, factors, {}

    def __enter__(self) -> nn.Module:
        for name, (A, B) in self.factors.items():
            dense = self.model.get_submodule(name)
            self.originals[name] = dense
            w = dense.weight
            set_module(self.model, name, LowRankLinear.from_factors(A.to(w.dtype), B.to(w.dtype), dense.bias).to(w.device))
        return self.model

    def __exit__(self, *exc) -> None:
        for name, mod in self.originals.items():
            set_module(self.model, name, mod)


def cell_record(mats: list[Matrix], ranks: list[int], total_model_params: int, info: dict) -> dict:
    """Sizes and ranks of an allocation (JSON-ready)."""
    t = report(mats, ranks, total_model_params)["totals"]
    return {"kept_ratio": t["kept_ratio"], "total_params": t["total_params"],
            "compressible_params_kept": t["compressible_params_kept"], "num_dense": t["num_dense"],
            "ranks": {M.name: (min(M.m, M.n) if r >= M.rbar else int(r)) for M, r in zip(mats, ranks)},
            "info": {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool)) or v is None}}



def device_name() -> str:
    d = pick_device()
    return f"cuda:{torch.cuda.get_device_name(d)}" if d.type == "cuda" else "cpu"


def memo_context(params, factorisation: str, inputs: tuple[str, ...], script: str = "stages/cells.py") -> dict:
    """Everything besides the cell that determines a cell's record: input file hashes, code hashes
    (`code_deps(script)`: the stage's DVC code deps), library versions, device, dtype, and the params
    a cell of this factorisation reads."""
    a = params.allocate
    return {"inputs": {p: sha256_path(p) for p in inputs},
            "code": {f: sha256_path(ROOT / f) for f in code_deps(script)},
            "versions": {n: metadata.version(n) for n in VERSIONED}, "device": device_name(), "dtype": DTYPE,
            "factorisation": factorisation, "rank_multiple": a.rank_multiple,
            "compress": params.compress.opts(factorisation),
            "max_length": params.finetune.max_length, "batch_size": params.evaluate.batch_size,
            "budget_kind": a.budget_kind, "speed_table": a.speed_table and sha256_path(a.speed_table)}


def run_cells(params, factorisation: str, cells, meta: dict, splits: dict, memo: Memo, *, model_dir: str,
              fisher_path: str, stats_path: str) -> dict[tuple[str, int], dict]:
    """{(allocation, budget): record} of every cell (`cells`: fisvd.grid.Cell of one factorisation) on
    the prepared task (`meta`, `splits`: fisvd.data.load_prepared), computing only those the memo lacks
    (each stored as soon as it is done)."""
    opts_of = params.allocate.opts
    todo = [c for c in cells if memo.get(allocation=c.allocation, budget=c.budget, opts=opts_of(c.allocation)) is None]
    log.info("%s on %s: %d cells, %d memoised", factorisation, meta["task"], len(cells), len(cells) - len(todo))
    if todo:
        _compute(params, factorisation, meta, splits, todo, memo, model_dir, fisher_path, stats_path)
    return {(c.allocation, c.budget): memo.get(allocation=c.allocation, budget=c.budget, opts=opts_of(c.allocation))
            for c in cells}


def _compute(params, f, meta, splits, todo, memo, model_dir, fisher_path, stats_path):
    task, a, L = scoring_of(meta), params.allocate, params.finetune.max_length
    device = pick_device()
    tok = load_tokenizer(model_dir)
    model = load_classifier(model_dir, meta["num_labels"]).float().eval().to(device)
    total = count_params(model)
    infos = compressible_linears(model)
    weights = {m.name: model.get_submodule(m.name).weight.detach().cpu() for m in infos}
    stats = load_statistics({"fisher", *FACTORISATIONS[f].needs}, {m.name: m.shape for m in infos},
                            fisher_path, stats_path)
    t0 = time.perf_counter()
    factors = Factors(f, weights, stats, params.compress.opts(f))
    mats = matrices(infos, weights, stats, factors, a.speed_table and load_table(a.speed_table), a.budget_kind)
    log.info("%s: decomposed %d matrices in %.1f s", f, len(infos), time.perf_counter() - t0)
    devs = dev_features(task, splits, tok, L)
    probe = Probe(model, infos, factors, calibration_rows(splits), tok, L, device)
    calibration: list = []

    def calibration_batches():      # sequential factorisations: one seeded training slice per process
        if not calibration:
            calibration.extend(training_slice(calibration_rows(splits), params.compress.opts(f).examples, tok, L))
        return calibration
    for c in todo:
        t1 = time.perf_counter()
        opts = a.opts(c.allocation)
        ranks, info = plan(c.allocation, mats, budget=c.budget / 100, rank_multiple=a.rank_multiple, opts=opts,
                           probe=lambda: probe)
        rec = cell_record(mats, ranks, total, info)
        if FACTORISATIONS[f].sequential:
            low = build_factors(f, model, stats, {M.name: r for M, r in zip(mats, ranks) if r < M.rbar},
                                params.compress.opts(f), calibration_batches, device)
        else:
            low = {M.name: factors.at(M.name, r) for M, r in zip(mats, ranks) if r < M.rbar}
        with Swapped(model, low) as cm:
            m, per_split = score_dev(cm, devs, task, params.evaluate.batch_size, collate(tok), device)
        rec.update(dev_record(m, per_split), seconds=round(time.perf_counter() - t1, 2))
        memo.put(rec, allocation=c.allocation, budget=c.budget, opts=opts)
        log.info("%-14s p=%2d%%: kept %.4f score %6.2f%s (%.1f s)", c.allocation, c.budget, rec["kept_ratio"],
                 rec["score"], " COLLAPSED" if rec["collapsed"] else "", rec["seconds"])
