"""Two-sided statistics and the closed-form whiten / kfac factorisations (methods.md §4b).

Math on tiny float64 tensors against closed forms and brute force; statistics from hooks against a
per-token computation on a tiny BERT with padded batches.
"""
import pytest
import torch

from conftest import tiny_bert
from fisvd.errors import InputError, ParamError
from fisvd.factorize import FACTORISATIONS, factorize, fwsvd, kfac, svd, whiten, whitened
from fisvd.models import compressible_linears
from fisvd.stats import (StatsError, check_against, collect_stats, damped_cholesky, load_stats,
                         matrix_stats, save_stats)

CPU = torch.device("cpu")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand(m, n, seed=0):
    return torch.randn(m, n, generator=gen(seed), dtype=torch.float64)


def spd(d, seed, rank=None):
    """Random covariance X Xᵀ, full rank unless `rank` < d; far from diagonal."""
    X = rand(d, rank or 2 * d, seed) + 0.5 * rand(d, 1, seed + 1)
    return X @ X.T


def damped(M, alpha):
    return M + alpha * M.diagonal().mean() * torch.eye(M.shape[0], dtype=M.dtype)


def objective(W, A, B, Sg, Sx):
    """tr(ΔWᵀ Σg ΔW Σx), ΔW = W − AB (the K-FAC quadratic model; Σg = I gives Σ_t ‖ΔW x_t‖²)."""
    D = W - A @ B
    return float(torch.trace(D.T @ Sg @ D @ Sx))


def tail(T, r):
    return float((torch.linalg.svdvals(T)[r:] ** 2).sum())


# ---- damped Cholesky --------------------------------------------------------------------------

