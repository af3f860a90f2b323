"""Compressible-Linear discovery across model families (conftest.FAMILIES), LowRankLinear exactness, and the
compressed-model directory (save → load bit-exact, no dense materialisation, corrupt files)."""
import json

import pytest
import torch
from torch import nn

from fisvd.evaluate import kept_ratio
from fisvd.factorize import svd
from fisvd.lowrank import (WEIGHTS_FILE, CompressedModelError, LowRankLinear, apply_lowrank, load_compressed,
                           save_compressed)
from fisvd.models import compressible_linears, find_blocks, linearize
from conftest import FAMILIES, FAMILY_TYPES, tiny_bert, tiny_family



def build(family):
    """`family`'s tiny random 3-label classifier as fisvd loads it (Conv1D linearized)."""
    return linearize(tiny_family(family, vocab_size=100, num_labels=3))


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_finds_the_typed_matrices_of_every_block(family):
    model = build(family)
    mats = compressible_linears(model)
    assert len(mats) == 2 * len(FAMILY_TYPES[family])
    for layer in range(2):
        assert [m.type for m in mats if m.layer == layer] == FAMILY_TYPES[family]
    names = {m.name for m in mats}
    # heads, poolers and embedding projections stay dense
    assert not any("classifier" in n or "pooler" in n or "embeddings" in n for n in names)
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_rank_compression_matches_dense_and_low_rank_runs(family):
    model = build(family)
    x = inputs()
    with torch.no_grad():
        ref = model(**x).logits
    full = {m.name: svd(model.get_submodule(m.name).weight.detach(), min(m.shape)) for m in compressible_linears(model)}
    apply_lowrank(model, full)
    assert sum(isinstance(m, LowRankLinear) for m in model.modules()) == 2 * len(FAMILY_TYPES[family])
    with torch.no_grad():
        assert torch.allclose(model(**x).logits, ref, atol=1e-5, rtol=1e-4)
    low, dense = build(family), build(family)
    fac = {m.name: svd(low.get_submodule(m.name).weight.detach(), 2) for m in compressible_linears(low)}
    apply_lowrank(low, fac)
    with torch.no_grad():                            # the same model with each weight replaced by A @ B, kept dense
        for name, (A, B) in fac.items():             # (GPT-2's Conv1D stores Wᵀ)
            w = dense.get_submodule(name).weight
            w.copy_((A @ B).T if w.shape != (A @ B).shape else A @ B)
        out, want = low(**x).logits, dense(**x).logits
    assert out.shape == ref.shape and torch.allclose(out, want, atol=1e-6, rtol=1e-4)
    assert (out - want).abs().max() < 0.05 * (out - ref).abs().max()   # far closer than rank 2 is to the model


def test_lowrank_linear_computes_x_Bt_At_plus_b():
    A, B, b = torch.randn(5, 2), torch.randn(2, 7), torch.randn(5)
    x = torch.randn(3, 7)
    mod = LowRankLinear.from_factors(A, B, b)
    assert torch.allclose(mod(x), torch.nn.functional.linear(x, A @ B, b), atol=1e-6)
    assert sum(p.numel() for p in mod.parameters()) == 2 * (5 + 7) + 5


def compressed_bert(rank=3):
    model = tiny_bert(num_labels=2, vocab_size=100)
    mats = compressible_linears(model)
    fac = {m.name: svd(model.get_submodule(m.name).weight.detach(), rank) for m in mats[:-2]}  # last two stay dense
    return apply_lowrank(model, fac)


def test_save_load_round_trip_is_bit_exact_and_never_dense(tmp_path, monkeypatch):
    model = compressed_bert()
    save_compressed(model, tmp_path)
    assert json.loads((tmp_path / "ranks.json").read_text()) == \
        {n: 3 for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    devices = []
    orig = nn.Linear.reset_parameters
    monkeypatch.setattr(nn.Linear, "reset_parameters", lambda self: (devices.append(self.weight.device.type), orig(self)))
    loaded = load_compressed(tmp_path)
    monkeypatch.undo()
    assert devices and set(devices) == {"meta"}  # every Linear was built on the meta device
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    for (n1, b1), (n2, b2) in zip(model.named_buffers(), loaded.named_buffers()):
        assert n1 == n2 and torch.equal(b1, b2)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, loaded(**x).logits)
    assert [m.name for m in compressible_linears(loaded)] == [m.name for m in compressible_linears(model)]
    p, kept, dense = kept_ratio(loaded)
    mats = compressible_linears(loaded)
    assert kept == sum(3 * (m.shape[0] + m.shape[1]) for m in mats[:-2]) + 2 * 32 * 64  # two dense FFN
    assert dense == sum(m.shape[0] * m.shape[1] for m in mats) and p == kept / dense


