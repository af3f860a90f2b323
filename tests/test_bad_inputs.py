"""Bad inputs fail loudly and early: a specific exception naming the cause in the library, and
exit code 2 with one line and no output from the stages. (Param cases: test_params.py; GLUE files:
test_data.py; Fisher files: test_fisher.py; compressed dirs: test_lowrank_models.py.)"""
import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file

from fisvd.errors import AllocationError, FisherError, ModelError
from fisvd.fisher import check_against
from fisvd.models import dense_weights, resolve_model
from fisvd.ranks import read_ranks
from conftest import ROOT, write_mrpc

SHAPES = {"enc.0.q": (4, 4), "enc.0.ffn": (8, 4)}


def test_unknown_model_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        resolve_model("no-such-org/no-such-model-xyz")
    msg = str(err.value)
    assert "model.name" in msg and "HF_HUB_OFFLINE=1" in msg and "minilm-l6 or a local model directory" in msg


def test_model_path_that_does_not_exist(tmp_path):
    with pytest.raises(ModelError, match="neither minilm-l6, an existing local directory"):
        resolve_model(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_nan_weights_in_model_file(tmp_path):
    w = torch.ones(4, 4)
    w[1, 2] = float("nan")
    save_file({"enc.0.q.weight": w}, str(tmp_path / "model.safetensors"))
    skeleton = torch.nn.Module()                      # the structure (else built from the dir's config.json)
    skeleton.enc = torch.nn.ModuleList([torch.nn.Module()])
    skeleton.enc[0].q = torch.nn.Linear(4, 4)
    with pytest.raises(ModelError, match="enc.0.q.weight contains NaN or inf"):
        dense_weights(str(tmp_path), ["enc.0.q"], skeleton)
    with pytest.raises(ModelError, match="no tensor enc.0.k.weight"):
        dense_weights(str(tmp_path), ["enc.0.k"], skeleton)


def test_all_zero_fisher_matrix_is_rejected():
    F = {"enc.0.q": torch.zeros(4, 4), "enc.0.ffn": torch.ones(8, 4)}
    with pytest.raises(FisherError, match="enc.0.q is all zero"):
        check_against(F, SHAPES)


@pytest.mark.parametrize("rows,needle", [
    ([{"name": "enc.9.q", "rank": 2}], "'enc.9.q' is not a compressible matrix"),
    ([{"name": "enc.0.q", "rank": 0}], "rank 0 must be an integer >= 1"),
    ([{"name": "enc.0.q", "rank": 2.5}], "rank 2.5 must be an integer"),
    ([{"name": "enc.0.q", "rank": 9}], "rank 9 exceeds"),
])
def test_bad_ranks_file(tmp_path, rows, needle):
    p = tmp_path / "ranks.json"
    p.write_text(json.dumps({"matrices": rows}))
    with pytest.raises(AllocationError, match=needle):
        read_ranks(p, SHAPES)


def test_ranks_file_not_json(tmp_path):
    p = tmp_path / "ranks.json"
    p.write_text("{not json")
    with pytest.raises(AllocationError, match="not a ranks file"):
        read_ranks(p, SHAPES)
    assert read_ranks(_write(tmp_path, [{"name": "enc.0.q", "rank": 2, "dense": True}]), SHAPES) == {}


def _write(tmp_path, rows):
    p = tmp_path / "ok.json"
    p.write_text(json.dumps({"matrices": rows}))
    return p


def run_stage(stage, cwd, env_extra):
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=cwd, capture_output=True, text=True, env=env)


def one_error_line(res):
    lines = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("case", ["missing_glue_dir", "missing_task_folder", "bad_label"])