def test_damped_cholesky_is_lower_factor_of_damped_matrix():
    M = spd(6, 1).float()
    L = damped_cholesky(M, 0.1)
    assert L.dtype == torch.float64 and torch.equal(L, L.tril())
    assert torch.allclose(L @ L.T, damped(M.double(), 0.1), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("M,alpha", [(torch.zeros(4, 4), 0.5), (spd(5, 2, rank=2), 0.0),
                                     (-spd(4, 3), 0.1)])
def test_damped_cholesky_fails_clearly_when_not_positive_definite(M, alpha):
    with pytest.raises(ValueError, match="not positive definite after damping"):
        damped_cholesky(M, alpha)


# ---- closed forms -----------------------------------------------------------------------------

CASES = [((8, 6), 2, 0.0, 0.0), ((6, 9), 3, 0.05, 0.2), ((10, 10), 4, 0.01, 0.0), ((7, 12), 1, 0.3, 0.3)]


@pytest.mark.parametrize("shape,r,ax,ag", CASES)
def test_kfac_objective_equals_tail_of_whitened_spectrum(shape, r, ax, ag):
    (m, n), W = shape, rand(*shape, seed=shape[0])
    Sx, Sg = spd(n, 10), spd(m, 20)
    stats = {"cov_x": Sx, "cov_g": Sg}
    A, B = factorize("kfac", W, stats, r, alpha_x=ax, alpha_g=ag)
    T = whitened("kfac", W, stats, alpha_x=ax, alpha_g=ag)
    got = objective(W, A, B, damped(Sg, ag), damped(Sx, ax))
    assert got == pytest.approx(tail(T, r), rel=1e-9)
    # the same for whiten with its own objective Σ_t ‖ΔW x_t‖² = tr(ΔW Σx ΔWᵀ)
    A, B = factorize("whiten", W, {"cov_x": Sx}, r, alpha_x=ax)
    I = torch.eye(m, dtype=torch.float64)
    assert objective(W, A, B, I, damped(Sx, ax)) == pytest.approx(
        tail(whitened("whiten", W, {"cov_x": Sx}, alpha_x=ax), r), rel=1e-9)


@pytest.mark.parametrize("shape,r,ax,ag", CASES)
def test_no_perturbation_or_other_factorisation_beats_kfac(shape, r, ax, ag):
    (m, n), W = shape, rand(*shape, seed=shape[1])
    Sx, Sg = spd(n, 30), spd(m, 40)
    Sxd, Sgd = damped(Sx, ax), damped(Sg, ag)
    A, B = kfac(W, Sx, Sg, r, ax, ag)
    opt = objective(W, A, B, Sgd, Sxd)
    g = gen(7)
    for scale in (1e-6, 1e-4, 1e-2, 1e-1, 1.0, 10.0):
        for _ in range(40):
            dA = torch.randn(A.shape, generator=g, dtype=torch.float64) * scale * A.abs().mean()
            dB = torch.randn(B.shape, generator=g, dtype=torch.float64) * scale * B.abs().mean()
            assert objective(W, A + dA, B + dB, Sgd, Sxd) >= opt * (1 - 1e-12)
    F = torch.rand(m, n, generator=g, dtype=torch.float64) + 0.1
    others = [svd(W, r), fwsvd(W, F, r), whiten(W, Sx, r, ax)]
    for Ao, Bo in others:
        assert objective(W, Ao, Bo, Sgd, Sxd) > opt * (1 + 1e-6)
    # whiten is the optimum of its own objective (Σg = I): svd and fwsvd never beat it there
    I = torch.eye(m, dtype=torch.float64)
    w_opt = objective(W, *whiten(W, Sx, r, ax), I, Sxd)
    assert all(objective(W, Ao, Bo, I, Sxd) > w_opt * (1 + 1e-6) for Ao, Bo in others[:2])


@pytest.mark.parametrize("alpha_g", [0.0, 0.3])
def test_kfac_with_identity_output_covariance_is_whiten(alpha_g):
    W, Sx = rand(9, 7, seed=3), spd(7, 4)
    Ak, Bk = kfac(W, Sx, torch.eye(9, dtype=torch.float64), 3, 0.1, alpha_g)
    Aw, Bw = whiten(W, Sx, 3, 0.1)
    assert torch.allclose(Ak @ Bk, Aw @ Bw, rtol=1e-10, atol=1e-12)


def wrong_transpose_kfac(W, Sx, Sg, r, ax, ag):
    """The published mistake: T = L_g W L_x, W_r = L_g⁻¹ SVD_r(T) L_x⁻¹."""
    Lx, Lg = damped_cholesky(Sx, ax), damped_cholesky(Sg, ag)
    U, S, Vh = torch.linalg.svd(Lg @ W @ Lx, full_matrices=False)
    return torch.linalg.solve(Lg, U[:, :r] * S[:r]), torch.linalg.solve(Lx.T, Vh[:r].T).T


@pytest.mark.parametrize("r", [1, 2, 4])
def test_wrong_transpose_scores_worse_unless_the_factor_is_diagonal(r):
    W, ax, ag = rand(8, 6, seed=5), 0.01, 0.01
    Sx, Sg = spd(6, 50), spd(8, 60)                    # general Σg: L_g is not diagonal
    Sxd, Sgd = damped(Sx, ax), damped(Sg, ag)
    right = objective(W, *kfac(W, Sx, Sg, r, ax, ag), Sgd, Sxd)
    wrong = objective(W, *wrong_transpose_kfac(W, Sx, Sg, r, ax, ag), Sgd, Sxd)
    assert wrong > right * 1.01                         # so the optimality tests above would fail
    # a diagonal Σg has L_g = L_gᵀ: the mistake is invisible, so tests must use a general Σg
    Sd = torch.diag(torch.rand(8, generator=gen(61), dtype=torch.float64) + 0.1)
    right_d = objective(W, *kfac(W, Sx, Sd, r, ax, 0.0), Sd, Sxd)
    wrong_d = objective(W, *wrong_transpose_kfac(W, Sx, Sd, r, ax, 0.0), Sd, Sxd)
    assert wrong_d == pytest.approx(right_d, rel=1e-9)


@pytest.mark.parametrize("method", ["whiten", "kfac"])
@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])
def test_full_rank_reproduces_W_and_rank_deficient_stats_stay_finite(method, shape):
    m, n = shape
    W = rand(m, n, seed=8)
    opts = {"alpha_x": 0.0} if method == "whiten" else {"alpha_x": 0.0, "alpha_g": 0.0}
    A, B = factorize(method, W, {"cov_x": spd(n, 9), "cov_g": spd(m, 10)}, min(m, n), **opts)
    assert torch.allclose(A @ B, W, rtol=1e-9, atol=1e-10)
    lowrank = {"cov_x": spd(n, 11, rank=2), "cov_g": spd(m, 12, rank=1)}   # fewer tokens than dims
    with pytest.raises(ValueError, match="not positive definite"):
        factorize(method, W, lowrank, 2, **opts)
    opts = {k: 1e-3 for k in opts}
    for Wt in (W, W.float()):
        A, B = factorize(method, Wt, {k: v.float() for k, v in lowrank.items()}, 2, **opts)
        assert A.dtype == Wt.dtype and A.shape == (m, 2) and B.shape == (2, n)
        assert torch.isfinite(A).all() and torch.isfinite(B).all()