def test_no_pickle_in_compressed_dir(tmp_path):
    save_compressed(compressed_bert(), tmp_path)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    assert not data.startswith((b"\x80", b"PK\x03\x04"))            # neither a pickle nor a torch zip
    header = int.from_bytes(data[:8], "little")                       # safetensors: u64 header length, JSON
    assert data[8:9] == b"{" and json.loads(data[8:8 + header])
    from safetensors import safe_open
    with safe_open(str(tmp_path / WEIGHTS_FILE), "pt") as f:
        assert len(list(f.keys())) > 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_ranks", "bad_rank", "unknown_module"])
def test_corrupt_compressed_dir_raises(tmp_path, damage):
    save_compressed(compressed_bert(), tmp_path)
    w = tmp_path / WEIGHTS_FILE
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "garbage":
        w.write_bytes(b"\x00" * 64)
    elif damage == "missing_ranks":
        (tmp_path / "ranks.json").unlink()
    elif damage == "bad_rank":
        ranks[next(iter(ranks))] = 0
        (tmp_path / "ranks.json").write_text(json.dumps(ranks))
    else:
        ranks["bert.nothing.here"] = 2
        (tmp_path / "ranks.json").write_text(json.dumps(ranks))
    with pytest.raises(CompressedModelError):
        load_compressed(tmp_path)


def test_hf_from_pretrained_refuses_compressed_dir_but_load_compressed_works(tmp_path, minilm_tokenizer):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = tiny_bert(num_labels=2, vocab_size=minilm_tokenizer.vocab_size)
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"]
    apply_lowrank(model, {n: svd(model.get_submodule(n).weight.detach(), 3) for n in names})
    save_compressed(model, tmp_path, minilm_tokenizer)
    assert WEIGHTS_FILE == "lowrank.safetensors" and (tmp_path / WEIGHTS_FILE).is_file()
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "model.safetensors").exists()
    # HF must not "load" the directory and silently re-initialise the factorised Linears at random
    hf_model = None
    with pytest.raises(OSError) as err:
        hf_model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert hf_model is None
    assert "no file named model.safetensors" in str(err.value) and str(tmp_path) in str(err.value)
    # ... while fisvd's loader reproduces the in-memory model exactly, and the tokenizer still loads
    loaded = load_compressed(tmp_path)
    assert sorted(n for n, m in loaded.named_modules() if isinstance(m, LowRankLinear)) == sorted(names)
    enc = AutoTokenizer.from_pretrained(tmp_path)(["a cat sees the dog", "the red car"], padding=True,
                                                 return_tensors="pt")
    assert enc["input_ids"].tolist() == minilm_tokenizer(["a cat sees the dog", "the red car"],
                                                         padding=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, loaded(**enc).logits)


def test_old_layout_compressed_dir_names_the_expected_file(tmp_path):
    save_compressed(compressed_bert(), tmp_path)
    (tmp_path / WEIGHTS_FILE).rename(tmp_path / "model.safetensors")  # layout written before WEIGHTS_FILE
    with pytest.raises(CompressedModelError, match=f"{WEIGHTS_FILE}: missing.*old layout.*dvc repro compress"):
        load_compressed(tmp_path)
    save_compressed(compressed_bert(), tmp_path)  # re-saving drops the stale HF-loadable file
    assert not (tmp_path / "model.safetensors").exists()
    load_compressed(tmp_path)


def test_find_blocks_requires_repeated_linear_blocks():
    from fisvd.models import ModelError
    with pytest.raises(ModelError, match="no repeated block"):
        find_blocks(nn.Sequential(nn.Linear(3, 3)))


def test_interleaved_timing_alternates_and_returns_medians(monkeypatch):
    from fisvd import evaluate
    clock = iter(range(1000))
    monkeypatch.setattr(evaluate.time, "perf_counter", lambda: next(clock) / 1000)  # 1 ms per tick
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: (calls.append("b"), next(clock), next(clock))}
    ms = evaluate.interleaved_ms(fns, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4          # warm-up round, then 3 rounds, never all-a-then-all-b
    assert ms == pytest.approx({"a": 1.0, "b": 3.0})  # b burns two extra ticks per call


def test_latency_ms_times_every_model_on_the_batch():
    dense = tiny_bert(seed=1)
    low = tiny_bert(seed=1)
    apply_lowrank(low, {n.name: svd(low.get_submodule(n.name).weight.detach(), 4) for n in compressible_linears(low)})
    ids = torch.randint(0, 100, (2, 8))
    from fisvd.evaluate import latency_ms
    ms = latency_ms({"dense": dense, "compressed": low}, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 2)
    assert set(ms) == {"dense", "compressed"} and all(v > 0 for v in ms.values())
