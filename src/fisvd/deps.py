"""Code dependencies of a stage: the files whose content can change what the stage computes.

`code_deps(script)` = the stage script plus every `src/fisvd/<m>.py` it imports at module level,
transitively, except the INTERFACE modules and what is reached only through them. dvc.yaml (tests/test_dvc_yaml.py), the generated grid
pipelines (fisvd.grid) and the grid's cell memo key (fisvd.cells) all use this one list, so they
cannot drift apart.

INTERFACE modules parse, validate, describe and dispatch by name (the registry: tests hold every
method spec to its one implementation); they never shape a number: a stage's outputs depend
on the params' *values*, which DVC tracks key by key, and on the modules that compute. So a schema
edit (a new key, a new method spec, a reworded error or `--help`) re-runs nothing. What keeps this
safe: params are built from the YAML values unchanged (tests/test_params.py holds every parsed value
equal to the file's), and a changed output path or cell list changes dvc.yaml itself (tests hold
dvc.yaml to paths.py, and the generated grid pipelines to fisvd.grid).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INTERFACE = ("cli", "deps", "errors", "grid", "methods", "params", "paths", "registry", "validate")


def imports(path: Path, lazy: bool = False) -> set[str]:
    """fisvd modules `path` imports at module level (lazy=True: only those imported inside functions)."""
    tree = ast.parse(Path(path).read_text())
    top = set(map(id, tree.body))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and ((id(node) not in top) == lazy):
            if node.level == 1:
                mods.add(node.module)
            elif node.module.startswith("fisvd."):
                mods.add(node.module.split(".", 1)[1])
    return mods


def closure(script: str, root: Path = ROOT) -> list[str]:
    """Every fisvd module `script` (relative to root) imports at module level, transitively, sorted."""
    todo, seen = list(imports(root / script)), set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imports(root / "src" / "fisvd" / f"{m}.py"))
    return sorted(seen)


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