def test_whitened_matrix_of_every_method():
    W, F = rand(5, 4, seed=1), torch.rand(5, 4, generator=gen(2), dtype=torch.float64)
    Sx, Sg, Sxg, Sgn = spd(4, 3), spd(5, 4), spd(4, 7), spd(5, 8)
    stats = {"fisher": F, "cov_x": Sx, "cov_g": Sg, "cov_xg": Sxg, "cov_gn": Sgn}
    opts = {"tfwsvd": {"max_iters": 1, "tol": 0.0}, "whiten": {"alpha_x": 0.0},
            "kfac": {"alpha_x": 0.0, "alpha_g": 0.0}, "kfac_gw": {"alpha_x": 0.0, "alpha_g": 0.0},
            "kfac_seq": {"alpha_x": 0.0, "alpha_g": 0.0, "examples": 1, "weighting": "token", "block_steps": 0, "block_lr": 1e-4}}
    Ts = {m: whitened(m, W, stats, **opts.get(m, {})) for m in FACTORISATIONS.names()}
    Lx, Lg = torch.linalg.cholesky(Sx), torch.linalg.cholesky(Sg)
    s = F.mean(0).sqrt()                         # methods.md §6: mean over the m outputs
    expect = {"svd": W, "fwsvd": W * s, "tfwsvd": W * s, "whiten": W @ Lx, "kfac": Lg.T @ W @ Lx,
              "kfac_gw": torch.linalg.cholesky(Sgn).T @ W @ torch.linalg.cholesky(Sxg),
              "kfac_seq": Lg.T @ W @ Lx}
    assert set(Ts) == set(expect)
    for m in expect:
        assert Ts[m].dtype == torch.float64 and torch.allclose(Ts[m], expect[m], rtol=1e-12), m


