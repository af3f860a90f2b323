"""Rank-r factorisations W ≈ A B (A: m×r, B: r×n) of a PyTorch weight W [out=m, in=n] (methods.md §4).

- `svd`:    W = U S Vᵀ, A = U_r S_r, B = V_rᵀ — Frobenius optimum (Eckart–Young).
- `fwsvd`:  c_j = Σ_i F_ij (column = input feature, summed over outputs), s_j = sqrt(max(c_j, ε·mean c)),
            ε = 1e-6; SVD of W diag(s) = U S Vᵀ, A = U_r S_r, B = V_rᵀ diag(1/s). Exact optimum of
            Σ_ij F_ij (W − AB)²_ij when F is constant down each column.
- `tfwsvd`: minimise Σ_ij F_ij (W − AB)²_ij by weighted alternating least squares from the FWSVD
            start: every row of A and column of B is an r×r ridge solve (λ = 1e-6 × mean Gram
            diagonal), batched (the Grams of many rows as one GEMM with a Khatri–Rao product);
            stops when the relative decrease < tol or after max_iters; returns the best iterate,
            so it never ends above FWSVD.

All functions are pure: tensors in, (A, B) out, in the dtype of W, on W's device.
"""
from __future__ import annotations

import torch

EPS = 1e-6


def fwsvd_scale(F: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-input-column scale s_j = sqrt(Σ_i F_ij), floored at sqrt(eps · mean c)."""
    c = F.double().sum(dim=0)
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


def tfwsvd(W: torch.Tensor, F: torch.Tensor, r: int, max_iters: int = 20, tol: float = 1e-4,
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


def factorize(method: str, W: torch.Tensor, F: torch.Tensor | None, r: int, **kw):
    """Dispatch by name: svd | fwsvd | tfwsvd."""
    if method == "svd":
        return svd(W, r)
    if F is None:
        raise ValueError(f"{method} needs a Fisher tensor")
    if method == "fwsvd":
        return fwsvd(W, F, r)
    if method == "tfwsvd":
        return tfwsvd(W, F, r, **kw)
    raise ValueError(f"unknown factorisation {method!r}; choose svd, fwsvd or tfwsvd")
