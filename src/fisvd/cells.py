"""Grid cells of one (task, factorisation): every allocation × budget in one process.

Per process (the fixed costs, paid once): the fine-tuned model, its Fisher and statistics, one
decomposition per matrix (`fisvd.factorize.decompose`: one SVD of the whitened matrix T, whose
spectrum s_k(T)² the allocators spend on; tfwsvd, whose factors depend on the rank, factorises each
(matrix, rank) once), the dev features. Per cell: `allocate` → ranks, truncate the factors, swap the
LowRankLinears into the dense model (restored afterwards), predict the dev split(s) in token-length
order, score (`fisvd.metrics.task_metrics`). `measured` measures its loss curves once per process
and solves + joint-checks each budget.

`Memo` keeps each finished cell under `.cellcache/` keyed by sha256 of everything that determines
it (input file hashes, code hashes, the cell and its method options), so an interrupted stage resumes
and a stage re-run because a budget or method was added computes only the new cells. DVC still
caches the stage's result file; the memo is a local speed-up, never a source of results that DVC
does not see.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from torch import nn

from .allocate import Matrix, allocate, report
from .factorize import spectrum
from .lowrank import LowRankLinear, set_module


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


def make_matrix(name: str, layer: int, type_: str, W: torch.Tensor, F: torch.Tensor, g: torch.Tensor) -> Matrix:
    """`allocate.Matrix` from a spectrum g already computed (the decomposition's s²): same fields as
    `allocate.matrix_stats(…, T)` without a second SVD of T."""
    Fd, Wd = F.double(), W.double()
    return Matrix(name, layer, type_, W.shape[0], W.shape[1], g.double().cpu().numpy(), spectrum(W).numpy(),
                  float(Fd.sum()), float((Fd * Wd * Wd).sum()))


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


def allocation(method: str, mats: list[Matrix], budget_pct: int, rank_multiple: int, opts) -> tuple[list[int], dict]:
    return allocate(method, mats, budget=budget_pct / 100, rank_multiple=rank_multiple, opts=opts)


def cell_record(mats: list[Matrix], ranks: list[int], total_model_params: int, info: dict) -> dict:
    """Sizes and ranks of an allocation (JSON-ready)."""
    t = report(mats, ranks, total_model_params)["totals"]
    return {"kept_ratio": t["kept_ratio"], "total_params": t["total_params"],
            "compressible_params_kept": t["compressible_params_kept"], "num_dense": t["num_dense"],
            "ranks": {M.name: (min(M.m, M.n) if r >= M.rbar else int(r)) for M, r in zip(mats, ranks)},
            "info": {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool)) or v is None}}

