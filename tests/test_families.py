"""Model families (issue 21): BERT, RoBERTa, DistilBERT, ELECTRA, MPNet, DeBERTa-v2/v3, ModernBERT
(fused Wqkv, gated Wi), GPT-2 (Conv1D) and Llama/Qwen2 decoder classifiers, each a tiny random model
built here (conftest.FAMILIES). Discovery and full-rank exactness: tests/test_lowrank_models.py.
Here: the GPT-2 checkpoint layout, the pad token of decoders, compressed directories loading with
plain transformers (`trust_remote_code`, `pipeline`), and one tiny pipeline run per family on the
shipped params.yaml (only the model and the data size changed)."""
from __future__ import annotations

import ast
import importlib
import json
import shutil
import sys

import pytest
import torch
import yaml

from fisvd.factorize import svd
from fisvd.lowrank import MODELING_FILE, LowRankLinear, apply_lowrank, load_compressed, save_compressed
from fisvd.models import Conv1DLinear, compressible_linears, linearize, load_classifier, load_tokenizer
from conftest import (DECODERS, FAMILIES, FAMILY_TYPES, MRPC_WORDS, ROOT, bpe_tokenizer, family_model_dir,
                      tiny_family, write_mrpc)

TEXTS = ["the cat sees a dog", "red car", "a big blue house sleeps quickly"]


def test_gpt2_conv1d_becomes_a_linear_and_saves_in_gpt2_layout(tmp_path):
    from transformers import GPT2ForSequenceClassification
    orig = tiny_family("gpt2", num_labels=2)
    ids = torch.randint(1, 100, (2, 9))
    with torch.no_grad():
        ref = orig(input_ids=ids).logits
    model = linearize(tiny_family("gpt2", num_labels=2))
    conv = [n for n, m in model.named_modules() if isinstance(m, Conv1DLinear)]
    assert len(conv) == 8 and all(n in {i.name for i in compressible_linears(model)} for n in conv)
    c_attn = model.get_submodule("transformer.h.0.attn.c_attn")
    assert tuple(c_attn.weight.shape) == (96, 32)           # [out, in] in memory, like every nn.Linear
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, ref, atol=1e-6)
    model.save_pretrained(tmp_path)
    plain = GPT2ForSequenceClassification.from_pretrained(tmp_path).eval()   # GPT-2's own class, [in, out]
    assert tuple(plain.transformer.h[0].attn.c_attn.weight.shape) == (32, 96)
    again = load_classifier(str(tmp_path), 2).eval()
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, ref, atol=1e-6)
        assert torch.allclose(again(input_ids=ids).logits, ref, atol=1e-6)
    # the square c_proj (32x32) cannot be told apart by shape: it must round-trip transposed too
    w = model.get_submodule("transformer.h.1.attn.c_proj").weight
    assert torch.equal(again.get_submodule("transformer.h.1.attn.c_proj").weight, w)


def test_decoder_tokenizer_without_pad_pads_with_eos_and_config_learns_it(tmp_path):
    tok = bpe_tokenizer(MRPC_WORDS * 20)
    assert tok.pad_token is None
    model = tiny_family("llama", vocab_size=len(tok), num_labels=2)
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded_tok = load_tokenizer(str(tmp_path))
    assert loaded_tok.pad_token == "<|endoftext|>" == loaded_tok.eos_token
    clf = load_classifier(str(tmp_path), 2, pad_token_id=loaded_tok.pad_token_id)
    assert clf.config.pad_token_id == loaded_tok.pad_token_id
    enc = loaded_tok(TEXTS, padding=True, return_tensors="pt")   # batch > 1 needs the pad id
    with torch.no_grad():
        batch = clf.eval()(**enc).logits
        alone = torch.cat([clf(**loaded_tok([t], return_tensors="pt")).logits for t in TEXTS])
    assert torch.allclose(batch, alone, atol=1e-5)   # padding does not change a decoder's prediction


