"""Reading ranks.json (the allocate stage's output) back with checks against a model.

`read_ranks(path, shapes)` returns {matrix name: rank} for the matrices to factorise (dense ones
are left out) and raises AllocationError naming the matrix on an unknown name, a rank < 1 or a
rank above min(m, n).
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import AllocationError


def read_ranks(path: str | Path, shapes: dict[str, tuple[int, int]]) -> dict[str, int]:
    path = Path(path)
    if not path.is_file():
        raise AllocationError(f"{path}: not found; run `dvc repro allocate`")
    try:
        rows = json.loads(path.read_text())["matrices"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AllocationError(f"{path}: not a ranks file ({type(exc).__name__}: {exc})") from None
    out = {}
    for row in rows:
        name, rank = row.get("name"), row.get("rank")
        if name not in shapes:
            raise AllocationError(f"{path}: matrix {name!r} is not a compressible matrix of the model")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise AllocationError(f"{path}: matrix {name}: rank {rank!r} must be an integer >= 1")
        if rank > min(shapes[name]):
            raise AllocationError(f"{path}: matrix {name}: rank {rank} exceeds min{tuple(shapes[name])}")
        if not row.get("dense", False):
            out[name] = rank
    return out