def test_dispatch_statistics_and_options():
    W, Sx = rand(4, 4), spd(4, 1)
    with pytest.raises(ValueError, match=r"kfac needs the output-gradient covariance Σg \(stats\['cov_g'\]\)"):
        factorize("kfac", W, {"cov_x": Sx}, 1, alpha_x=0.1, alpha_g=0.1)
    with pytest.raises(ValueError, match="whiten needs the input covariance"):
        factorize("whiten", W, None, 1, alpha_x=0.1)
    with pytest.raises(ValueError, match="whiten needs the input covariance"):
        factorize("whiten", W, torch.ones(4, 4), 1, alpha_x=0.1)   # a bare tensor is the Fisher
    with pytest.raises(ValueError, match=r"cov_x shape \(3, 3\) != \(4, 4\)"):
        factorize("whiten", W, {"cov_x": spd(3, 1)}, 1, alpha_x=0.1)
    with pytest.raises(ValueError, match=r"cov_g shape \(5, 5\) != \(4, 4\)"):
        factorize("kfac", W, {"cov_x": Sx, "cov_g": spd(5, 1)}, 1, alpha_x=0.1, alpha_g=0.1)
    with pytest.raises(TypeError):
        factorize("kfac", W, {"cov_x": Sx, "cov_g": Sx}, 1, alpha_x=0.1)       # no defaults
    A, B = factorize("fwsvd", W, {"fisher": torch.ones(4, 4)}, 2)              # dict or bare tensor
    A2, B2 = factorize("fwsvd", W, torch.ones(4, 4), 2)
    assert torch.equal(A, A2) and torch.equal(B, B2)
    for cls, key, field in ((FACTORISATIONS["whiten"].params, "compress.whiten", "alpha_x"),
                            (FACTORISATIONS["kfac"].params, "compress.kfac", "alpha_g")):
        kw = {f: 0.0 for f in cls.__dataclass_fields__} | {field: -0.1}
        with pytest.raises(ParamError, match=rf"^{key}\.{field}: -0.1 is out of range"):
            cls(**kw).validate(key)


# ---- statistics from hooks --------------------------------------------------------------------

def examples(n, seed=0, regression=False):
    g = gen(seed)
    out = []
    for i in range(n):
        L = (3, 9, 5, 7, 4, 8, 6)[(i + seed) % 7]          # uneven lengths: every batch has padding
        ids = [1] + torch.randint(5, 100, (L,), generator=g).tolist() + [2]
        out.append((ids, float(torch.rand(1, generator=g)) * 5 if regression else i % 2))
    return out


def collate(exs, pad_ids=None):
    """Right-padded batch; `pad_ids` (a generator) fills padding with random token ids instead of 0."""
    L = max(len(ids) for ids, _ in exs)
    ids = torch.zeros(len(exs), L, dtype=torch.long)
    mask = torch.zeros(len(exs), L, dtype=torch.long)
    for b, (x, _) in enumerate(exs):
        ids[b, :len(x)], mask[b, :len(x)] = torch.tensor(x), 1
    if pad_ids is not None:
        ids = torch.where(mask.bool(), ids, torch.randint(5, 100, ids.shape, generator=pad_ids))
    labels = torch.tensor([y for _, y in exs])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}


def brute_force(model, names, exs):
    """Per example, unpadded, batch of one: capture every Linear's input and output by wrapping its
    forward (no hooks), g_t = ∂ℓ/∂y_t by autograd (retain_grad); sum outer products token by token."""
    mods = {n: model.get_submodule(n) for n in names}
    seen = {}
    for n, mod in mods.items():
        def fwd(x, _mod=mod, _n=n):
            y = torch.nn.functional.linear(x, _mod.weight, _mod.bias)
            y.retain_grad()
            seen[_n] = (x.detach(), y)
            return y
        mod.forward = fwd
    sx = {n: 0 for n in names}
    sg = {n: 0 for n in names}
    weighted.clear()
    try:
        for ex in exs:
            model.zero_grad()
            model(**collate([ex])).loss.backward()
            for n in names:
                x, y = seen[n]
                for t in range(x.shape[1]):
                    xt, gt = x[0, t].double(), y.grad[0, t].double()
                    sx[n] = sx[n] + torch.outer(xt, xt)
                    sg[n] = sg[n] + torch.outer(gt, gt)
                    w = float(gt @ gt)                    # ‖g_t‖²
                    xg, gn = weighted.get(n, (0, 0))
                    # a token whose output the loss does not feel (last block, not the pooled one): ĝ = 0
                    weighted[n] = (xg + w * torch.outer(xt, xt), gn + (torch.outer(gt, gt) / w if w > 0 else 0))
    finally:
        for mod in mods.values():
            del mod.forward
    return sx, sg


