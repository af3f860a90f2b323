"""Product-preserving rescaling of low-rank factors before they are trained (the recover stage).

A factorisation W ≈ A B is only defined up to a diagonal D: (A D)(D⁻¹ B) is the same matrix. The
factorisations leave that choice unbalanced. FWSVD returns A = U S of the column-scaled matrix W diag(s)
and B = Vᵀ diag(s)⁻¹ with s_j = sqrt(mean_i F_ij); Fisher entries are ~1e-7, so s ~ 3e-4 and B's
entries are thousands of times A's. Adam moves every weight by about the learning rate per step whatever its
magnitude, so training such factors perturbs A by a large fraction of itself and barely moves B.

`balance(A, B)` picks, per rank component k, the g_k that minimises ‖A_k g_k‖² + ‖B_k / g_k‖²
(A_k: column k of A, B_k: row k of B): g_k² = ‖B_k‖ / ‖A_k‖, after which both norms equal
sqrt(‖A_k‖ ‖B_k‖). A B is unchanged (up to rounding); components with a zero factor are left as they are.
"""
from __future__ import annotations

import torch


def balance(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A diag(g), diag(g)⁻¹ B) with g_k = sqrt(‖B[k,:]‖ / ‖A[:,k]‖); A: [out, r], B: [r, in]."""
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"factor shapes {tuple(A.shape)} and {tuple(B.shape)} do not multiply")
    a, b = A.double().norm(dim=0), B.double().norm(dim=1)
    ok = (a > 0) & (b > 0)
    g = torch.where(ok, torch.sqrt(b / torch.where(ok, a, torch.ones_like(a))), torch.ones_like(a))
    return (A.double() * g[None, :]).to(A.dtype), (B.double() / g[:, None]).to(B.dtype)
