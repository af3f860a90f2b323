"""fisvd.cells: the memo keys on everything that determines a cell, the swap restores the model
exactly, and make_matrix equals allocate.matrix_stats without a second SVD."""
import torch

from conftest import tiny_bert
from fisvd.allocate import matrix_stats
from fisvd.cells import Memo, Swapped, make_matrix, sha256_path
from fisvd.factorize import decompose, truncate, whitened
from fisvd.lowrank import LowRankLinear


def test_memo_hits_only_the_same_cell_in_the_same_context(tmp_path):
    memo = Memo(tmp_path, {"inputs": {"model": "abc"}, "code": {"x.py": "1"}})
    assert memo.get(allocation="max_fi", budget=50, opts=None) is None
    memo.put({"score": 1.5}, allocation="max_fi", budget=50, opts=None)
    assert memo.get(allocation="max_fi", budget=50, opts=None) == {"score": 1.5}
    assert memo.get(allocation="max_fi", budget=40, opts=None) is None
    assert memo.get(allocation="uniform_rank", budget=50, opts=None) is None
    other = Memo(tmp_path, {"inputs": {"model": "abd"}, "code": {"x.py": "1"}})   # new model: a miss
    assert other.get(allocation="max_fi", budget=50, opts=None) is None
    (tmp_path / f"{memo.key(allocation='max_fi', budget=50, opts=None)}.json").write_text('{"cut')  # torn write
    assert memo.get(allocation="max_fi", budget=50, opts=None) is None


def test_sha256_path_sees_a_changed_file_inside_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("1")
    h = sha256_path(tmp_path / "d")
    (tmp_path / "d" / "a.txt").write_text("2")
    assert sha256_path(tmp_path / "d") != h


def test_swapped_replaces_then_restores_the_same_modules():
    model = tiny_bert()
    name = "bert.encoder.layer.0.attention.self.query"
    dense = model.get_submodule(name)
    ids = torch.randint(0, 100, (2, 7))
    before = model(input_ids=ids).logits
    A, B = torch.randn(32, 4), torch.randn(4, 32)
    with Swapped(model, {name: (A, B)}) as m:
        lr = m.get_submodule(name)
        assert isinstance(lr, LowRankLinear) and lr.rank == 4
        torch.testing.assert_close(lr.second.bias, dense.bias)
        assert not torch.equal(m(input_ids=ids).logits, before)
    assert model.get_submodule(name) is dense
    torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_make_matrix_equals_matrix_stats_with_the_decomposition_spectrum():
    torch.manual_seed(0)
    W, F = torch.randn(24, 16), torch.rand(24, 16)
    _, _, g = decompose("fwsvd", W, {"fisher": F})
    a = make_matrix("w", 0, "q", W, F, g)
    b = matrix_stats("w", 0, "q", W, F, whitened("fwsvd", W, {"fisher": F}))
    for field in ("g", "e"):
        torch.testing.assert_close(torch.tensor(getattr(a, field)), torch.tensor(getattr(b, field)))
    assert (a.fisher_total, a.fisher_energy, a.m, a.n) == (b.fisher_total, b.fisher_energy, b.m, b.n)
    A, B = truncate(decompose("svd", W, None)[:2], 3)
    assert A.shape == (24, 3) and B.shape == (3, 16) and A.dtype == torch.float32


def test_memo_context_tells_every_factorisation_apart():
    """Regression: svd and fwsvd have no options, so a context made of options alone made svd's cells
    hit fwsvd's memo (the MRPC grid's svd cells came out equal to fwsvd's)."""
    import json
    import yaml
    from conftest import ROOT
    from fisvd.params import parse_params, registries
    from stages.cells import keys_of
    p = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    names = registries()["compress"].names()
    contexts = {json.dumps(keys_of(p, f), sort_keys=True, default=str) for f in names}
    assert len(names) >= 5 and len(contexts) == len(names)
