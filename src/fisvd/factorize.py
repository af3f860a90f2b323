"""Rank-r factorisations W ≈ A B (A: m×r, B: r×n) of a PyTorch weight W [out=m, in=n] (methods.md §4).

- `svd`:    W = U S Vᵀ, A = U_r S_r, B = V_rᵀ — Frobenius optimum (Eckart–Young).
- `fwsvd`:  c_j = mean_i F_ij (column = input feature, averaged over the m outputs: methods.md §6),
            s_j = sqrt(max(c_j, ε·mean c)), ε = 1e-6; SVD of W diag(s) = U S Vᵀ, A = U_r S_r,
            B = V_rᵀ diag(1/s). Exact optimum of Σ_ij F_ij (W − AB)²_ij when F is constant down each
            column, and then the spectrum's tail is that loss itself (the sum over outputs would make
            it m times that: allocators would overrate matrices with many outputs).
- `tfwsvd`: minimise Σ_ij F_ij (W − AB)²_ij by weighted alternating least squares from the FWSVD
            start: every row of A and column of B is an r×r ridge solve (λ = 1e-6 × mean Gram
            diagonal), batched (the Grams of many rows as one GEMM with a Khatri–Rao product);
            stops when the relative decrease < tol or after max_iters; returns the best iterate,
            so it never ends above FWSVD.

Two-sided, data-aware (methods.md §4b; closed form, one SVD; Σx = Σ_t x_t x_tᵀ (n×n) and
Σg = Σ_t g_t g_tᵀ (m×m) from `fisvd.stats`, damped M + α·mean(diag M)·I, lower Cholesky M = L Lᵀ):
- `whiten`: T = W L_x, W_r = SVD_r(T) L_x⁻¹; A = U_r S_r, B = V_rᵀ L_x⁻¹ (SVD-LLM, DRONE).
            Minimises Σ_t ‖ΔW x_t‖² = tr(ΔW Σx ΔWᵀ).
- `kfac_gw`: kfac on the gradient-weighted pair (Σx^g = Σ_t ‖g_t‖² x_t x_tᵀ, Σĝ = Σ_t ĝ_t ĝ_tᵀ;
            fisvd.stats), so tokens the loss does not feel weigh nothing.
- `kfac`:   T = L_gᵀ W L_x, W_r = L_g⁻ᵀ SVD_r(T) L_x⁻¹; A = L_g⁻ᵀ U_r S_r, B = V_rᵀ L_x⁻¹ (GFWSVD with
            K-FAC factors). Minimises tr(ΔWᵀ Σg ΔW Σx) = ‖L_gᵀ ΔW L_x‖²_F, optimum Σ_{k>r} s_k(T)².
            `L_g W L_x` (no transpose) is a published mistake: it is only right when L_g is diagonal.
Inverses are triangular solves, never explicit; all in float64.

All functions are pure: tensors in, (A, B) out, in the dtype of W, on W's device. Each
factorisation is one spec in `fisvd.methods.FACTORISATIONS` (options read from `compress.<name>`;
`needs` the statistics it reads, a dict such as {"fisher": F} or {"cov_x": Σx, "cov_g": Σg}) and
its implementation below. `whitened(name, W, stats, opts)` is the matrix T whose singular values
define the method's spectrum (s_k(T)² for rank allocation). One way to build factors: a sliceable
method's rank-r factors are the first r components of one decomposition of T (`decompose`, then
`truncate`; `factorize` does exactly that), tfwsvd runs per rank; `Factors` serves many ranks of many
matrices. `svd`, `fwsvd`, `whiten`, `kfac` below are the closed forms at one rank, written out
independently (the tests hold the decomposition to them).
"""
from __future__ import annotations

import torch

from .methods import FACTORISATIONS, KfacParams, TfwsvdParams, WhitenParams
from .stats import damped_cholesky

EPS = 1e-6