def test_prepare_bad_glue_exits_2_without_output(tmp_path, case):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "data/custom").mkdir(parents=True)      # committed in a checkout: an input of prepare
    glue = tmp_path / "glue"
    if case == "missing_task_folder":
        glue.mkdir()
    elif case == "bad_label":
        write_mrpc(glue)
        dev = glue / "MRPC" / "dev.tsv"
        dev.write_text(dev.read_text().replace("\n1\t", "\n2\t", 1))
    line = one_error_line(run_stage("prepare", tmp_path, {"GLUE_DIR": str(glue)}))
    needle = {"missing_glue_dir": "directory not found",     # a copy lacking the task: the hub, offline here
              "missing_task_folder": "lacks MRPC/train.tsv, dev.tsv, and nyu-mll/glue/mrpc: could not load",
              "bad_label": "label '2' not in 0, 1"}[case]
    assert needle in line and str(glue) in line
    assert not (tmp_path / "data" / "prepared").exists() and not (tmp_path / "metrics").exists()


def test_finetune_unknown_model_exits_2_without_output(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["name"] = "no-such-org/no-such-model-xyz"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_mrpc(tmp_path / "glue")
    (tmp_path / "data/custom").mkdir(parents=True)
    assert run_stage("prepare", tmp_path, {"GLUE_DIR": str(tmp_path / "glue")}).returncode == 0
    line = one_error_line(run_stage("finetune", tmp_path, {}))
    assert "model.name" in line and "no-such-org/no-such-model-xyz" in line
    assert not (tmp_path / "data" / "model").exists() and not (tmp_path / "metrics" / "finetune").exists()


@pytest.mark.parametrize("stage,present,missing,producer", [
    ("finetune", [], "data/prepared", "prepare"),
    ("fisher", [], "data/prepared", "prepare"),
    ("fisher", ["data/prepared"], "data/model", "finetune"),
    ("allocate", [], "data/prepared", "prepare"),
    ("allocate", ["data/prepared"], "data/model", "finetune"),
    ("allocate", ["data/prepared", "data/model"], "data/fisher.safetensors", "fisher"),
    ("allocate", ["data/prepared", "data/model", "data/fisher.safetensors"], "data/stats.safetensors", "fisher"),
    ("compress", ["data/prepared", "data/model", "data/fisher.safetensors", "data/stats.safetensors"], "metrics/allocate/ranks.json",
     "allocate"),
    ("evaluate", ["data/prepared", "data/model"], "data/compressed", "compress"),
])
def test_missing_input_exits_2_before_touching_outputs_or_the_hub(tmp_path, stage, present, missing, producer):
    from fisvd.paths import STAGES
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    for path in present:                       # inputs that exist (content irrelevant: checked first)
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).mkdir() if "." not in path.rsplit("/", 1)[-1] else (tmp_path / path).write_text("x")
    outs = {}
    for path in STAGES[stage][1]:              # tracked outputs of an earlier run must survive
        out = tmp_path / path / "old.json" if "." not in path.rsplit("/", 1)[-1] else tmp_path / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text('{"old": 1}')
        outs[out] = out.read_text()
    # no HF_HUB_OFFLINE: a hub request would go to a closed loopback port and fail with another message
    res = run_stage(stage, tmp_path, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"})
    line = one_error_line(res)
    assert line == (f"error: invalid input: {missing}: missing input of stage {stage}; "
                    f"run `dvc repro {producer}` first")
    assert "Traceback" not in res.stderr and "huggingface" not in res.stderr.lower()
    assert all(p.read_text() == text for p, text in outs.items())


def test_recorded_writes_a_run_even_one_cut_short_but_not_a_help_or_argument_exit(tmp_path):
    """benchmarks/*.py run inside fisvd.results.recorded: `--help` once overwrote a committed result."""
    import argparse
    from fisvd.results import recorded
    out = tmp_path / "r.md"
    out.write_text("committed")
    for argv in (["--help"], ["--no-such-flag"]):
        with pytest.raises(SystemExit), recorded(str(out)):
            argparse.ArgumentParser().parse_args(argv)
        assert out.read_text() == "committed"
    with pytest.raises(ValueError), recorded(str(out)):
        print("half a table")
        raise ValueError("boom")
    text = out.read_text()
    assert "half a table" in text and "STOPPED by ValueError: boom" in text
    with recorded(str(out)):
        print("a whole table")
    assert "a whole table" in out.read_text() and "STOPPED" not in out.read_text()
