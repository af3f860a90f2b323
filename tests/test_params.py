"""Param validation: typed schema, one line naming the key, exit code 2 before any output."""
import subprocess
import sys

import pytest
import yaml

from fisvd.params import ParamError, Params, load_params, parse_params
from conftest import ROOT


def defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid_and_match_dataclass_defaults():
    p = load_params(ROOT / "params.yaml")
    assert p == Params(), "params.yaml and the dataclass defaults must agree"


@pytest.mark.parametrize("path,value,needle", [
    (("allocate", "fi_retention"), 0.0, "allocate.fi_retention"),
    (("allocate", "fi_retention"), 1.5, "(0, 1]"),
    (("allocate", "budget"), -0.1, "allocate.budget"),
    (("allocate", "budget"), 0, "allocate.budget"),
    (("allocate", "rank_multiple"), 0, "allocate.rank_multiple"),
    (("allocate", "rank_multiple"), 8.5, "expected an integer"),
    (("finetune", "epochs"), 0, "finetune.epochs"),
    (("finetune", "batch_size"), -4, "finetune.batch_size"),
    (("fisher", "batch_size"), 0, "fisher.batch_size"),
    (("data", "task"), "mrcp", "cola, sst2, mrpc"),
    (("allocate", "method"), "fisher", "uniform_rank"),
    (("compress", "method"), "pca", "svd, fwsvd, tfwsvd"),
    (("fisher", "mode"), "exact", "per_batch, per_sample"),
    (("allocate", "score"), "mean", "total, density, energy"),
    (("allocate", "objective"), "sum", "total, layerwise"),
    (("finetune", "learning_rate"), "fast", "finetune.learning_rate"),
    (("finetune", "epochs"), 2.5, "expected an integer"),
    (("allocate", "calibrate"), "yes", "true or false"),
    (("finetune", "epochs"), True, "expected an integer"),
    (("allocate", "alpha"), float("nan"), "allocate.alpha"),
    (("model", "name"), "", "model.name"),
    (("data", "max_train_samples"), 0, "data.max_train_samples"),
])
def test_bad_values_name_the_key(path, value, needle):
    raw = defaults()
    raw[path[0]][path[1]] = value
    with pytest.raises(ParamError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert needle in msg and ".".join(path) in msg and "\n" not in msg


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["allocate"].update(fi_retension=0.9), "allocate.fi_retension: unknown key"),
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
    p = parse_params(raw)
    assert p.finetune.learning_rate == 1.0 and isinstance(p.allocate.budget, float)


@pytest.mark.parametrize("stage", ["prepare", "finetune", "fisher", "allocate", "compress", "evaluate"])
def test_stage_exits_2_with_one_line_and_writes_nothing(tmp_path, stage):
    raw = defaults()
    raw["allocate"]["fi_retention"] = 2.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "allocate.fi_retention" in lines[0] and "(0, 1]" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_help_explains_stage_and_keys():
    res = subprocess.run([sys.executable, "-m", "stages.allocate", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "allocate.*" in res.stdout and "ranks.json" in res.stdout
