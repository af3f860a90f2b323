"""SVD / FWSVD / TFWSVD against independent truth (methods.md §4, §9)."""
import pytest
import torch

from fisvd.factorize import factorize, fwsvd, fwsvd_scale, svd, tfwsvd, weighted_error


def rand(m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64)


def column_constant_fisher(m, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    col = torch.rand(n, generator=g, dtype=torch.float64) * 10 + 0.01
    return col[None, :].expand(m, n).clone()


@pytest.mark.parametrize("r", [1, 3, 7])
def test_svd_error_is_tail_energy(r):
    W = rand(12, 9)
    A, B = svd(W, r)
    s = torch.linalg.svdvals(W)
    assert torch.allclose(((W - A @ B) ** 2).sum(), (s[r:] ** 2).sum(), rtol=1e-10)


def test_fwsvd_with_constant_fisher_equals_svd():
    W = rand(10, 14)
    F = torch.full_like(W, 3.7)
    A1, B1 = svd(W, 4)
    A2, B2 = fwsvd(W, F, 4)
    assert torch.allclose(A1 @ B1, A2 @ B2, atol=1e-10)


def random_restarts_best(W, F, r, n=6):
    best = float("inf")
    for seed in range(n):
        g = torch.Generator().manual_seed(100 + seed)
        init = (torch.randn(W.shape[0], r, generator=g, dtype=W.dtype), torch.randn(r, W.shape[1], generator=g, dtype=W.dtype))
        A, B = tfwsvd(W, F, r, max_iters=300, tol=1e-12, init=init)
        best = min(best, weighted_error(W, F, A, B))
    return best


@pytest.mark.parametrize("shape,r", [((8, 6), 2), ((6, 9), 3), ((10, 10), 4)])
def test_fwsvd_is_weighted_optimum_for_column_constant_fisher(shape, r):
    W = rand(*shape, seed=shape[0])
    F = column_constant_fisher(*shape)
    opt = weighted_error(W, F, *fwsvd(W, F, r))
    # closed form (Eckart–Young): Σ_ij F_ij ΔW_ij² = ‖ΔW diag(√f)‖², least at the tail of W diag(√f)'s spectrum
    s = torch.linalg.svdvals(W * F[0].sqrt())
    assert opt == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-10)
    assert opt <= weighted_error(W, F, *tfwsvd(W, F, r, max_iters=200, tol=1e-14)) * (1 + 1e-9)
    assert opt <= random_restarts_best(W, F, r) * (1 + 1e-7)
    assert opt < weighted_error(W, F, *svd(W, r))


def wrong_axis_fwsvd(W, F, r):
    """Weights the rows (outputs) instead of the columns: the classic orientation bug."""
    A, B = fwsvd(W.T.contiguous(), F.T.contiguous(), r)
    return B.T, A.T


def test_weighting_the_wrong_axis_fails_the_optimality_check():
    W, r = rand(8, 6, seed=8), 2
    F = column_constant_fisher(8, 6)
    wrong = weighted_error(W, F, *wrong_axis_fwsvd(W, F, r))
    assert wrong > random_restarts_best(W, F, r) * 1.01  # so the optimality test above would fail


def test_tfwsvd_monotone_never_above_fwsvd_and_strictly_better_on_general_weights():
    W = rand(20, 16, seed=3)
    F = torch.rand(20, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64) ** 3 + 1e-3
    hist = []
    A, B = tfwsvd(W, F, 5, max_iters=50, tol=0.0, history=hist)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(hist, hist[1:]))
    fw = weighted_error(W, F, *fwsvd(W, F, 5))
    tf = weighted_error(W, F, A, B)
    assert tf <= fw and tf < 0.95 * fw


