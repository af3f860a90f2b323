"""dvc.yaml stays honest: each stage's deps are exactly the fisvd modules it imports (transitively),
its params are exactly the keys it reads, and every key is declared in params.yaml."""
import ast
import re

import pytest
import yaml

from conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def fisvd_imports(path):
    tree = ast.parse(path.read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 1:
                mods.add(node.module)
            elif node.module.startswith("fisvd."):
                mods.add(node.module.split(".", 1)[1])
    return mods


def closure(mods):
    todo, seen = list(mods), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(fisvd_imports(ROOT / "src" / "fisvd" / f"{m}.py"))
    return seen


@pytest.mark.parametrize("stage", list(DVC))
def test_deps_are_exactly_the_imported_modules(stage):
    deps = DVC[stage]["deps"]
    declared = {d[len("src/fisvd/"):-3] for d in deps if d.startswith("src/fisvd/")}
    assert declared == closure(fisvd_imports(ROOT / "stages" / f"{stage}.py"))
    assert f"stages/{stage}.py" in deps and DVC[stage]["cmd"] == f"python -m stages.{stage}"


def read_keys(stage):
    """params keys the stage script reads: `params.<section>.<key>` and `<alias>.<key>` of a section alias."""
    src = (ROOT / "stages" / f"{stage}.py").read_text()
    keys = set(re.findall(r"params\.([a-z_]+)\.([a-z_]+)", src))
    for alias, section in re.findall(r"(\w+) = params\.([a-z_]+)\n", src):
        keys |= {(section, k) for k in re.findall(rf"\b{alias}\.([a-z_]+)", src)}
    out = set()
    for section, key in keys:
        value = PARAMS[section][key]
        if isinstance(value, dict):
            sub = re.findall(rf"\.{key}\.([a-z_]+)", src)
            out |= {f"{section}.{key}.{s}" for s in sub}
        else:
            out.add(f"{section}.{key}")
    return out


@pytest.mark.parametrize("stage", list(DVC))
def test_params_are_exactly_the_keys_read(stage):
    declared = set(DVC[stage].get("params", []))
    assert declared == read_keys(stage)
    for key in declared:
        node = PARAMS
        for part in key.split("."):
            node = node[part]