weighted: dict = {}     # brute_force's gradient-weighted pair per matrix: (Σ ‖g‖² x xᵀ, Σ ĝ ĝᵀ)


def close(a, b, tol=2e-5):
    return float((a.double() - b.double()).abs().max()) <= tol * float(b.abs().max())


@pytest.mark.parametrize("regression", [False, True])
def test_hook_statistics_equal_per_token_brute_force_with_padding(regression):
    model = tiny_bert(num_labels=1 if regression else 2, vocab_size=100)
    mats = compressible_linears(model)
    names = [m.name for m in mats]
    exs = examples(7, regression=regression)
    batches = [collate(exs[:3]), collate(exs[3:6]), collate(exs[6:])]
    assert any(bool((b["attention_mask"] == 0).any()) for b in batches)
    stats, meta = collect_stats(model, names, batches, CPU)
    sx, sg = brute_force(model, names, exs)
    n_tok = sum(len(ids) for ids, _ in exs)
    assert meta["tokens"] == {n: n_tok for n in names}
    assert (meta["batches"], meta["examples"], meta["g_scale"]) == (3, 7, "batch_size")
    for m in mats:
        key = meta["cov_x_of"][m.name]
        assert key == (m.name.rsplit(".", 1)[0] + ".query" if m.type in ("q", "k", "v") else m.name)
        assert close(stats[f"cov_x/{key}"], sx[m.name]), m.name        # q, k, v: one shared Σx
        assert close(stats[f"cov_g/{m.name}"], sg[m.name]), m.name
        assert torch.equal(stats[f"cov_x/{key}"], stats[f"cov_x/{key}"].T)
    assert sum(k.startswith("cov_x/") for k in stats) == 4 * model.config.num_hidden_layers
    assert sum(k.startswith("cov_g/") for k in stats) == len(names)


def test_gradient_weighted_statistics_equal_per_token_brute_force(tmp_path):
    model = tiny_bert(vocab_size=100)
    mats = compressible_linears(model)
    names = [m.name for m in mats]
    exs = examples(7, seed=1)
    batches = [collate(exs[:4]), collate(exs[4:])]
    plain, _ = collect_stats(model, names, batches, CPU)
    stats, meta = collect_stats(model, names, batches, CPU, weighted=True)
    brute_force(model, names, exs)
    assert meta["weighted"] is True
    for n in names:
        assert close(stats[f"cov_xg/{n}"], weighted[n][0]), n
        assert close(stats[f"cov_gn/{n}"], weighted[n][1]), n
        assert torch.equal(stats[f"cov_g/{n}"], plain[f"cov_g/{n}"])     # the plain statistics unchanged
    # per-token trace of the direction covariance is 1: Σ ĝĝᵀ has trace = number of tokens (first
    # block: every token reaches the loss); the last block's query: only the 7 pooled tokens do
    n_tok = meta["tokens"][names[0]]
    assert float(torch.trace(stats[f"cov_gn/{names[0]}"])) == pytest.approx(n_tok, rel=1e-5)
    last_q = [n for n in names if n.endswith("query")][-1]
    assert float(torch.trace(stats[f"cov_gn/{last_q}"])) == pytest.approx(7, rel=1e-5)
    save_stats(tmp_path / "s.safetensors", stats, meta)
    loaded, _ = load_stats(tmp_path / "s.safetensors")
    got = matrix_stats(loaded, meta, names[0])
    assert set(got) == {"cov_x", "cov_g", "cov_xg", "cov_gn"}
    assert torch.allclose(got["cov_xg"], stats[f"cov_xg/{names[0]}"] / n_tok)
    # a plain file gives kfac_gw a clear error
    from fisvd.stats import load_statistics
    save_stats(tmp_path / "p.safetensors", plain, {**meta, "weighted": False})
    shapes = {m.name: m.shape for m in mats}
    with pytest.raises(StatsError, match="fisher.weighted: true"):
        load_statistics({"cov_xg", "cov_gn"}, shapes, tmp_path / "none", tmp_path / "p.safetensors")


