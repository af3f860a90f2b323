"""Outputs do not depend on the environment (issue 22 item 6): the saved tokenizer drops the loading
options transformers records (`local_files_only` follows HF_HUB_OFFLINE; compress saves it the same
way), and the whole pipeline, prepare → evaluate, writes the same bytes with and without HF_HUB_OFFLINE=1
(data/ and metrics/, the run-time and latency files aside: they hold measured times)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, write_mrpc
from fisvd.paths import RUNTIME


def test_saved_tokenizer_is_the_same_whatever_the_loading_options(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer
    from fisvd.models import save_tokenizer
    for offline in (True, False):
        save_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=offline), tmp_path / str(offline))
    a, b = ((tmp_path / str(o) / "tokenizer_config.json").read_bytes() for o in (True, False))
    assert a == b and b"local_files_only" not in a


def digests(folder):
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_stage_outputs_are_byte_identical_with_and_without_hf_hub_offline(tmp_path, tiny_model_dir):
    glue = write_mrpc(tmp_path / "glue", n_train=24, n_dev=8)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["name"] = str(tiny_model_dir)
    params["finetune"].update(epochs=1, batch_size=8, max_length=32)
    params["allocate"]["method"], params["compress"]["method"] = "uniform_rank", "svd"
    params["evaluate"]["latency_batches"], params["allocate"]["speed_table"] = 1, None   # no table in the folder
    outs = {}
    for offline in ("1", None):
        work = tmp_path / f"run-{offline}"
        (work / "data/custom").mkdir(parents=True)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update({"GLUE_DIR": str(glue), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "FISVD_LOG": "WARNING"})
        if offline:
            env["HF_HUB_OFFLINE"] = offline
        both = ("import importlib; from fisvd.params import load_params\n"   # one process: HF_HUB_OFFLINE is
                "for s in ('prepare', 'finetune', 'fisher', 'allocate', 'compress', 'evaluate'):\n"
                "    importlib.import_module('stages.' + s).main(load_params('params.yaml'))")
        done = subprocess.run([sys.executable, "-c", both], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-1500:]
        shutil.rmtree(work / "data/.finetune-checkpoints", ignore_errors=True)
        timed = {Path(f).relative_to("metrics").as_posix() for f in RUNTIME.values()}
        outs[offline] = ({f"data/{k}": v for k, v in digests(work / "data").items()}
                         | {f"metrics/{k}": v for k, v in digests(work / "metrics").items() if k not in timed})
    assert outs["1"] == outs[None]
    assert {"data/model/tokenizer_config.json", "data/compressed/tokenizer_config.json",
            "data/fisher.safetensors", "metrics/allocate/ranks.json", "metrics/evaluate/metrics.json"} <= set(outs["1"])
