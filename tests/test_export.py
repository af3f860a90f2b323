"""Out the door (issue 21): ONNX export with onnxruntime parity for every model family, and
`python -m fisvd.export` on a finished tiny run: the deployable directory, its model card, the ONNX
parity on the whole dev set, loading with plain transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from fisvd.evaluate import model_inputs
from fisvd.export import export_onnx, onnx_logits, parity, session
from fisvd.factorize import svd
from fisvd.lowrank import LowRankLinear, apply_lowrank, load_compressed
from fisvd.models import compressible_linears, linearize
from conftest import FAMILIES, tiny_family


def batch_for(model, n=3, length=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    mask = torch.ones_like(ids)
    if n > 1:
        mask[1, length // 2:] = 0
    full = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {k: full[k] for k in model_inputs(model)}


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_matches_pytorch_for_every_family(tmp_path, family):
    model = linearize(tiny_family(family, vocab_size=100, num_labels=2, pad_token_id=0))
    mats = compressible_linears(model)
    apply_lowrank(model, {m.name: svd(model.get_submodule(m.name).weight.detach(), 3) for m in mats})
    model.train()                                         # export must put it in eval (dropout off) itself
    inputs = export_onnx(model, tmp_path / "m.onnx", batch_for(model, n=2, length=9, seed=0))
    assert set(inputs) <= set(model_inputs(model)) and "input_ids" in inputs
    sess = session(tmp_path / "m.onnx", threads=1)
    for n, length in ((2, 9), (3, 13), (1, 30)):             # other batch sizes and lengths than traced
        batch = batch_for(model, n, length)
        with torch.no_grad():
            ref = model(**batch).logits.numpy()
        assert np.abs(onnx_logits(sess, batch) - ref).max() <= 1e-5
    assert not model.training and all(not m.training for m in model.modules())   # export left it in eval


def test_export_cli_writes_a_deployable_directory(ran_project, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from fisvd.export import main
    main(["--out", "models/export"])
    out = ran_project / "models/export"
    for f in ("lowrank.safetensors", "config.json", "ranks.json", "modeling_fisvd.py", "model.onnx", "README.md",
              "export.json", "tokenizer_config.json"):
        assert (out / f).is_file(), f
    info = json.loads((out / "export.json").read_text())["onnx"]
    assert info["examples"] == 16 and info["max_abs_diff"] <= 1e-4     # the whole (tiny) dev set
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    params = yaml.safe_load((ran_project / "params.yaml").read_text())
    metrics = json.loads((ran_project / "metrics/evaluate/metrics.json").read_text())
    assert front["base_model"] == params["model"]["name"] and front["library_name"] == "transformers"
    assert {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]} == \
        {"f1": metrics["compressed"]["f1"], "accuracy": metrics["compressed"]["accuracy"]}
    lo, hi = metrics["compressed"]["ci95"]
    assert lo <= metrics["compressed"]["score"] <= hi
    assert f"| compressed | {metrics['compressed']['score']:.2f} [{lo:.1f}, {hi:.1f}]" in text
    latency = json.loads((ran_project / "metrics/evaluate/latency.json").read_text())
    assert f"({latency['speedup']}× faster" in text and "fisvd commit `" in text
    assert "allocate.method=fi_retention" in text and "python -m fisvd.export --out models/export" in text
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["a cat sees the dog", "the red car"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hub = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
        assert any(type(m).__name__ == "LowRankLinear" for m in hub.modules())
        assert torch.equal(hub(**enc).logits, load_compressed(ran_project / "data/compressed")(**enc).logits)
    sess = session(out / "model.onnx")
    enc = {k: v for k, v in enc.items() if k in model_inputs(hub)}
    assert np.abs(onnx_logits(sess, enc) - hub(**enc).logits.detach().numpy()).max() <= 1e-4


def test_export_without_a_finished_run_is_one_line(project, capsys):
    from fisvd.export import main
    with pytest.raises(SystemExit) as exit_:
        main(["--out", "models/export"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == ["error: invalid input: data/compressed: missing; run `dvc repro` first"]
    assert not (project / "models/export").exists()


def test_parity_reports_the_largest_difference(tmp_path):
    model = tiny_family("bert", vocab_size=100, num_labels=2).eval()
    export_onnx(model, tmp_path / "m.onnx", batch_for(model, 2, 9, 0))
    sess = session(tmp_path / "m.onnx")
    feats = [{"input_ids": [2, 5, 7, 9][: 2 + i % 3], "attention_mask": [1] * (2 + i % 3),
              "token_type_ids": [0] * (2 + i % 3)} for i in range(7)]
    collator = lambda fs: {k: torch.tensor([f[k] + [0] * (4 - len(f[k])) for f in fs]) for k in fs[0]}  # noqa: E731
    got = parity(model, sess, feats, 3, collator)
    assert got["examples"] == 7 and got["max_abs_diff"] <= 1e-5
    with torch.no_grad():                       # a different PyTorch model: the difference is reported
        model.classifier.bias += 0.5
    assert parity(model, sess, feats, 3, collator)["max_abs_diff"] == pytest.approx(0.5, abs=1e-4)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())


def test_export_publishes_nothing_when_parity_fails_or_params_moved_on(ran_project, capsys):
    from fisvd.export import main
    with pytest.raises(SystemExit) as exit_:
        main(["--out", "models/x", "--tolerance", "-1"])            # every difference is too large
    assert exit_.value.code == 1 and not (ran_project / "models/x").exists()
    assert "nothing written to models/x" in capsys.readouterr().err
    params = yaml.safe_load((ran_project / "params.yaml").read_text())
    params["data"]["task"] = "rte"                                    # edited after the run
    (ran_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(SystemExit) as exit_:
        main(["--out", "models/y"])
    assert exit_.value.code == 2 and not (ran_project / "models/y").exists()
    assert "params.yaml says rte: run `dvc repro` first" in capsys.readouterr().err