def break_even(m: int, n: int) -> int:
    """r̄ = ⌊mn/(m+n)⌋, the break-even rank of an m×n weight: rank-r factors hold r(m+n) parameters,
    at least the dense mn from r̄ on, so a rank ≥ r̄ keeps the matrix dense. The one definition
    (allocate.Matrix.rbar, speed tables, recovery)."""
    return (m * n) // (m + n)


def fwsvd_scale(F: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-input-column scale s_j = sqrt(mean_i F_ij) (methods.md §6), floored at sqrt(eps · mean c).

    The mean over the m outputs, not the sum: FWSVD's factors do not depend on the scale of s, but its
    spectrum does, and with the sum ‖ΔW diag(s)‖² is m × the diagonal-Fisher loss model Σ F ΔW² (for F
    constant down a column), so matrices with more outputs (a BERT FFN's intermediate: 4×) looked 4× as
    important to the allocators. With the mean the tail of the spectrum is that loss model itself."""
    c = F.double().mean(dim=0)
    floor = eps * c.mean()
    if not torch.isfinite(floor) or floor <= 0:
        floor = torch.tensor(1.0, dtype=torch.float64)  # all-zero Fisher: uniform weights
    return torch.sqrt(torch.clamp(c, min=floor))


def spectrum(W: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
    """Squared singular values of W diag(s) (s=None: of W), descending, float64."""
    M = W.double() if s is None else W.double() * s.double()[None, :]
    return torch.linalg.svdvals(M) ** 2


def _truncated(M: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check_rank(M, r)
    U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    return U[:, :r] * S[:r], Vh[:r]


def _check_rank(W: torch.Tensor, r: int) -> None:
    if W.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(W.shape)}")
    if not 1 <= r <= min(W.shape):
        raise ValueError(f"rank {r} out of range [1, {min(W.shape)}] for shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        raise ValueError("weight contains NaN or inf")


def svd(W: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    A, B = _truncated(W, r)
    return A.to(W.dtype), B.to(W.dtype)


def fwsvd(W: torch.Tensor, F: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check_fisher(W, F)
    s = fwsvd_scale(F).to(W.device)
    A, B = _truncated(W.double() * s[None, :], r)
    return A.to(W.dtype), (B / s[None, :]).to(W.dtype)


def _check_fisher(W: torch.Tensor, F: torch.Tensor) -> None:
    if F.shape != W.shape:
        raise ValueError(f"Fisher shape {tuple(F.shape)} != weight shape {tuple(W.shape)}")
    if not torch.isfinite(F).all() or (F < 0).any():
        raise ValueError("Fisher contains NaN, inf or negative values")


def weighted_error(W: torch.Tensor, F: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> float:
    """Σ_ij F_ij (W − AB)²_ij in float64."""
    R = W.double() - A.double() @ B.double()
    return float((F.double() * R * R).sum())


def _ridge_rows(G: torch.Tensor, rhs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Solve (G_i + λI) x_i = rhs_i for a batch of r×r systems."""
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    L, info = torch.linalg.cholesky_ex(G + lam * eye)
    if bool((info != 0).any()):
        return torch.linalg.lstsq(G + lam * eye, rhs.unsqueeze(-1)).solution.squeeze(-1)
    return torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)


def _solve_side(Fw: torch.Tensor, FW: torch.Tensor, X: torch.Tensor, chunk: int,
                max_elems: int = 1 << 26) -> torch.Tensor:
    """Rows y_i minimising Σ_j Fw_ij (W_ij − y_i·x_j)², X: [n, r] (x_j rows); FW = Fw ⊙ W.

    Grams G_i = Xᵀ diag(Fw_i) X of a chunk of rows are one plain GEMM Fw[rows] @ K with
    K_j = vec(x_j x_jᵀ) (a Khatri–Rao product, [n, r²]; built in column blocks when larger than
    `max_elems`), then every row is an r×r batched Cholesky solve.
    """
    m, n = Fw.shape
    r = X.shape[1]
    rhs = FW @ X                                         # [m, r]
    diag_mean = (Fw @ (X * X)).mean()                    # mean Gram diagonal
    lam = EPS * diag_mean if diag_mean > 0 else torch.tensor(1e-12, dtype=X.dtype, device=X.device)
    block = max(1, max_elems // (r * r))                 # columns j per K block
    rows = max(1, min(chunk, max_elems // (r * r)))      # rows i per Gram batch

    def khatri_rao(j):
        Xj = X[j:j + block]
        return (Xj[:, :, None] * Xj[:, None, :]).reshape(Xj.shape[0], r * r)
    K = khatri_rao(0) if block >= n else None            # one block: build it once
    out = torch.empty_like(rhs)
    for i in range(0, m, rows):
        Fi = Fw[i:i + rows]
        G = Fi @ K if K is not None else sum(Fi[:, j:j + block] @ khatri_rao(j) for j in range(0, n, block))
        out[i:i + rows] = _ridge_rows(G.view(Fi.shape[0], r, r), rhs[i:i + rows], lam)
    return out


def tfwsvd(W: torch.Tensor, F: torch.Tensor, r: int, max_iters: int, tol: float,
           init: tuple[torch.Tensor, torch.Tensor] | None = None, chunk: int = 256,
           history: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ALS from FWSVD (or `init`); appends the objective per iteration to `history`."""
    _check_fisher(W, F)
    A, B = init if init is not None else fwsvd(W, F, r)
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    scale = F.double().mean()
    Fn = (F.double() / scale if scale > 0 else torch.ones_like(F, dtype=torch.float64)).to(dtype)
    Wd, A, B = W.to(dtype), A.to(dtype), B.to(dtype)
    FW = Fn * Wd

    def objective(A_, B_):
        R = Wd - A_ @ B_
        return float((Fn.double() * (R * R).double()).sum())

    best = (objective(A, B), A, B)
    prev = best[0]
    if history is not None:
        history.append(prev)
    for _ in range(max_iters):
        A = _solve_side(Fn, FW, B.T, chunk)              # rows of A
        B = _solve_side(Fn.T, FW.T, A, chunk).T          # columns of B
        cur = objective(A, B)
        if history is not None:
            history.append(cur)
        if cur < best[0]:
            best = (cur, A, B)
        if prev <= 0 or (prev - cur) / prev < tol:
            break
        prev = cur
    return best[1].to(W.dtype), best[2].to(W.dtype)


def _check_cov(W: torch.Tensor, M: torch.Tensor, kind: str, d: int) -> None:
    if tuple(M.shape) != (d, d):
        raise ValueError(f"{kind} shape {tuple(M.shape)} != ({d}, {d}) for weight shape {tuple(W.shape)}")


def whiten(W: torch.Tensor, cov_x: torch.Tensor, r: int, alpha_x: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A = U_r S_r, B = V_rᵀ L_x⁻¹ from the SVD of T = W L_x (L_x: damped Cholesky of Σx)."""
    _check_rank(W, r)
    _check_cov(W, cov_x, "cov_x", W.shape[1])
    Lx = damped_cholesky(cov_x.to(W.device), alpha_x)
    A, V = _truncated(W.double() @ Lx, r)
    B = torch.linalg.solve_triangular(Lx, V, upper=False, left=False)        # B L_x = V_rᵀ
    return A.to(W.dtype), B.to(W.dtype)


def kfac(W: torch.Tensor, cov_x: torch.Tensor, cov_g: torch.Tensor, r: int, alpha_x: float,
         alpha_g: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A = L_g⁻ᵀ U_r S_r, B = V_rᵀ L_x⁻¹ from the SVD of T = L_gᵀ W L_x."""
    _check_rank(W, r)
    _check_cov(W, cov_x, "cov_x", W.shape[1])
    _check_cov(W, cov_g, "cov_g", W.shape[0])
    Lx = damped_cholesky(cov_x.to(W.device), alpha_x)
    Lg = damped_cholesky(cov_g.to(W.device), alpha_g)
    US, V = _truncated(Lg.T @ W.double() @ Lx, r)
    A = torch.linalg.solve_triangular(Lg.T, US, upper=True)                  # L_gᵀ A = U_r S_r
    B = torch.linalg.solve_triangular(Lx, V, upper=False, left=False)        # B L_x = V_rᵀ
    return A.to(W.dtype), B.to(W.dtype)


# ---- implementations: sliceable methods register T (`whitened`) and the inverse of the whitening
# (`unwhiten`: factors of W from factors U S, Vᵀ of T); tfwsvd registers its rank-r `fn` and the
# spectrum of its FWSVD start. fisvd.methods holds each method's spec.

@FACTORISATIONS.implements("svd", "whitened")
def _svd_T(W, stats, opts):
    return W.double()


@FACTORISATIONS.implements("svd", "unwhiten")
def _svd_back(W, stats, opts, US, Vh):
    return US, Vh


@FACTORISATIONS.implements("fwsvd", "whitened")
@FACTORISATIONS.implements("tfwsvd", "whitened")     # no closed-form spectrum: its FWSVD start's
def _fwsvd_T(W, stats, opts):
    _check_fisher(W, stats["fisher"])
    return W.double() * fwsvd_scale(stats["fisher"]).to(W.device)[None, :]


@FACTORISATIONS.implements("fwsvd", "unwhiten")
def _fwsvd_back(W, stats, opts, US, Vh):
    return US, Vh / fwsvd_scale(stats["fisher"]).to(W.device)[None, :]           # B diag(s) = Vᵀ


@FACTORISATIONS.implements("tfwsvd")
def _tfwsvd(W, stats, r, opts: TfwsvdParams):
    return tfwsvd(W, stats["fisher"], r, max_iters=opts.max_iters, tol=opts.tol)


@FACTORISATIONS.implements("whiten", "whitened")
def _whiten_T(W, stats, opts: WhitenParams):
    _check_cov(W, stats["cov_x"], "cov_x", W.shape[1])
    return W.double() @ damped_cholesky(stats["cov_x"].to(W.device), opts.alpha_x)


@FACTORISATIONS.implements("whiten", "unwhiten")
def _whiten_back(W, stats, opts: WhitenParams, US, Vh):
    Lx = damped_cholesky(stats["cov_x"].to(W.device), opts.alpha_x)
    return US, torch.linalg.solve_triangular(Lx, Vh, upper=False, left=False)    # B L_x = Vᵀ


@FACTORISATIONS.implements("kfac", "whitened")
@FACTORISATIONS.implements("kfac_seq", "whitened")   # its ranks: kfac's spectrum of the dense model (fisvd.sequential)
def _kfac_T(W, stats, opts: KfacParams):
    _check_cov(W, stats["cov_x"], "cov_x", W.shape[1])
    _check_cov(W, stats["cov_g"], "cov_g", W.shape[0])
    Lx = damped_cholesky(stats["cov_x"].to(W.device), opts.alpha_x)
    Lg = damped_cholesky(stats["cov_g"].to(W.device), opts.alpha_g)
    return Lg.T @ W.double() @ Lx


@FACTORISATIONS.implements("kfac", "unwhiten")
def _kfac_back(W, stats, opts: KfacParams, US, Vh):
    Lx = damped_cholesky(stats["cov_x"].to(W.device), opts.alpha_x)
    Lg = damped_cholesky(stats["cov_g"].to(W.device), opts.alpha_g)
    B = torch.linalg.solve_triangular(Lx, Vh, upper=False, left=False)           # B L_x = Vᵀ
    return torch.linalg.solve_triangular(Lg.T, US, upper=True), B                 # L_gᵀ A = U S


@FACTORISATIONS.implements("kfac_gw", "whitened")
def _kfac_gw_T(W, stats, opts: KfacParams):
    return _kfac_T(W, {"cov_x": stats["cov_xg"], "cov_g": stats["cov_gn"]}, opts)


@FACTORISATIONS.implements("kfac_gw", "unwhiten")
def _kfac_gw_back(W, stats, opts: KfacParams, US, Vh):
    return _kfac_back(W, {"cov_x": stats["cov_xg"], "cov_g": stats["cov_gn"]}, opts, US, Vh)


_NEEDS = {"fisher": "a Fisher tensor (stats['fisher'])", "cov_x": "the input covariance Σx (stats['cov_x'])",
          "cov_g": "the output-gradient covariance Σg (stats['cov_g'])",
          "cov_xg": "the gradient-weighted input covariance (stats['cov_xg']; fisher.weighted: true)",
          "cov_gn": "the gradient-direction covariance (stats['cov_gn']; fisher.weighted: true)"}


def _prepare(method: str, stats, opts, kw):
    """(registry entry, stats dict, opts) with the method's statistics and options checked."""
    entry = FACTORISATIONS[method]
    if opts is None and entry.params is not None:
        opts = entry.params(**kw)
    elif kw:
        raise TypeError(f"{method}: unexpected options {sorted(kw)}")
    if stats is None:
        stats = {}
    elif isinstance(stats, torch.Tensor):      # backward compatible: a bare tensor is the Fisher
        stats = {"fisher": stats}
    missing = [k for k in entry.needs if stats.get(k) is None]
    if missing:
        raise ValueError(f"{method} needs {' and '.join(_NEEDS.get(k, repr(k)) for k in missing)}")
    return entry, stats, opts


def factorize(method: str, W: torch.Tensor, stats, r: int, opts=None, **kw):
    """(A, B) of factorisation `method` at rank r, in W's dtype and device. `stats`: dict of the
    statistics the method `needs` ({"fisher": F}, {"cov_x": Σx, "cov_g": Σg}), a bare Fisher tensor,
    or None; `opts` is its options dataclass, or give its fields as keywords (`factorize("kfac", W,
    stats, r, alpha_x=0.01, alpha_g=0.01)`). Sliceable methods: the first r components of
    `decompose` (one decomposition, the same bytes at every rank); tfwsvd: its weighted ALS at r."""
    entry, stats, opts = _prepare(method, stats, opts, kw)
    if entry.sequential:
        raise ValueError(f"{method} factorises the whole model from calibration batches, not one matrix: "
                         f"use fisvd.sequential.build_factors")
    if entry.sliceable:
        _check_rank(W, r)
        A, B, _ = decompose(method, W, stats, opts)
        return truncate((A, B), r, W.dtype)
    return entry.fn(W, stats, r, opts)


def whitened(method: str, W: torch.Tensor, stats, opts=None, **kw) -> torch.Tensor:
    """T (float64) whose singular values define `method`'s spectrum: svd W; fwsvd, tfwsvd W diag(s);
    whiten W L_x; kfac L_gᵀ W L_x. Truncating T at rank r costs Σ_{k>r} s_k(T)² of the method's
    objective (exactly for svd, fwsvd with column-constant F, whiten, kfac)."""
    _, stats, opts = _prepare(method, stats, opts, kw)
    if W.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(W.shape)}")
    return FACTORISATIONS[method].implementation("whitened")(W, stats, opts)


# Factorisations whose rank-r factors are the first r columns of A / rows of B of one full
# decomposition (A = L_g⁻ᵀ U S or U S, B = Vᵀ L_x⁻¹ or Vᵀ diag(s)⁻¹): one SVD per matrix serves every
# rank. tfwsvd's weighted ALS depends on r, so it is factorised per rank.
SLICEABLE = tuple(n for n in FACTORISATIONS.names() if FACTORISATIONS[n].sliceable)


def decompose(method: str, W: torch.Tensor, stats, opts=None, **kw):
    """One SVD of T = whitened(method, W, stats) → (A [m, k], B [k, n], s² [k]), k = min(m, n),
    float64, columns in descending singular value of T: `truncate((A, B), r)` equals
    `factorize(method, W, stats, r)` for every r and s² is the spectrum the allocators spend on
    (`Factors.spectrum`), so a grid pays one SVD per matrix per factorisation."""
    if method not in SLICEABLE:
        raise ValueError(f"{method}: factors depend on the rank (not one of {', '.join(SLICEABLE)})")
    _, stats, opts = _prepare(method, stats, opts, kw)
    _check_rank(W, 1)
    T = FACTORISATIONS[method].implementation("whitened")(W, stats, opts)
    U, S, Vh = torch.linalg.svd(T.double(), full_matrices=False)
    A, B = FACTORISATIONS[method].implementation("unwhiten")(W, stats, opts, U * S, Vh)
    return A, B, S ** 2


def truncate(full: tuple[torch.Tensor, torch.Tensor], r: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-r factors (A[:, :r], B[:r]) of a full decomposition, cast to `dtype`."""
    A, B = full
    if not 1 <= r <= A.shape[1]:
        raise ValueError(f"rank {r} out of range [1, {A.shape[1]}]")
    return A[:, :r].to(dtype).contiguous(), B[:r].to(dtype).contiguous()


class Factors:
    """Rank-r factors of named matrices under one factorisation — the one way fisvd builds factors.

    `Factors(method, weights, stats, opts)`: `weights[name]` a weight [m, n], `stats[name]` its
    statistics dict. `at(name, r)` → (A, B) in the weight's dtype; `spectrum(name)` → s_k(T)², the
    spectrum the allocators spend on (float64, descending). Sliceable methods decompose each matrix
    once, on first use (`decompose`), and slice every rank from it; tfwsvd (factors depend on r)
    runs its weighted ALS per (name, r), its spectrum that of its FWSVD start. `device`: where the
    decompositions run (factors come back there); `keep=False` keeps nothing after its first use
    (spectra only, or one rank per matrix as compress: memory of one matrix at a time)."""

    def __init__(self, method: str, weights: dict, stats: dict, opts=None, device=None, keep: bool = True):
        self.method, self.weights, self.stats, self.opts = method, weights, stats, opts
        self.entry = FACTORISATIONS[method]
        self.device, self.keep = device, keep
        self._full: dict = {}
        self._spectra: dict = {}
        self._built: dict = {}

    def _inputs(self, name: str):
        W = self.weights[name]
        st = self.stats[name]
        if self.device is not None:
            W = W.to(self.device)
            st = {k: v.to(self.device) for k, v in st.items()}
        return W, st

    def _decomposed(self, name: str):
        if name not in self._full:
            W, st = self._inputs(name)
            A, B, s2 = decompose(self.method, W, st, self.opts)
            self._spectra[name] = s2
            self._full[name] = (A, B)
        return self._full[name]

    def spectrum(self, name: str) -> torch.Tensor:
        if name not in self._spectra:
            if self.entry.sliceable:
                self._decomposed(name)
                if not self.keep:                 # spectra only (allocation): one matrix at a time
                    del self._full[name]
            else:
                W, st = self._inputs(name)
                self._spectra[name] = torch.linalg.svdvals(whitened(self.method, W, st, self.opts)) ** 2
        return self._spectra[name]

    def at(self, name: str, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.weights[name].dtype
        if self.entry.sliceable:
            full = self._decomposed(name)
            if not self.keep:
                del self._full[name]
            return truncate(full, r, dtype)
        if (name, r) not in self._built:
            W, st = self._inputs(name)
            AB = factorize(self.method, W, st, r, opts=self.opts)
            if not self.keep:
                return AB
            self._built[(name, r)] = AB
        return self._built[(name, r)]

    __call__ = at      # a factor_fn(name, r) for fisvd.calibrate
