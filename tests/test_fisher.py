"""Empirical Fisher (methods.md §3): per-sample exactness, per-batch formula, storage, checks."""
import pytest
import torch
from safetensors.torch import save_file

from fisvd.fisher import (FisherError, check_against, fisher_per_batch, fisher_per_sample, load_fisher,
                          save_fisher)
from fisvd.models import compressible_linears
from conftest import tiny_bert


def features(n=7, seed=0, regression=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = int(torch.randint(4, 12, (1,), generator=g))
        ids = [1] + torch.randint(5, 100, (L,), generator=g).tolist() + [2]
        label = float(torch.rand(1, generator=g)) * 5 if regression else i % 2
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids),
                    "labels": label})
    return out


def collate(feats):
    L = max(len(f["input_ids"]) for f in feats)
    batch = {k: torch.tensor([f[k] + [0] * (L - len(f[k])) for f in feats])
             for k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["labels"] = torch.tensor([f["labels"] for f in feats])
    return batch


def loop_fisher(model, names, feats):
    """Reference: one backward per example, squared gradients summed."""
    sums = {n: torch.zeros_like(model.get_submodule(n).weight) for n in names}
    model.eval()
    for f in feats:
        model.zero_grad()
        model(**collate([f])).loss.backward()
        for n in names:
            sums[n] += model.get_submodule(n).weight.grad ** 2
    return sums


@pytest.mark.parametrize("regression", [False, True])
def test_per_sample_equals_loop_over_single_examples(regression):
    model = tiny_bert(num_labels=1 if regression else 2, vocab_size=100)
    model.config._attn_implementation = "eager"
    names = [m.name for m in compressible_linears(model)]
    feats = features(9, regression=regression)
    ref = loop_fisher(model, names, feats)
    sums, count, n = fisher_per_sample(model, names, feats, collate, torch.device("cpu"), chunk=3)
    assert count == n == 9
    for name in names:
        rel = (sums[name] - ref[name]).abs().max() / ref[name].abs().max()
        assert rel < 1e-6, (name, float(rel))


def test_per_batch_of_one_equals_per_sample_and_formula():
    model = tiny_bert(vocab_size=100)
    names = [m.name for m in compressible_linears(model)]
    feats = features(6)
    ps, _, _ = fisher_per_sample(model, names, feats, collate, torch.device("cpu"), chunk=4)
    pb1, count1, _ = fisher_per_batch(model, names, [collate([f]) for f in feats], torch.device("cpu"))
    assert count1 == 6
    for n in names:
        assert torch.allclose(ps[n], pb1[n], rtol=1e-5, atol=1e-12)
    # batches of 3: sum over the 2 batches of the squared mean-loss gradient
    pb3, count3, ex3 = fisher_per_batch(model, names, [collate(feats[:3]), collate(feats[3:])], torch.device("cpu"))
    assert (count3, ex3) == (2, 6)
    # independently: each example's gradient alone (no padding); a padded batch's mean loss has the mean
    # of its examples' gradients, so the sum is Σ_batches (mean_d g_d)², for every matrix
    assert len({len(f["input_ids"]) for f in feats[:3]}) > 1 and len({len(f["input_ids"]) for f in feats[3:]}) > 1
    grads = []
    for f in feats:
        model.zero_grad()
        model(**collate([f])).loss.backward()
        grads.append({n: model.get_submodule(n).weight.grad.double().clone() for n in names})
    for n in names:
        manual = sum((sum(g[n] for g in part) / 3) ** 2 for part in (grads[:3], grads[3:]))
        assert torch.allclose(pb3[n].double(), manual, rtol=1e-4, atol=1e-10 * float(manual.abs().max())), n
    n0 = names[0]
    exact, approx = ps[n0] / 6, pb3[n0] / 2
    assert (exact - approx).abs().max() > 0.01 * exact.abs().max()  # batch approx != exact Fisher


def test_per_batch_is_deterministic_and_leaves_model_in_eval():
    model = tiny_bert(vocab_size=100)
    names = [m.name for m in compressible_linears(model)]
    bs = [collate(features(4, seed=s)) for s in range(3)]
    a, _, _ = fisher_per_batch(model, names, bs, torch.device("cpu"))
    b, _, _ = fisher_per_batch(model, names, bs, torch.device("cpu"))
    assert all(torch.equal(a[n], b[n]) for n in names) and not model.training


def test_save_load_divides_by_count_and_checks(tmp_path):
    sums = {"a": torch.full((2, 3), 6.0), "b": torch.ones(3, 2)}
    save_fisher(tmp_path / "f.safetensors", sums, 3, "per_batch", 96)
    F, meta = load_fisher(tmp_path / "f.safetensors")
    assert torch.equal(F["a"], torch.full((2, 3), 2.0)) and meta["count"] == 3 and meta["mode"] == "per_batch"
    check_against(F, {"a": (2, 3), "b": (3, 2)})
    with pytest.raises(FisherError, match="no Fisher for matrix c"):
        check_against(F, {"a": (2, 3), "c": (1, 1)})
    with pytest.raises(FisherError, match=r"shape \(2, 3\), weight has \(3, 2\)"):
        check_against(F, {"a": (3, 2)})


@pytest.mark.parametrize("bad,needle", [
    ("nan", "NaN or inf"), ("neg", "negative"), ("nometa", "count"), ("trunc", "corrupt or truncated"),
    ("missing", "not found"),
])
def test_bad_fisher_files(tmp_path, bad, needle):
    p = tmp_path / "f.safetensors"
    t = torch.ones(2, 2)
    if bad == "nan":
        t[0, 0] = float("nan")
    if bad == "neg":
        t[0, 0] = -1
    if bad == "nometa":
        save_file({"a": t}, str(p))
    elif bad != "missing":
        save_fisher(p, {"a": t}, 1, "per_batch", 1)
    if bad == "trunc":
        p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(FisherError, match=needle):
        load_fisher(p)


def test_summary_rows_are_looked_up_by_name_not_position():
    """Safetensors reads tensors back in alphabetical order (attention.output.dense < attention.self.query):
    zipping model-ordered matrices with that order mislabelled every row."""
    from fisvd.fisher import summary
    from fisvd.models import compressible_linears
    mats = compressible_linears(tiny_bert())
    fisher = {m.name: torch.full(m.shape, float(i + 1)) for i, m in enumerate(mats)}
    alphabetical = dict(sorted(fisher.items()))
    assert list(alphabetical) != [m.name for m in mats]
    rows = summary(alphabetical, mats)
    assert list(rows) == [m.name for m in mats]
    for i, m in enumerate(mats):
        assert rows[m.name]["total"] == (i + 1) * m.shape[0] * m.shape[1]
        assert (rows[m.name]["layer"], rows[m.name]["type"]) == (m.layer, m.type)


def test_a_bf16_model_accumulates_its_fisher_in_fp32():
    """GPU runs hold the model in bf16 (autocast) but the Fisher sums in fp32: the sums are float32 and
    equal a reference that squares each batch's bf16 gradient in float64."""
    model = tiny_bert(vocab_size=100).to(torch.bfloat16)
    names = [m.name for m in compressible_linears(model)]
    feats = features(6, seed=2)
    parts = [collate(feats[:3]), collate(feats[3:])]
    sums, count, _ = fisher_per_batch(model, names, parts, torch.device("cpu"))
    assert count == 2 and all(s.dtype == torch.float32 for s in sums.values())
    for n in names[:3]:
        ref = torch.zeros(sums[n].shape, dtype=torch.float64)
        for b in parts:
            model.zero_grad()
            model(**b).loss.backward()
            ref += model.get_submodule(n).weight.grad.double() ** 2
        assert torch.allclose(sums[n].double(), ref, rtol=1e-6, atol=0), n
