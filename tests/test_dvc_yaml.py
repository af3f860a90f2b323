"""dvc.yaml stays honest: each stage's deps are exactly the fisvd modules it imports (transitively,
module-level imports; the lazily imported method registries that params validation reads do not
shape a stage's outputs) plus exactly its pipeline inputs from `fisvd.paths`; its outs cover exactly
the paths `fisvd.paths` gives it; its params are exactly the keys the stage declares (its `KEYS`,
which read the method registries), and every key is declared in params.yaml."""
import ast
import importlib
import re

import pytest
import yaml

from conftest import ROOT
from fisvd import paths

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def fisvd_imports(path, lazy=False):
    """fisvd modules imported at module level (lazy=True: only those imported inside functions)."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and ((id(node) not in top) == lazy):
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


def test_only_params_imports_lazily_and_only_the_registries():
    lazy = {p.stem: fisvd_imports(p, lazy=True) for p in (ROOT / "src" / "fisvd").glob("*.py")}
    assert {k: v for k, v in lazy.items() if v} == {"params": {"allocate", "factorize"}}


@pytest.mark.parametrize("stage", list(DVC))
def test_deps_are_exactly_the_imported_modules_and_inputs(stage):
    deps = DVC[stage]["deps"]
    declared = {d[len("src/fisvd/"):-3] for d in deps if d.startswith("src/fisvd/")}
    assert declared == closure(fisvd_imports(ROOT / "stages" / f"{stage}.py"))
    assert f"stages/{stage}.py" in deps and DVC[stage]["cmd"] == f"python -m stages.{stage}"
    data_deps = [d for d in deps if not d.startswith(("src/", "stages/"))]
    assert data_deps == list(paths.STAGES[stage][0])


@pytest.mark.parametrize("stage", list(DVC))
def test_outputs_are_the_paths_module_outputs(stage):
    declared = []
    for kind in ("outs", "metrics", "plots"):
        declared += [next(iter(o)) if isinstance(o, dict) else o for o in DVC[stage].get(kind, [])]
    outs = paths.STAGES[stage][1]
    assert all(any(d == o or d.startswith(o + "/") for o in outs) for d in declared), declared
    assert all(any(d == o or d.startswith(o + "/") for d in declared) for o in outs), outs


def test_runtime_figures_are_top_level_metrics_not_stage_outputs():
    top = yaml.safe_load((ROOT / "dvc.yaml").read_text())["metrics"]
    assert sorted(top) == sorted(paths.RUNTIME.values())
    for stage, path in paths.RUNTIME.items():
        src = (ROOT / "stages" / f"{stage}.py").read_text()
        assert "write_json(" in src and any(c in src for c in ("FINETUNE_RUNTIME", "FISHER_RUNTIME", "LATENCY"))


def direct_reads(stage):
    """params keys the stage script reads directly: `params.<section>.<key>` and `<alias>.<key>`."""
    src = (ROOT / "stages" / f"{stage}.py").read_text()
    keys = set(re.findall(r"params\.([a-z_]+)\.([a-z_]+)", src))
    for alias, section in re.findall(r"(\w+) = params\.([a-z_]+)\n", src):
        keys |= {(section, k) for k in re.findall(rf"\b{alias}\.([a-z_]+)\b(?!\()", src)}
    return {f"{s}.{k}" for s, k in keys}


@pytest.mark.parametrize("stage", list(DVC))
def test_params_are_exactly_the_declared_keys(stage):
    keys = importlib.import_module(f"stages.{stage}").KEYS
    declared = DVC[stage].get("params", [])
    assert sorted(declared) == sorted(keys) and len(set(declared)) == len(declared)
    for key in declared:
        node = PARAMS
        for part in key.split("."):
            node = node[part]
    # every key the script reads directly is declared (registry sections are read through opts())
    assert direct_reads(stage) <= set(declared) | {"allocate.opts", "compress.opts"}


def test_method_sections_are_param_deps_of_their_stage():
    from fisvd.params import registries
    for section, registry in registries().items():
        stage = {"allocate": "allocate", "compress": "compress"}[section]
        declared = set(DVC[stage]["params"])
        assert {f"{section}.{m}" for m in registry.with_params()} <= declared
        assert f"{section}.method" in declared
