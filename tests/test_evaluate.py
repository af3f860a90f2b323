"""Latency batches hold only the inputs each encoder's forward takes (no token_type_ids for
DistilBERT / MPNet), benchmarks/tfwsvd.py takes its label count from the data / model config, dev
scoring in length order equals example-by-example scoring (metrics: sklearn's), and metrics.json's
comparison on hand values."""
import importlib.util
import inspect
import json

import pytest
import torch

from fisvd.evaluate import latency_batch, latency_ms, model_inputs
from fisvd.models import compressible_linears
from conftest import ROOT, tiny_bert, tiny_bert_config
from test_fisher import collate, features   # GLUE-like features of mixed lengths, padding collator

VOCAB = 100


def tiny(family):
    import transformers as T
    torch.manual_seed(0)
    if family == "bert":
        return tiny_bert(vocab_size=VOCAB)
    if family == "distilbert":
        cfg = T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
        return T.DistilBertForSequenceClassification(cfg).eval()
    if family == "mpnet":
        cfg = T.MPNetConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64)
        return T.MPNetForSequenceClassification(cfg).eval()
    raise ValueError(family)


FEATURES = [{"input_ids": [2, 10, 11, 12, 3], "token_type_ids": [0] * 5, "labels": 1},
            {"input_ids": [2, 20, 21, 3, 30, 3], "token_type_ids": [0, 0, 0, 0, 1, 1], "labels": 0}]


@pytest.mark.parametrize("family,expected", [
    ("bert", ("input_ids", "attention_mask", "token_type_ids")),
    ("distilbert", ("input_ids", "attention_mask")),
    ("mpnet", ("input_ids", "attention_mask")),
])
def test_latency_batch_holds_only_inputs_the_forward_takes(family, expected):
    model = tiny(family)
    assert model_inputs(model) == expected
    batch = latency_batch(FEATURES, 3, 8, model_inputs(model))
    assert tuple(batch) == expected
    named = inspect.signature(model.forward).parameters
    assert all(k in named for k in batch)  # nothing lands in a **kwargs catch-all
    ids = [t for f in FEATURES for t in f["input_ids"]]
    assert batch["input_ids"].tolist() == [(ids * 3)[i:i + 8] for i in range(0, 24, 8)]
    assert batch["attention_mask"].shape == (3, 8) and bool((batch["attention_mask"] == 1).all())
    if "token_type_ids" in batch:
        assert bool((batch["token_type_ids"] == 0).all())
    with torch.no_grad():
        assert model(**batch).logits.shape == (3, 2)
    ms = latency_ms({"dense": model}, batch, repeats=1, warmup=0)
    assert ms["dense"] > 0


def test_latency_batch_needs_input_names():
    param = inspect.signature(latency_batch).parameters["input_names"]
    assert param.default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        latency_batch(FEATURES, 2, 4)
    with pytest.raises(ValueError, match="must include input_ids"):
        latency_batch(FEATURES, 2, 4, ("input_ids", "position_ids"))
    with pytest.raises(ValueError, match="must include input_ids"):
        latency_batch(FEATURES, 2, 4, ("attention_mask",))


