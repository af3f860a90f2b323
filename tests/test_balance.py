"""fisvd.balance: the product is kept, and each component's rescaling is the brute-force optimum."""
import numpy as np
import pytest
import torch

from fisvd.balance import balance
from fisvd.factorize import fwsvd


def test_balance_keeps_product_and_equalises_norms():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 4, generator=g, dtype=torch.float64) * torch.tensor([1e-3, 1.0, 50.0, 2.0], dtype=torch.float64)
    B = torch.randn(4, 9, generator=g, dtype=torch.float64) * torch.tensor([1e3, 1e-2, 1.0, 3.0], dtype=torch.float64)[:, None]
    A2, B2 = balance(A, B)
    torch.testing.assert_close(A2 @ B2, A @ B, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(A2.norm(dim=0), B2.norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(A2.norm(dim=0) ** 2, A.norm(dim=0) * B.norm(dim=1), rtol=1e-12, atol=0)


def test_balance_is_the_brute_force_optimum_per_component():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(7, 3, generator=g, dtype=torch.float64) * 1e-2
    B = torch.randn(3, 5, generator=g, dtype=torch.float64) * 30
    A2, B2 = balance(A, B)
    grid = np.logspace(-4, 4, 20001)
    for k in range(3):
        a, b = A[:, k].norm().item(), B[k].norm().item()
        best = (a ** 2 * grid ** 2 + b ** 2 / grid ** 2).min()      # ‖A_k g‖² + ‖B_k / g‖² over g
        got = A2[:, k].norm().item() ** 2 + B2[k].norm().item() ** 2
        assert got <= best * (1 + 1e-9) and got == pytest.approx(best, rel=1e-6)


def test_balance_leaves_zero_components_and_keeps_dtype():
    A = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    B = torch.tensor([[5.0, 1.0, 0.0], [8.0, 0.0, 0.0]])
    A2, B2 = balance(A, B)
    assert A2.dtype == torch.float32 and B2.dtype == torch.float32
    assert torch.equal(A2[:, 0], A[:, 0]) and torch.equal(B2[0], B[0])
    torch.testing.assert_close(A2 @ B2, A @ B)


def test_balance_fixes_fwsvd_scale_gap():
    """FWSVD with Fisher ~1e-7 gives factors ~1000x apart; balanced they are of one size."""
    g = torch.Generator().manual_seed(2)
    W = torch.randn(16, 24, generator=g) * 0.05
    F = torch.rand(16, 24, generator=g) * 1e-6
    A, B = fwsvd(W, F, 4)
    assert B.abs().mean() / A.abs().mean() > 100
    A2, B2 = balance(A, B)
    torch.testing.assert_close(A2 @ B2, A @ B, rtol=1e-4, atol=1e-6)
    assert 0.2 < (B2.abs().mean() / A2.abs().mean()).item() < 5


def test_balance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not multiply"):
        balance(torch.ones(3, 2), torch.ones(3, 4))