def test_statistics_do_not_depend_on_batch_cut_or_padding_tokens():
    model = tiny_bert(vocab_size=100)
    names = [m.name for m in compressible_linears(model)]
    exs = examples(8, seed=3)
    by2, meta2 = collect_stats(model, names, [collate(exs[i:i + 2]) for i in range(0, 8, 2)], CPU)
    by4, meta4 = collect_stats(model, names, [collate(exs[i:i + 4]) for i in range(0, 8, 4)], CPU)
    g = gen(5)
    noisy = [collate(exs[i:i + 4], pad_ids=g) for i in range(0, 8, 4)]
    by4n, _ = collect_stats(model, names, noisy, CPU)
    assert meta2["tokens"] == meta4["tokens"] and meta2["cov_x_of"] == meta4["cov_x_of"]
    assert set(by2) == set(by4) == set(by4n)
    for k in by2:
        assert close(by2[k], by4[k]) and close(by4n[k], by4[k]), k
    # the padding tokens did reach the model: every Linear input differs at their rows
    q = model.get_submodule(names[0])
    inputs = []
    h = q.register_forward_hook(lambda mod, i, o: inputs.append(i[0].detach()))
    with torch.no_grad():
        model(**collate(exs[:4])), model(**noisy[0])
    h.remove()
    pad = collate(exs[:4])["attention_mask"] == 0
    assert (inputs[0][pad] - inputs[1][pad]).abs().max() > 0.1


def test_collect_leaves_model_untouched_and_is_deterministic():
    model = tiny_bert(vocab_size=100)
    names = [m.name for m in compressible_linears(model)]
    model.classifier.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    batches = [collate(examples(4, seed=s)) for s in range(2)]
    a, ma = collect_stats(model, names, batches, CPU)
    b, mb = collect_stats(model, names, batches, CPU)
    assert ma == mb and all(torch.equal(a[k], b[k]) for k in a)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


# ---- storage ----------------------------------------------------------------------------------

def test_save_load_round_trip_means_bytes_and_checks(tmp_path):
    model = tiny_bert(vocab_size=100)
    mats = compressible_linears(model)
    stats, meta = collect_stats(model, [m.name for m in mats], [collate(examples(3))], CPU)
    save_stats(tmp_path / "a.safetensors", stats, meta)
    save_stats(tmp_path / "b.safetensors", dict(reversed(stats.items())), dict(reversed(meta.items())))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    means, meta2 = load_stats(tmp_path / "a.safetensors")
    assert meta2 == meta
    n_tok = meta["tokens"][mats[0].name]
    assert all(torch.allclose(means[k], stats[k] / n_tok) for k in stats) and set(means) == set(stats)
    check_against(means, meta2, {m.name: m.shape for m in mats}, "a.safetensors")
    got = matrix_stats(means, meta2, mats[1].name)      # the key matrix: reads the query's Σx
    assert got["cov_x"] is means[f"cov_x/{mats[0].name}"] and got["cov_g"].shape == (mats[1].shape[0],) * 2
    A, B = factorize("kfac", model.get_submodule(mats[1].name).weight.detach(), got, 4, alpha_x=0.01, alpha_g=0.01)
    assert torch.isfinite(A @ B).all()
    with pytest.raises(StatsError, match="no statistics for matrix nope"):
        check_against(means, meta2, {"nope": (2, 2)}, "a.safetensors")
    with pytest.raises(StatsError, match=r"cov_x of .* has shape \(32, 32\), weight \(32, 33\) needs \(33, 33\)"):
        check_against(means, meta2, {mats[0].name: (32, 33)}, "a.safetensors")


