"""dvc.yaml stays honest: each stage's code deps are exactly `fisvd.deps.code_deps` of its script
(the computing modules it imports, transitively; interface modules — params, CLI, method specs,
paths, errors — excluded, with the reasons in fisvd.deps), plus exactly its pipeline inputs from
`fisvd.paths`; its outs cover exactly the paths `fisvd.paths` gives it; its params are exactly the
keys the stage declares (its `KEYS`), the method stages naming the chosen method's section only."""
import importlib
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from fisvd import paths
from fisvd.deps import INTERFACE, code_deps, imports

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
MODULES = sorted((ROOT / "src" / "fisvd").glob("*.py"))


def test_no_module_imports_fisvd_lazily():
    """The dependency closure reads module-level imports: a lazy `from .x import` would hide a dep."""
    files = MODULES + sorted((ROOT / "stages").glob("*.py"))
    assert {p.stem: imports(p, lazy=True) for p in files if imports(p, lazy=True)} == {}


def test_the_import_scanner_reads_every_import_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import fisvd.io\nimport fisvd.stats as st, os\nfrom fisvd import data\nfrom fisvd.models import x\n"
                   "from . import plan\nfrom .lowrank import y\n\ndef f():\n    import fisvd.speed\n")
    assert imports(src) == {"io", "stats", "data", "models", "plan", "lowrank"}
    assert imports(src, lazy=True) == {"speed"}


def loaded(code: str) -> set[str]:
    """fisvd modules in sys.modules after running `code` in a fresh interpreter (an independent scan)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(m.split('.')[1] "
                          "for m in sys.modules if m.startswith('fisvd.'))))"], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-800:]
    return set(out.stdout.split())


def test_stage_deps_against_the_modules_python_actually_loads():
    """Independent of the AST scanner: each stage's code deps lie between the fisvd modules importing its
    script loads (upper bound) and those less what the interface modules alone load (lower bound)."""
    interface = loaded("; ".join(f"import fisvd.{m}" for m in INTERFACE))
    for stage in DVC:
        mods = loaded(f"import stages.{stage}")
        deps = {Path(d).stem for d in DVC[stage]["deps"] if d.startswith("src/fisvd/")}
        assert mods - interface <= deps <= mods, (stage, sorted(mods - interface - deps), sorted(deps - mods))


SPECS = {"methods", "registry"}      # torch-free too, but code deps: needs / sliceable / budgeted shape outputs


@pytest.mark.parametrize("module", INTERFACE)
def test_interface_modules_compute_nothing(module):
    """The modules left out of code deps import neither torch nor numpy, nor any computing module
    (only the method specs, which params validation reads)."""
    src = (ROOT / "src" / "fisvd" / f"{module}.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(torch|numpy|scipy|sklearn)\b", src, re.M)
    assert imports(ROOT / "src" / "fisvd" / f"{module}.py") <= set(INTERFACE) | SPECS


def test_method_specs_are_code_deps_of_the_stages_that_dispatch_methods():
    for stage in ("allocate", "compress"):
        assert {"src/fisvd/methods.py", "src/fisvd/registry.py"} <= set(DVC[stage]["deps"])
    for stage in ("prepare", "finetune", "fisher", "evaluate"):
        assert "src/fisvd/methods.py" not in DVC[stage]["deps"]


@pytest.mark.parametrize("stage", list(DVC))
def test_deps_are_exactly_the_code_deps_and_inputs(stage):
    deps = DVC[stage]["deps"]
    assert DVC[stage]["cmd"] == f"python -m stages.{stage}"
    code = [d for d in deps if d.startswith(("src/", "stages/"))]
    assert code == code_deps(f"stages/{stage}.py")
    assert [d for d in deps if d not in code] == list(paths.STAGES[stage][0])


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


def resolve(key: str, raw: dict) -> str:
    """A dvc.yaml params entry with `${a.b}` interpolated from params.yaml (as DVC does)."""
    def value(m):
        node = raw
        for part in m.group(1).split("."):
            node = node[part]
        return str(node)
    return re.sub(r"\$\{([^}]+)\}", value, key)


def direct_reads(stage):
    """params keys the stage script reads directly: `params.<section>.<key>` and `<alias>.<key>`."""
    src = (ROOT / "stages" / f"{stage}.py").read_text()
    keys = set(re.findall(r"params\.([a-z_]+)\.([a-z_]+)", src))
    for alias, section in re.findall(r"(\w+) = params\.([a-z_]+)\n", src):
        keys |= {(section, k) for k in re.findall(rf"\b{alias}\.([a-z_]+)\b(?!\()", src)}
    for a1, a2, s1, s2 in re.findall(r"(\w+), (\w+) = params\.([a-z_]+), params\.([a-z_]+)\n", src):
        for alias, section in ((a1, s1), (a2, s2)):
            keys |= {(section, k) for k in re.findall(rf"\b{alias}\.([a-z_]+)\b(?!\()", src)}
    return {f"{s}.{k}" for s, k in keys}


@pytest.mark.parametrize("stage", list(DVC))
def test_params_are_exactly_the_declared_keys(stage):
    keys = importlib.import_module(f"stages.{stage}").KEYS
    declared = DVC[stage].get("params", [])
    assert sorted(declared) == sorted(keys) and len(set(declared)) == len(declared)
    for key in declared:
        node = PARAMS
        for part in resolve(key, PARAMS).split("."):
            node = node[part]
    # every key the script reads directly is declared (method sections are read through opts())
    assert direct_reads(stage) <= set(declared) | {"allocate.opts", "compress.opts"}


def test_method_stages_depend_on_the_chosen_methods_options_only():
    """`allocate`/`compress` name `<section>.${<section>.method}`, never another method's section, and
    every method has a section (`{}` without options), so the interpolation resolves for any choice."""
    from fisvd.params import registries
    for section, registry in registries().items():
        assert set(registry.names()) <= set(PARAMS[section])
        for stage in {"allocate": ("allocate",), "compress": ("allocate", "compress")}[section]:
            declared = DVC[stage]["params"]
            assert f"{section}.method" in declared and f"{section}.${{{section}.method}}" in declared
            assert not {f"{section}.{m}" for m in registry.names()} & set(declared)
        for name in registry.names():
            raw = {**PARAMS, section: {**PARAMS[section], "method": name}}
            assert resolve(f"{section}.${{{section}.method}}", raw) == f"{section}.{name}"
