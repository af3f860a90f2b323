"""fisvd.cells: the memo keys on everything that determines a cell (its code list is the stage's DVC
code deps), the swap restores the model exactly, and the Matrix of a decomposition carries its
spectrum."""
import pytest
import torch

from conftest import tiny_bert
from fisvd.cells import Memo, Swapped, sha256_path
from fisvd.factorize import Factors, decompose, truncate
from fisvd.plan import make_matrix
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


def test_make_matrix_of_a_decomposition_carries_its_spectrum_and_fisher_sums():
    torch.manual_seed(0)
    W, F = torch.randn(24, 16), torch.rand(24, 16)
    factors = Factors("fwsvd", {"w": W}, {"w": {"fisher": F}})
    a = make_matrix("w", 0, "q", W, F, factors.spectrum("w"))
    s = F.double().mean(0).sqrt()                  # brute force: SVD of W diag(√(mean_i F_ij)) (F > 0: no floor)
    torch.testing.assert_close(torch.tensor(a.g), torch.linalg.svdvals(W.double() * s[None, :]) ** 2)
    torch.testing.assert_close(torch.tensor(a.e), torch.linalg.svdvals(W.double()) ** 2)
    assert a.fisher_total == pytest.approx(float(F.double().sum()))
    assert a.fisher_energy == pytest.approx(float((F.double() * W.double() ** 2).sum()))
    assert (a.m, a.n, a.rbar) == (24, 16, 24 * 16 // 40)
    A, B = truncate(decompose("svd", W, None)[:2], 3)
    assert A.shape == (24, 3) and B.shape == (3, 16) and A.dtype == torch.float32


def test_memo_context_tells_every_factorisation_apart_and_hashes_the_stage_code_deps(tmp_path, monkeypatch):
    """Regression: svd and fwsvd have no options, so a context made of options alone made svd's cells
    hit fwsvd's memo (the MRPC grid's svd cells came out equal to fwsvd's). The code hashed is exactly
    the stage's DVC code deps (fisvd.deps.code_deps), plus versions, device and dtype."""
    import json
    import yaml
    from conftest import ROOT
    from fisvd.cells import memo_context
    from fisvd.deps import code_deps
    from fisvd.params import parse_params, registries
    p = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    monkeypatch.chdir(tmp_path)                       # a run folder: the input files are relative to it
    (tmp_path / "in.txt").write_text("x")
    (tmp_path / p.allocate.speed_table).parent.mkdir(parents=True)
    (tmp_path / p.allocate.speed_table).write_text("{}")
    names = registries()["compress"].names()
    ctx = {f: memo_context(p, f, ("in.txt",)) for f in names}
    assert len(names) >= 5 and len({json.dumps(c, sort_keys=True, default=str) for c in ctx.values()}) == len(names)
    c = ctx["kfac"]
    assert sorted(c["code"]) == sorted(code_deps("stages/cells.py"))
    assert {"stages/cells.py", "src/fisvd/cells.py", "src/fisvd/factorize.py", "src/fisvd/allocate.py",
            "src/fisvd/speed.py", "src/fisvd/plan.py"} <= set(c["code"])
    assert "src/fisvd/params.py" not in c["code"] and "src/fisvd/docs.py" not in c["code"]  # re-run nothing
    assert set(c["versions"]) >= {"torch", "transformers"} and c["dtype"] == "float32"
    assert c["device"] == "cpu" if not torch.cuda.is_available() else c["device"].startswith("cuda:")