def compressed_dir(tmp_path, family):
    tok = bpe_tokenizer(MRPC_WORDS * 20)
    tok.pad_token = tok.eos_token
    model = linearize(tiny_family(family, vocab_size=len(tok), num_labels=2, pad_token_id=tok.pad_token_id))
    mats = compressible_linears(model)
    apply_lowrank(model, {m.name: svd(model.get_submodule(m.name).weight.detach(), 3) for m in mats[:-2]})
    save_compressed(model, tmp_path, tok)
    return model, tok, len(mats) - 2


@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_dir_loads_with_plain_transformers(tmp_path, family):
    from transformers import AutoModelForSequenceClassification, pipeline
    model, tok, n_low = compressed_dir(tmp_path / "c", family)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits
        mine = load_compressed(tmp_path / "c")
        assert torch.equal(mine(**enc).logits, ref)
        hub = AutoModelForSequenceClassification.from_pretrained(tmp_path / "c", trust_remote_code=True)
        assert type(hub).__name__ == type(tiny_family(family)).__name__   # the base class, compressed
        assert sum(isinstance(m, torch.nn.Module) and type(m).__name__ == "LowRankLinear"
                   for m in hub.modules()) == n_low
        assert torch.equal(hub(**enc).logits, ref)
    clf = pipeline("text-classification", model=str(tmp_path / "c"), trust_remote_code=True, top_k=None)
    with torch.no_grad():   # the pipeline runs one text at a time (no padding), with the saved tokenizer
        probs = torch.cat([torch.softmax(model(**clf.tokenizer([t], return_tensors="pt")).logits, -1)
                           for t in TEXTS])
    for row, out in zip(probs, clf(TEXTS)):
        got = {d["label"]: d["score"] for d in out}
        assert got == pytest.approx({"LABEL_0": float(row[0]), "LABEL_1": float(row[1])}, abs=1e-6)
    # without trust_remote_code: a loud error, never a model with randomly initialised layers
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "c")
    # transformers registered the remote class for this config class: a dense directory still loads densely
    dense = tiny_family(family, vocab_size=len(tok), num_labels=2, pad_token_id=tok.pad_token_id)
    dense.save_pretrained(tmp_path / "d")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "d")
    assert not any(isinstance(m, LowRankLinear) or type(m).__name__ == "LowRankLinear" for m in again.modules())


def test_modeling_file_needs_nothing_but_torch_transformers_safetensors(tmp_path):
    compressed_dir(tmp_path, "bert")
    tree = ast.parse((tmp_path / MODELING_FILE).read_text())
    tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    tops |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert tops <= {"__future__", "json", "pathlib", "torch", "transformers", "safetensors"}, tops
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoModelForSequenceClassification": "modeling_fisvd.FisvdForSequenceClassification"}


# ---- one tiny pipeline run per family, on the shipped params.yaml ----------------------------------

STAGES = ["prepare", "finetune", "fisher", "allocate", "compress", "evaluate"]