def test_tfwsvd_converges_to_same_value_from_different_inits():
    torch.manual_seed(0)
    U = rand(10, 3, seed=11)
    V = rand(3, 8, seed=12)
    W = U @ V + 0.01 * rand(10, 8, seed=13)  # well-conditioned, dominant rank-3 structure
    F = torch.rand(10, 8, generator=torch.Generator().manual_seed(14), dtype=torch.float64) + 0.5
    vals = []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        init = (torch.randn(10, 3, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64))
        vals.append(weighted_error(W, F, *tfwsvd(W, F, 3, max_iters=500, tol=1e-13, init=init)))
    vals.append(weighted_error(W, F, *tfwsvd(W, F, 3, max_iters=500, tol=1e-13)))
    assert max(vals) - min(vals) <= 1e-4 * min(vals)
    # an independent optimiser on Σ F ⊙ (W − ab)², written here: L-BFGS from other starts gets no lower
    found = []
    for seed in range(3):
        g = torch.Generator().manual_seed(50 + seed)
        a = torch.randn(10, 3, generator=g, dtype=torch.float64).requires_grad_()
        b = torch.randn(3, 8, generator=g, dtype=torch.float64).requires_grad_()
        opt = torch.optim.LBFGS([a, b], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (F * (W - a @ b) ** 2).sum()
            loss.backward()
            return loss
        for _ in range(4):
            opt.step(closure)
        found.append(float((F * (W - a @ b) ** 2).sum()))
    assert min(vals) <= min(found) * (1 + 1e-6) and min(found) == pytest.approx(min(vals), rel=1e-4)


def test_every_registered_factorisation_is_tested_here():
    """svd / fwsvd / tfwsvd here; whiten / kfac / kfac_gw (two-sided statistics) in tests/test_twosided.py;
    kfac_seq (sequential) in tests/test_sequential.py."""
    from fisvd.methods import FACTORISATIONS
    assert FACTORISATIONS.names() == ("svd", "fwsvd", "tfwsvd", "whiten", "kfac", "kfac_gw", "kfac_seq")
    assert FACTORISATIONS.with_params() == ("tfwsvd", "whiten", "kfac", "kfac_gw", "kfac_seq")
    assert [FACTORISATIONS[m].needs for m in FACTORISATIONS.names()] == [
        (), ("fisher",), ("fisher",), ("cov_x",), ("cov_x", "cov_g"), ("cov_xg", "cov_gn"), ("cov_x", "cov_g")]
    assert [m for m in FACTORISATIONS.names() if FACTORISATIONS[m].sequential] == ["kfac_seq"]
    with pytest.raises(ValueError, match="needs a Fisher"):
        factorize("fwsvd", rand(4, 4), None, 1)
    with pytest.raises(ValueError, match="needs a Fisher"):
        factorize("fwsvd", rand(4, 4), {"cov_x": torch.eye(4)}, 1)
    with pytest.raises(TypeError):
        factorize("tfwsvd", rand(4, 4), torch.ones(4, 4), 1)          # its options have no defaults


@pytest.mark.parametrize("method", ["svd", "fwsvd", "tfwsvd"])
@pytest.mark.parametrize("r", [1, 4])  # 4 = break-even of 8x8 (64/16)
def test_zero_fisher_columns_and_edge_ranks_stay_finite(method, r):
    W = rand(8, 8, seed=5).float()
    F = torch.rand(8, 8, generator=torch.Generator().manual_seed(6))
    F[:, :3] = 0.0
    A, B = factorize(method, W, F, r, **({"max_iters": 3, "tol": 1e-4} if method == "tfwsvd" else {}))
    assert A.shape == (8, r) and B.shape == (r, 8) and A.dtype == torch.float32
    assert torch.isfinite(A).all() and torch.isfinite(B).all()


def test_all_zero_fisher_is_finite_and_falls_back_to_svd():
    W = rand(6, 5, seed=9)
    A, B = fwsvd(W, torch.zeros_like(W), 2)
    As, Bs = svd(W, 2)
    assert torch.allclose(A @ B, As @ Bs, atol=1e-10)
    assert torch.isfinite(tfwsvd(W, torch.zeros_like(W), 2, max_iters=3, tol=1e-4)[0]).all()


def test_scale_floor_and_orientation():
    F = torch.zeros(4, 3, dtype=torch.float64)
    F[:, 0] = 2.0  # column importance c = mean over the 4 outputs = [2, 0, 0]
    s = fwsvd_scale(F)
    assert s.shape == (3,)  # one scale per input column
    assert torch.allclose(s, torch.tensor([2.0, 1e-6 * 2 / 3, 1e-6 * 2 / 3], dtype=torch.float64).sqrt())


@pytest.mark.parametrize("bad", [
    lambda W, F: (W, F[:, :2], 1, "Fisher shape"),
    lambda W, F: (W, -F, 1, "negative"),
    lambda W, F: (W, F, 0, "rank 0 out of range"),
    lambda W, F: (W, F, 5, "rank 5 out of range"),
    lambda W, F: (W * float("nan"), F, 1, "NaN"),
])
def test_bad_inputs_raise(bad):
    W, F, r, msg = bad(rand(4, 4), torch.ones(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=msg):
        factorize("fwsvd", W, F, r)


@pytest.mark.parametrize("max_elems", [1 << 26, 40])  # one Khatri–Rao block, or blocks of 2 columns and 2 rows
def test_als_half_step_equals_per_row_weighted_least_squares(max_elems):
    from fisvd.factorize import EPS, _solve_side
    g = torch.Generator().manual_seed(21)
    m, n, r = 7, 9, 4
    Fw = torch.rand(m, n, generator=g, dtype=torch.float64)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    X = torch.randn(n, r, generator=g, dtype=torch.float64)
    got = _solve_side(Fw, Fw * W, X, chunk=3, max_elems=max_elems)
    lam = EPS * (Fw @ (X * X)).mean()
    for i in range(m):  # the normal equations of row i, written out with an explicit loop over columns
        G = sum(Fw[i, j] * torch.outer(X[j], X[j]) for j in range(n)) + lam * torch.eye(r, dtype=torch.float64)
        rhs = sum(Fw[i, j] * W[i, j] * X[j] for j in range(n))
        assert torch.allclose(got[i], torch.linalg.solve(G, rhs), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_decompose_truncated_equals_the_closed_forms_at_every_rank_and_gives_the_spectrum(shape):
    """One SVD serves every rank: slicing the full factors equals each method's closed form at that
    rank (svd, fwsvd, whiten, kfac: written out independently), s² is the SVD spectrum of the whitened
    T, and `factorize` returns exactly the slice (the one way to build factors)."""
    from fisvd.factorize import SLICEABLE, KfacParams, WhitenParams, decompose, kfac, truncate, whiten, whitened
    torch.manual_seed(0)
    m, n = shape
    W = torch.randn(m, n, dtype=torch.float64)
    X, G = torch.randn(50, n, dtype=torch.float64), torch.randn(60, m, dtype=torch.float64)
    X2, G2 = torch.randn(40, n, dtype=torch.float64), torch.randn(70, m, dtype=torch.float64)
    stats = {"fisher": torch.rand(m, n, dtype=torch.float64), "cov_x": X.T @ X, "cov_g": G.T @ G,
             "cov_xg": X2.T @ X2, "cov_gn": G2.T @ G2}
    opts = {"svd": None, "fwsvd": None, "whiten": WhitenParams(0.01), "kfac": KfacParams(0.01, 0.05),
            "kfac_gw": KfacParams(0.01, 0.05)}
    closed = {"svd": lambda r: svd(W, r), "fwsvd": lambda r: fwsvd(W, stats["fisher"], r),
              "whiten": lambda r: whiten(W, stats["cov_x"], r, alpha_x=0.01),
              "kfac": lambda r: kfac(W, stats["cov_x"], stats["cov_g"], r, alpha_x=0.01, alpha_g=0.05),
              # kfac's closed form on the gradient-weighted pair
              "kfac_gw": lambda r: kfac(W, stats["cov_xg"], stats["cov_gn"], r, alpha_x=0.01, alpha_g=0.05)}
    assert set(SLICEABLE) == set(opts)
    for method in SLICEABLE:
        A, B, s2 = decompose(method, W, stats, opts[method])
        T = whitened(method, W, stats, opts[method])
        torch.testing.assert_close(s2, torch.linalg.svdvals(T) ** 2)
        for r in range(1, min(m, n) + 1):
            a, b = truncate((A, B), r, torch.float64)
            a2, b2 = closed[method](r)
            torch.testing.assert_close(a @ b, a2 @ b2, atol=1e-10, rtol=1e-10)
            a3, b3 = factorize(method, W, stats, r, opts[method])
            assert torch.equal(a3, a) and torch.equal(b3, b)
    with pytest.raises(ValueError, match="depend on the rank"):
        decompose("tfwsvd", W, stats, None)
    with pytest.raises(ValueError, match="out of range"):
        truncate((A, B), min(m, n) + 1)


def test_factors_slice_one_decomposition_and_cache_tfwsvd():
    from fisvd.factorize import Factors, TfwsvdParams, whitened
    torch.manual_seed(1)
    W = {"a": torch.randn(10, 14), "b": torch.randn(14, 10)}
    st = {n: {"fisher": torch.rand(*w.shape)} for n, w in W.items()}
    for method in ("fwsvd", "tfwsvd"):
        fn = Factors(method, W, st, None if method == "fwsvd" else TfwsvdParams(max_iters=2, tol=0.0))
        for n in W:
            for r in (1, 4, 9):
                A, B = fn(n, r)
                A2, B2 = (fwsvd(W[n], st[n]["fisher"], r) if method == "fwsvd" else
                          tfwsvd(W[n], st[n]["fisher"], r, max_iters=2, tol=0.0))
                assert A.dtype == W[n].dtype and A.shape == (W[n].shape[0], r)
                torch.testing.assert_close(A @ B, A2 @ B2, atol=1e-5, rtol=1e-5)
            # the spectrum the allocators spend on: σ(T)² of the FWSVD-whitened weight (tfwsvd: its start's)
            torch.testing.assert_close(fn.spectrum(n), torch.linalg.svdvals(whitened("fwsvd", W[n], st[n])) ** 2)
        if method == "tfwsvd":                                        # cached per (name, r)
            assert fn("a", 4)[0] is fn("a", 4)[0]
    once = Factors("fwsvd", W, st, keep=False)                        # compress: one rank per matrix
    once.at("a", 3)
    assert "a" not in once._full
