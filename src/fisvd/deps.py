"""Code dependencies of a stage: the files whose content can change what the stage computes.

`code_deps(script)` = the stage script plus every `src/fisvd/<m>.py` it imports at module level,
transitively, except the INTERFACE modules and what is reached only through them. dvc.yaml (tests/test_dvc_yaml.py), the generated grid
pipelines (fisvd.grid) and the grid's cell memo key (fisvd.cells) all use this one list, so they
cannot drift apart.

INTERFACE modules parse, validate and describe; they never shape a number: a stage's outputs depend
on the params' *values*, which DVC tracks key by key, and on the modules that compute. So a schema
edit (a new key, a reworded error or `--help`, a new grid cell list) re-runs nothing. The method
specs (`methods`, `registry`) are NOT interface although torch-free: a spec's `needs`, `sliceable` and
`budgeted` decide what a stage computes, so they are code deps of the stages that dispatch methods
(allocate, compress, cells, recover) and reach them through a computing module. What keeps this
safe: params are built from the YAML values unchanged (tests/test_params.py holds every parsed value
equal to the file's), and a changed output path or cell list changes dvc.yaml itself (tests hold
dvc.yaml to paths.py, and the generated grid pipelines to fisvd.grid). `preflight` only checks (it
may stop the finetune stage before training, never changes an output).
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INTERFACE = ("cli", "deps", "errors", "grid", "params", "paths", "preflight", "validate")


def imports(path: Path, lazy: bool = False) -> set[str]:
    """fisvd modules `path` imports at module level (lazy=True: only those imported inside functions)."""
    return set(_imports(Path(path).read_text(), lazy))


@lru_cache(maxsize=None)
def _imports(source: str, lazy: bool) -> frozenset[str]:
    """imports() of a file's text, memoised on the text: generating the grid asks for each module once
    per stage (~500 stages), and an edited file is a new key, never a stale answer."""
    tree = ast.parse(source)
    top = set(map(id, tree.body))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and (id(node) not in top) == lazy:   # import fisvd.x (as y)
            mods |= {a.name.split(".")[1] for a in node.names if a.name.startswith("fisvd.")}
        if not isinstance(node, ast.ImportFrom) or (id(node) not in top) != lazy:
            continue
        if node.level == 1:                     # from .x import y; from . import x
            mods |= {node.module} if node.module else {a.name for a in node.names}
        elif node.module == "fisvd":            # from fisvd import x
            mods |= {a.name for a in node.names}
        elif node.module and node.module.startswith("fisvd."):
            mods.add(node.module.split(".", 1)[1])
    return frozenset(mods)


def code_deps(script: str, root: Path = ROOT) -> list[str]:
    """The stage's code deps (paths relative to root): the script, then the computing modules it
    imports, transitively, not looking past an INTERFACE module."""
    todo, seen = [m for m in imports(root / script) if m not in INTERFACE], set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(d for d in imports(root / "src" / "fisvd" / f"{m}.py") if d not in INTERFACE)
    return [script] + [f"src/fisvd/{m}.py" for m in sorted(seen)]