def test_model_inputs_ignores_kwargs_catch_all():
    class Enc(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **kwargs):
            return input_ids

    class NoMask(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return input_ids

    assert model_inputs(Enc()) == ("input_ids", "attention_mask")
    with pytest.raises(TypeError, match="takes no attention_mask"):
        model_inputs(NoMask())


# benchmarks/tfwsvd.py: labels from data/prepared/meta.json / the model's config, not a hard-coded 2

def _tfwsvd_bench():
    spec = importlib.util.spec_from_file_location("bench_tfwsvd", ROOT / "benchmarks" / "tfwsvd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tfwsvd_bench_loads_pipeline_model_with_its_own_labels(tmp_path, monkeypatch):
    from fisvd.fisher import save_fisher
    bench = _tfwsvd_bench()
    names = ("neg", "neutral", "pos")
    model = tiny_bert(num_labels=3, vocab_size=VOCAB, id2label=dict(enumerate(names)),
                      label2id={n: i for i, n in enumerate(names)})
    model.save_pretrained(tmp_path / "data" / "model")
    mats = compressible_linears(model)
    save_fisher(tmp_path / "data" / "fisher.safetensors", {m.name: torch.ones(m.shape) for m in mats},
                count=4, mode="per_batch", examples=4)
    monkeypatch.chdir(tmp_path)
    loaded, fisher, source = bench.model_and_fisher()
    assert source.startswith("pipeline model")
    assert loaded.config.num_labels == 3 and loaded.config.id2label == dict(enumerate(names))
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in loaded.state_dict().items())  # the trained head, not a new one
    assert set(fisher) == {m.name for m in mats}


@pytest.fixture(scope="module")
def headless_dir(tmp_path_factory, minilm_tokenizer):
    """Like the pretrained MiniLM: an encoder without classifier head, plus its tokenizer."""
    from transformers import BertModel
    d = tmp_path_factory.mktemp("headless-bert")
    torch.manual_seed(0)
    BertModel(tiny_bert_config(vocab_size=minilm_tokenizer.vocab_size)).save_pretrained(d)
    minilm_tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("meta", [
    {"task": "mnli", "num_labels": 3, "is_regression": False, "label_names": ["entailment", "neutral", "contradiction"]},
    {"task": "stsb", "num_labels": 1, "is_regression": True, "label_names": []},
])
def test_tfwsvd_bench_fallback_takes_labels_from_prepared_meta(tmp_path, monkeypatch, headless_dir, meta):
    bench = _tfwsvd_bench()
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "meta.json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)  # no data/model: pretrained fallback, here a tiny headless BERT
    monkeypatch.setattr(bench, "resolve_model", lambda name: str(headless_dir))
    model, fisher, source = bench.model_and_fisher()
    assert "synthetic Fisher" in source
    assert model.config.num_labels == meta["num_labels"]
    if meta["is_regression"]:
        assert model.config.problem_type == "regression"
    else:
        assert [model.config.id2label[i] for i in range(3)] == meta["label_names"]
    assert set(fisher) == {m.name for m in compressible_linears(model)}
    assert all(torch.isfinite(f).all() and f.sum() > 0 for f in fisher.values())


def test_tfwsvd_bench_label_spec_falls_back_to_model_config(headless_dir, tmp_path):
    bench = _tfwsvd_bench()
    assert bench.label_spec(str(headless_dir), str(tmp_path / "no" / "meta.json")) == (2, ("LABEL_0", "LABEL_1"))


def test_speedup_spread_is_per_round_ratio_quartiles():
    from fisvd.evaluate import speedup_spread
    rounds = {"dense": [10.0, 12.0, 9.0, 11.0], "compressed": [5.0, 6.0, 6.0, 5.0]}   # ratios 2, 2, 1.5, 2.2
    got = speedup_spread(rounds, "dense", "compressed")
    assert got == {"speedup_median": 2.0, "speedup_q25": 1.875, "speedup_q75": 2.05, "speedup_min": 1.5, "rounds": 4}


def test_dev_scoring_in_length_order_gives_each_example_its_own_logits_and_sklearn_scores():
    """predict_sorted batches by length and puts the logits back in the original order; score_dev's
    MRPC metrics are sklearn's on the argmax of logits computed one example at a time (no padding)."""
    from sklearn.metrics import accuracy_score, f1_score
    from fisvd.evaluate import predict_sorted, score_dev
    model = tiny_bert(vocab_size=VOCAB).eval()
    feats = features(11, seed=4)
    assert [len(f["input_ids"]) for f in feats] != sorted(len(f["input_ids"]) for f in feats)   # order matters
    with torch.no_grad():
        alone = torch.cat([model(**{k: v for k, v in collate([f]).items() if k != "labels"}).logits for f in feats]).numpy()
    got = predict_sorted(model, feats, 4, collate, torch.device("cpu"))
    assert got.shape == alone.shape and abs(got - alone).max() < 1e-5
    m, per_split = score_dev(model, {"dev": feats}, "mrpc", 4, collate, torch.device("cpu"))
    y, p = [f["labels"] for f in feats], alone.argmax(1)
    assert per_split["dev"][1].tolist() == y and per_split["dev"][0].tolist() == p.tolist()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p)) and m["f1"] == pytest.approx(f1_score(y, p, zero_division=0))
    unsorted, _ = score_dev(model, {"dev": feats}, "mrpc", 4, collate, torch.device("cpu"), by_length=False)
    assert unsorted["accuracy"] == m["accuracy"]


def test_comparison_on_hand_values():
    """RTE (accuracy), dev labels 2 × 0 and 2 × 1: constant predictor 50; dense 80 with 1000 params,
    compressed 70 with 400: ratio 2.5, drop 10, 87.5 % of dense, margin (70 − 50) / (80 − 50) = 2/3."""
    from fisvd.evaluate import comparison
    out = comparison("rte", {"dense": {"score": 80.0, "params": 1000}, "compressed": {"score": 70.0, "params": 400}},
                     {"dev": [0, 1, 1, 0]}, 0.4)
    assert (out["compression_ratio"], out["score_drop"], out["constant_score"], out["pct_of_dense"]) == (2.5, 10.0, 50.0, 87.5)
    assert out["margin_kept"] == pytest.approx(2 / 3, abs=1e-4) and out["kept_ratio"] == 0.4
    low = comparison("rte", {"dense": {"score": 50.0, "params": 1000}, "compressed": {"score": 45.0, "params": 400}},
                     {"dev": [0, 1, 1, 0]}, 0.4)
    assert low["margin_kept"] is None                       # dense no better than constant: no margin