def run_stages(names=STAGES):
    """The stages' main(params) in this process, in the current directory (the DVC-driven runs are in
    test_pipeline.py; here the point is every family through every stage's code)."""
    from fisvd.params import load_params
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for name in names:
        importlib.import_module(f"stages.{name}").main(load_params("params.yaml"))


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_mrpc(tmp_path_factory.mktemp("glue"), n_train=32, n_dev=16)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_the_pipeline_on_the_shipped_params(tmp_path, family, glue_dir, minilm_tokenizer, monkeypatch):
    model_dir = family_model_dir(tmp_path / "model", family, minilm_tokenizer)
    work = tmp_path / "run"
    (work / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks/results/latency_table_cpu.json", work / "benchmarks/results")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["name"] = str(model_dir)                  # only the model and the data size change
    params["finetune"]["epochs"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    monkeypatch.chdir(work)
    run_stages()
    ranks = json.loads((work / "metrics/allocate/ranks.json").read_text())
    assert ranks["totals"]["method"] == "max_fi" and len(ranks["matrices"]) == 2 * len(FAMILY_TYPES[family])
    assert ranks["totals"]["speed_missing"]          # tiny shapes: not in MiniLM's table, announced
    metrics = json.loads((work / "metrics/evaluate/metrics.json").read_text())
    assert metrics["compressed"]["params"] < metrics["dense"]["params"] and metrics["kept_ratio"] <= 0.5
    if family in DECODERS:
        cfg = json.loads((work / "data/model/config.json").read_text())
        assert cfg["pad_token_id"] == load_tokenizer(str(model_dir)).eos_token_id
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(work / "data/compressed")
    tok.pad_token = tok.pad_token or tok.eos_token
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hub = AutoModelForSequenceClassification.from_pretrained(work / "data/compressed", trust_remote_code=True)
        assert torch.equal(hub(**enc).logits, load_compressed(work / "data/compressed")(**enc).logits)


# ---- mismatches known before fine-tuning: exit 2, one line, before training --------------------------

def shipped_params(tmp_path, **changes):
    from fisvd.params import load_params
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        params[section][name] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("family, limit", [("gpt2", 160), ("roberta", 161), ("bert", 160), ("mpnet", 158),
                                           ("llama", None), ("deberta-v3", None)])
def test_preflight_max_length_against_learned_positions(tmp_path, family, limit, minilm_tokenizer):
    from fisvd.errors import ParamError
    from fisvd.preflight import check
    d = str(family_model_dir(tmp_path / "m", family, minilm_tokenizer))
    if limit is None:       # rotary / relative positions: no limit from the config
        check(shipped_params(tmp_path, finetune__max_length=4096), d, [])
        return
    check(shipped_params(tmp_path, finetune__max_length=limit), d, [])
    with pytest.raises(ParamError, match=f"finetune.max_length: {limit + 1} exceeds the {limit} positions"):
        check(shipped_params(tmp_path, finetune__max_length=limit + 1), d, [])
    # the model itself: `limit` tokens run, one more indexes past its position table
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(d).eval()
    ids = lambda n: torch.arange(n).remainder(40).add(5)[None]      # noqa: E731  no pad / special ids
    with torch.no_grad():
        assert model(input_ids=ids(limit)).logits.shape[0] == 1
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=ids(limit + 1))


def test_preflight_latency_budget_needs_every_shape_timed(tmp_path, minilm_tokenizer, monkeypatch):
    from fisvd.errors import ParamError
    from fisvd.models import skeleton
    from fisvd.preflight import check, shape_key
    from fisvd.speed import shape_key as speed_key
    assert all(shape_key(m, n) == speed_key(m, n) for m, n in [(384, 1536), (1536, 384), (96, 32)])
    d = str(family_model_dir(tmp_path / "m", "bert", minilm_tokenizer))
    shapes = [m.shape for m in skeleton(d, 2)]
    monkeypatch.chdir(ROOT)         # the shipped speed_table path is relative to the project
    check(shipped_params(tmp_path), d, shapes)       # params kind: missing shapes fall back, no error
    check(shipped_params(tmp_path, allocate__budget_kind="latency"), d, [(384, 384), (1536, 384)])  # MiniLM's
    with pytest.raises(ParamError, match="allocate.budget_kind: latency .* has none for 32x32, 32x64, 64x32"):
        check(shipped_params(tmp_path, allocate__budget_kind="latency"), d, shapes)


def test_preflight_rejects_models_without_a_classifier_or_blocks(tmp_path):
    from transformers import CLIPVisionConfig
    from fisvd.errors import ModelError
    from fisvd.models import skeleton
    CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="model.name: .* has no sequence-classification model"):
        skeleton(str(tmp_path), 2)


def test_finetune_stage_stops_before_training_with_one_line(tmp_path, glue_dir, minilm_tokenizer, monkeypatch,
                                                            capsys):
    model_dir = family_model_dir(tmp_path / "model", "gpt2", minilm_tokenizer)
    work = tmp_path / "run"
    work.mkdir()
    shipped_params(work, model__name=str(model_dir), finetune__max_length=512)
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    monkeypatch.chdir(work)
    run_stages(["prepare"])
    import stages.finetune as ft
    from fisvd.cli import run_stage
    monkeypatch.setattr(sys, "argv", ["finetune"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_stage("finetune", ft.__doc__, ft.KEYS, ft.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: invalid parameter: finetune.max_length: 512 exceeds the 160 positions")
    assert not (work / "data/model").exists() and not (work / "metrics/finetune").exists()