@pytest.mark.parametrize("bad,needle", [("missing", "not found"), ("trunc", "corrupt or truncated"),
                                        ("nometa", "metadata lacks"), ("nan", "not a finite square"),
                                        ("notensor", "no tensor cov_g/a"), ("zero", "token count 0")])
def test_bad_stats_files_name_the_path(tmp_path, bad, needle):
    p = tmp_path / "s.safetensors"
    stats = {"cov_x/a": torch.eye(3), "cov_g/a": torch.eye(2)}
    meta = {"kind": "twosided", "batches": 1, "examples": 1, "tokens": {"a": 0 if bad == "zero" else 2},
            "cov_x_of": {"a": "a"}, "g_scale": "batch_size"}
    if bad == "nan":
        stats["cov_x/a"][0, 0] = float("nan")
    if bad == "notensor":
        del stats["cov_g/a"]
    if bad == "nometa":
        from safetensors.torch import save_file
        save_file(stats, str(p))
    elif bad != "missing":
        save_stats(p, stats, meta)
    if bad == "trunc":
        p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(StatsError, match=needle) as exc:
        load_stats(p)
    assert str(p) in str(exc.value) and isinstance(exc.value, InputError)


def test_same_pass_fisher_equals_per_batch_fisher():
    """The statistics pass also yields the per_batch diagonal Fisher from its own backward."""
    from fisvd.fisher import fisher_per_batch
    model = tiny_bert(vocab_size=100)
    names = [m.name for m in compressible_linears(model)]
    exs = examples(8, seed=1)
    batches = [collate(exs[i:i + 3]) for i in range(0, 8, 3)]
    fisher = {}
    collect_stats(model, names, batches, CPU, fisher_out=fisher)
    ref, count, _ = fisher_per_batch(model, names, batches, CPU)
    assert count == 3 and list(fisher) == names
    for n in names:
        assert torch.allclose(fisher[n], ref[n], rtol=1e-5, atol=1e-12), n


