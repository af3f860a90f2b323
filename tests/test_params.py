"""Param validation: typed schema, one line naming the key, exit code 2 before any output."""
import subprocess
import sys

import pytest
import yaml

import dataclasses

from fisvd.params import ParamError, Params, flat_keys, load_params, parse_params, registries
from conftest import ROOT


def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid_and_the_only_home_of_defaults():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params) and p.allocate.opts("max_fi").objective in ("total", "layerwise")
    classes = [Params] + [f.type for f in dataclasses.fields(Params) if f.name != "grids"]   # grids: raw overrides
    classes += [e.params for r in registries().values() for e in map(r.__getitem__, r.with_params())]
    for cls in classes:
        cls = cls if isinstance(cls, type) else eval(cls, vars(__import__("fisvd.params").params))
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, \
                f"{cls.__name__}.{f.name} has a default; defaults live in params.yaml alone"


MAPS = ("grid.limit.", "grid.max_train_samples.",   # maps by name: an absent entry means "no limit" / "whole split"
        "grids.")                                     # a grid's overrides: what it leaves out comes from the root


@pytest.mark.parametrize("key", [k for k in flat_keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
                                 if not k.startswith(MAPS)])
def test_every_key_is_required(key):
    raw = defaults()
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    del node[leaf]
    with pytest.raises(ParamError, match=f"^{key.replace('.', '[.]')}: missing key"):
        parse_params(raw)


@pytest.mark.parametrize("path,value,needle", [
    (("allocate", "fi_retention", "tau"), 0.0, "0.0 is out of range; allowed values are in (0, 1]"),
    (("allocate", "fi_retention", "tau"), 1.5, "(0, 1]"),
    (("allocate", "budget"), -0.1, "-0.1 is out of range; allowed values are in (0, 1]"),
    (("allocate", "budget"), 0, "0.0 is out of range"),
    (("allocate", "rank_multiple"), 0, ">= 1"),
    (("allocate", "rank_multiple"), 8.5, "expected an integer"),
    (("finetune", "epochs"), 0, ">= 1"),
    (("finetune", "batch_size"), -4, "-4 is out of range; allowed values are > 0"),
    (("fisher", "batch_size"), 0, "allowed values are > 0"),
    (("data", "task"), "mrcp", "cola, sst2, mrpc"),
    (("allocate", "method"), "fisher", "uniform_rank, uniform_ratio, energy, random, inter_layer_fi"),
    (("compress", "method"), "pca", "svd, fwsvd, tfwsvd"),
    (("compress", "tfwsvd", "tol"), 1.5, "[0, 1)"),
    (("compress", "tfwsvd", "max_iters"), -1, ">= 0"),
    (("allocate", "random", "seed"), "x", "expected an integer"),
    (("fisher", "mode"), "exact", "per_batch, per_sample"),
    (("allocate", "inter_layer_fi", "score"), "mean", "total, density, energy"),
    (("allocate", "inter_layer_fi", "r_min"), 0, ">= 1"),
    (("allocate", "inter_layer_fi", "alpha"), float("nan"), "finite"),
    (("allocate", "max_fi", "objective"), "sum", "total, layerwise"),
    (("finetune", "learning_rate"), "fast", "expected a number"),
    (("finetune", "epochs"), 2.5, "expected an integer"),
    (("allocate", "fi_retention", "calibrate"), "yes", "true or false"),
    (("finetune", "epochs"), True, "expected an integer"),
    (("model", "name"), "", "empty"),
    (("data", "max_train_samples"), 0, "> 0 or null"),
    (("data", "calibration_rows"), -1, "-1 is out of range; allowed values are >= 0"),
])
def test_bad_values_name_the_key(path, value, needle):
    raw = defaults()
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ParamError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert needle in msg and ".".join(path) in msg and "\n" not in msg


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["allocate"].update(fi_retension=0.9), "allocate.fi_retension: unknown key"),
    (lambda r: r["allocate"]["fi_retention"].update(tau2=0.9), "allocate.fi_retention.tau2: unknown key"),
    (lambda r: r["allocate"].update(calibrate=True), "allocate.calibrate: unknown key; allowed keys under "
     "allocate: method, budget, rank_multiple, budget_kind, speed_table, uniform_rank, uniform_ratio, energy, random, "
     "inter_layer_fi, fi_retention, max_fi, measured"),
    (lambda r: r["allocate"].update(uniform_rank={"x": 1}), "allocate.uniform_rank: uniform_rank has no options"),
    (lambda r: r.update(allocation={}), "allocation: unknown key"),
    (lambda r: r["compress"]["tfwsvd"].update(iters=3), "compress.tfwsvd.iters: unknown key"),
    (lambda r: r.update(fisher=[1, 2]), "fisher: expected a mapping"),
])
def test_unknown_keys_and_shapes(mutate, needle):
    raw = defaults()
    mutate(raw)
    with pytest.raises(ParamError, match=needle.replace(".", r"\.")):
        parse_params(raw)


