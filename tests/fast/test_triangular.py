"""Blocked triangular products (lunet.fast.triangular), the training path of an LU layer: its written-out
backward against finite differences and dense products, and gradients through frozen weights."""

import pytest
import torch

from lunet import LULinear


@pytest.mark.parametrize("blocked", [False, True], ids=["plain", "blocked"])
@pytest.mark.parametrize("n,depth", [(7, 0), (6, 1), (12, 2), (8, 3)])
def test_triangular_affine_backward_matches_finite_differences(n, depth, blocked):
    """The hand-written backward of the training path, against numerical gradients
    for the input, the packed triangles, the diagonal and the bias (float64),
    in its plain and its blocked form: halved while the halves are whole, down
    to leaves of width 3 (n = 12) or 1 (n = 8, whose leaves hold no strict triangle)."""
    from lunet.fast.triangular import TriangularAffine, block_depth

    leaf = 1 if blocked else 10**9
    assert block_depth(n, leaf) == (depth if blocked else 0)
    torch.manual_seed(0)
    layer = LULinear(n, init_scale=0.5).double()
    x = torch.randn(5, n, dtype=torch.float64, requires_grad=True)
    lu = layer.lu.detach().clone().requires_grad_()
    d = (torch.rand(n, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(n, dtype=torch.float64, requires_grad=True)
    masks = (layer.strict_lower_mask, layer.strict_upper_mask)
    a = (torch.eye(n, dtype=torch.float64) + lu.tril(-1)) @ (lu.triu(1) + torch.diag(d))
    assert torch.allclose(TriangularAffine.apply(x, lu, d, b, *masks, leaf), x @ a.T + b, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *args: TriangularAffine.apply(*args, *masks, leaf), (x, lu, d, b))
    # the diagonal of lu is not used (diag holds it): its gradient is exactly zero
    TriangularAffine.apply(x, lu, d, b, *masks, leaf).square().sum().backward()
    assert torch.all(lu.grad.diagonal() == 0)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    assert torch.all(lu.grad[off_diagonal] != 0)


def test_training_path_at_the_paper_width_matches_dense_products():
    """At width 784 the default blocking halves three times (leaves of 98, batched
    strided views of non-contiguous operands): output and every gradient match
    autograd through the dense masked triangles, in float64."""
    from lunet.fast.triangular import TriangularAffine, block_depth

    n = 784
    assert block_depth(n) == 3
    torch.manual_seed(0)
    layer = LULinear(n).double()
    x = torch.randn(n, 40, dtype=torch.float64).t().requires_grad_()  # column-major rows
    lu = layer.lu.detach().clone().requires_grad_()
    d = (torch.rand(n, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(n, dtype=torch.float64, requires_grad=True)
    masks = (layer.strict_lower_mask, layer.strict_upper_mask)
    weight = torch.randn(40, n, dtype=torch.float64)

    def grads(y):
        return torch.autograd.grad((y * weight).sum(), (x, lu, d, b))

    fast = TriangularAffine.apply(x, lu, d, b, *masks)
    a = (torch.eye(n, dtype=torch.float64) + lu * masks[0]) @ (lu * masks[1] + torch.diag(d))
    dense = x @ a.T + b
    assert torch.allclose(fast, dense, rtol=0, atol=1e-11)
    for got, want in zip(grads(fast), grads(dense)):
        assert torch.allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("rows", [1, 3])
def test_a_layer_with_frozen_weights_passes_gradients_to_its_input(rows):
    """Weights that need no gradient still pass gradients to the input, those of the
    trainable layer."""
    torch.manual_seed(0)
    layer = LULinear(640, init_scale=0.3)
    x = torch.randn(rows, 640, requires_grad=True)
    weights = torch.randn(rows, 640)
    (layer(x)[0] * weights).sum().backward()
    reference = x.grad.clone()
    x.grad = None
    layer.requires_grad_(False)
    (layer(x)[0] * weights).sum().backward()
    assert (x.grad - reference).abs().max() < 1e-5 * reference.abs().max()