def test_a_linear_called_twice_adds_both_calls_like_brute_force():
    """DeBERTa-style: one Linear applied to the tokens and again to a shared [1, k, in] tensor (the
    relative-position embeddings). collect_stats (hooks) against the same sums written out by hand
    from an explicit graph: Σx over the non-padding token rows plus the k shared rows, Σg likewise
    with g = B·∂L/∂y, token counts = tokens + k."""
    from types import SimpleNamespace
    from torch import nn
    import torch.nn.functional as F

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin, self.head = nn.Embedding(20, 6), nn.Linear(6, 5), nn.Linear(5, 2)
            self.side = nn.Parameter(torch.randn(1, 3, 6))

        def parts(self, input_ids, attention_mask):
            h = self.emb(input_ids)
            return h, self.lin(h), self.lin(self.side)

        def finish(self, y, z, attention_mask, labels):
            m = attention_mask[..., None].float()
            pooled = (y * m).sum(1) / m.sum(1) + z.mean(1)
            logits = self.head(torch.tanh(pooled))
            return F.cross_entropy(logits, labels), logits

        def forward(self, input_ids, attention_mask, labels):
            _, y, z = self.parts(input_ids, attention_mask)
            loss, logits = self.finish(y, z, attention_mask, labels)
            return SimpleNamespace(loss=loss, logits=logits)

    torch.manual_seed(0)
    model = Toy().eval()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    batch = {"input_ids": torch.randint(0, 20, (3, 4)), "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}
    stats, meta = collect_stats(model, ["lin"], [batch], torch.device("cpu"))
    h, y, z = model.parts(batch["input_ids"], mask)
    loss, _ = model.finish(y, z, mask, batch["labels"])
    gy, gz = torch.autograd.grad(loss, [y, z])
    keep = mask.bool()
    rows_x = torch.cat([h[keep], model.side[0]]).detach()
    rows_g = 3 * torch.cat([gy[keep], gz[0]])                       # B = 3
    assert torch.allclose(stats["cov_x/lin"], rows_x.T @ rows_x, atol=1e-5)
    assert torch.allclose(stats["cov_g/lin"], rows_g.T @ rows_g, atol=1e-7)
    assert meta["tokens"] == {"lin": int(mask.sum()) + 3} and meta["cov_x_of"] == {"lin": "lin"}


# ---- every factorisation's spectrum measures its own loss model (methods.md §6) ---------------------

def _loss_models():
    """Each factorisation's loss model of replacing W by W + ΔW (independent of fisvd's code): the
    quantity its spectrum's tail must equal. A new factorisation must add its own here."""
    def damped(M, a):
        return M + a * M.diagonal().mean() * torch.eye(M.shape[0], dtype=M.dtype)
    return {
        "svd": lambda D, st, o: (D ** 2).sum(),
        "fwsvd": lambda D, st, o: (st["fisher"] * D ** 2).sum(),
        "tfwsvd": lambda D, st, o: (st["fisher"] * D ** 2).sum(),
        "whiten": lambda D, st, o: torch.trace(D @ damped(st["cov_x"], o.alpha_x) @ D.T),
        "kfac": lambda D, st, o: torch.trace(D.T @ damped(st["cov_g"], o.alpha_g) @ D @ damped(st["cov_x"], o.alpha_x)),
        "kfac_gw": lambda D, st, o: torch.trace(D.T @ damped(st["cov_gn"], o.alpha_g) @ D
                                                @ damped(st["cov_xg"], o.alpha_x)),
        # ranks on kfac's spectrum of the dense statistics; its own fit depends on the whole model
        "kfac_seq": lambda D, st, o: torch.trace(D.T @ damped(st["cov_g"], o.alpha_g) @ D @ damped(st["cov_x"], o.alpha_x)),
    }


@pytest.mark.parametrize("method", FACTORISATIONS.names())
@pytest.mark.parametrize("shape", [(6, 10), (24, 10), (10, 40)])
def test_spectrum_tail_is_the_factorisations_own_loss_model(method, shape):
    """For every registered factorisation, on matrices of different shapes (so a factor of m or n
    would show): Σ_{k>r} g_k of the spectrum the allocators compare across matrices equals the
    method's loss model of its rank-r truncation. Fisher constant down each column (the case where
    FWSVD is exact; TFWSVD's optimum is then FWSVD's)."""
    from fisvd.factorize import Factors
    from fisvd.params import parse_params
    import yaml
    from conftest import ROOT
    models = _loss_models()
    assert method in models, f"{method}: add its loss model to _loss_models"
    g = torch.Generator().manual_seed(sum(shape))
    m, n = shape
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    col = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    X, G = torch.randn(3 * n, n, generator=g, dtype=torch.float64), torch.randn(3 * m, m, generator=g, dtype=torch.float64)
    X2, G2 = torch.randn(3 * n, n, generator=g, dtype=torch.float64), torch.randn(3 * m, m, generator=g, dtype=torch.float64)
    st = {"fisher": col[None, :].expand(m, n).clone(), "cov_x": X.T @ X / len(X), "cov_g": G.T @ G / len(G),
          "cov_xg": X2.T @ X2 / len(X2), "cov_gn": G2.T @ G2 / len(G2)}
    opts = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())).compress.options[method]
    fac = Factors(method, {"w": W}, {"w": st}, opts)
    spec = fac.spectrum("w")
    if FACTORISATIONS[method].sequential:      # truncation on its spectrum = kfac's own truncation
        fac = Factors("kfac", {"w": W}, {"w": st}, FACTORISATIONS["kfac"].params(opts.alpha_x, opts.alpha_g))
    for r in (1, min(shape) // 2, min(shape) - 1):
        A, B = fac.at("w", r)
        D = W - A.double() @ B.double()
        assert float(spec[r:].sum()) == pytest.approx(float(models[method](D, st, opts)), rel=1e-6, abs=1e-9), r