def test_scientific_notation_and_ints_are_accepted_for_floats():
    raw = defaults()
    raw["finetune"]["learning_rate"] = 1
    raw["allocate"]["budget"] = 1
    raw["allocate"]["fi_retention"]["tau"] = 1
    p = parse_params(raw)
    assert p.finetune.learning_rate == 1.0 and isinstance(p.allocate.budget, float)
    assert p.allocate.options["fi_retention"].tau == 1.0 and isinstance(p.allocate.options["fi_retention"].tau, float)
    # written as YAML text: PyYAML reads 2e-5 (no dot) as a string, DVC (YAML 1.2) as a number; both work
    for text, want in (("2e-5", 2e-5), ("2.0e-5", 2e-5), ("5E-5", 5e-5), ("+1e-4", 1e-4)):
        raw["finetune"]["learning_rate"] = yaml.safe_load(f"v: {text}")["v"]
        assert parse_params(raw).finetune.learning_rate == want, text
    for bad in ("fast", "1e", "e-5", "2e-5x"):
        raw["finetune"]["learning_rate"] = bad
        with pytest.raises(ParamError, match="finetune.learning_rate: .* expected a number"):
            parse_params(raw)


@pytest.mark.parametrize("stage", ["prepare", "finetune", "fisher", "allocate", "compress", "evaluate"])
def test_stage_exits_2_with_one_line_and_writes_nothing(tmp_path, stage):
    raw = defaults()
    raw["allocate"]["fi_retention"]["tau"] = 2.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "allocate.fi_retention.tau" in lines[0] and "(0, 1]" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("stage,section", [("allocate", "allocate"), ("compress", "compress")])
def test_help_lists_every_registered_method_with_its_keys(stage, section):
    res = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    registry = registries()[section]
    for name in registry.names():
        entry = registry[name]
        assert f"{name} {' '.join(entry.help.split())}" in out
        assert all(k in out for k in entry.keys(section))
    want = {"allocate": "outputs: metrics/allocate/ranks.json", "compress": "outputs: data/compressed"}[stage]
    assert want in res.stdout


def test_help_names_what_the_data_and_report_stages_read():
    from fisvd.paths import INPUTS_TEXT, OUTPUTS_TEXT
    out = {}
    for stage, cwd in (("prepare", ROOT), ("report", ROOT / "grid")):
        res = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=cwd, capture_output=True,
                             text=True, env={**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"})
        assert res.returncode == 0, res.stderr
        out[stage] = res.stdout
    assert f"inputs: {INPUTS_TEXT['prepare']}" in out["prepare"] and "nyu-mll/glue" in out["prepare"]
    assert "results/*.json" in out["report"] and "(GLUE source)" not in out["report"]
    assert f"outputs: {OUTPUTS_TEXT['report']}" in out["report"] and "report-<name>" in out["report"]


def test_sequential_factorisation_cannot_pair_with_a_measuring_allocator():
    import yaml
    from fisvd.errors import ParamError
    from fisvd.params import parse_params
    from conftest import ROOT
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    parse_params(raw)                                    # the shipped grid keeps them apart
    bad = json_copy(raw)
    bad["compress"]["method"], bad["allocate"]["method"] = "kfac_seq", "measured"
    with pytest.raises(ParamError, match="allocate.method: measured"):
        parse_params(bad)
    bad = json_copy(raw)
    bad["grid"]["limit"]["kfac_seq"] = {"budgets": [50]}           # every allocation ...
    parse_params(bad)                                              # ... but measured's own limit excludes it
    bad["grid"]["limit"]["measured"]["factorisations"].append("kfac_seq")
    with pytest.raises(ParamError, match="grid.limit.kfac_seq.allocations"):
        parse_params(bad)


def json_copy(x):
    import json
    return json.loads(json.dumps(x))
