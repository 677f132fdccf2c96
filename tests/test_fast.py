"""lunet.fast: the kernels (blocked triangular products, the activation's fused passes,
FrozenAffine) against their definitions."""

import pytest
import torch

from lunet import LeakySoftplus, LULinear, functional
from lunet.fast.activation import negated_forward
from test_layers import DTYPES, rel_err, wide_inputs


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


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("alpha,width", [(0.1, 784), (0.01, 784), (0.5, 7), (0.1, 3)])
def test_inference_log_det_by_chunked_products_matches_the_sum_of_logs(dtype, tol, alpha, width):
    """Without gradients the log-det is taken from products of a few slopes; with
    every slope at its minimum a (inputs far left) the products must not underflow."""
    act = LeakySoftplus(alpha).to(dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([20 * torch.randn(64, width, generator=gen, dtype=torch.float64),
                   torch.full((1, width), -1e4, dtype=torch.float64)]).to(dtype)
    with torch.no_grad():
        _, fast = act(x)
    _, reference = act(x.clone().requires_grad_())
    exact = torch.log(alpha + (1 - alpha) * torch.sigmoid(x.double())).sum(1)
    assert torch.isfinite(fast).all()
    assert ((fast.double() - exact).abs() / exact.abs().clamp_min(1)).max() < tol
    assert ((reference.double() - exact).abs() / exact.abs().clamp_min(1)).max() < tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.5])
def test_negated_inference_activation_matches_definition_within_its_range(dtype, alpha):
    """The density pass's activation: ``-g(-u)`` from one sigmoid of ``u``, exact to a few
    ulps of ``max(|g|, 1)`` wherever it says so, and saying so nowhere else."""
    x = wide_inputs(dtype)
    x = x[(x <= 80).all(dim=1)]  # sigmoid(-x) stays normal in both dtypes
    u = -x
    out, scratch = torch.empty_like(u), torch.empty_like(u)
    logdet, in_range = negated_forward(u, alpha, out, scratch)
    c = alpha / (1 - alpha)
    x64 = x.double()
    g = torch.nn.functional.softplus(x64, threshold=50) + c * x64
    ref_ld = torch.log(torch.sigmoid(x64) + c).sum(1)
    assert bool(in_range)
    assert rel_err(-out.double(), g) <= 8 * torch.finfo(dtype).eps
    assert rel_err(logdet.double(), ref_ld) <= 64 * torch.finfo(dtype).eps
    beyond = torch.full((2, 8), 1.0, dtype=dtype)
    beyond[1, 3] = 100.0 if dtype == torch.float32 else 750.0  # sigmoid(-x) is no longer normal
    flags = [negated_forward(-row[None], alpha, *torch.empty(2, 1, 8, dtype=dtype))[1] for row in beyond]
    assert [bool(f) for f in flags] == [True, False]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.5])
def test_fixed_slope_activation_gradients_match_the_definition(dtype, alpha):
    """The training path's written-out backward (value and log-det together, a fixed
    slope) against autograd through the definition in float64, over both branches
    and large magnitudes; and against finite differences (gradcheck)."""
    act = LeakySoftplus(alpha).to(dtype)
    x = wide_inputs(dtype).requires_grad_()
    gen = torch.Generator().manual_seed(0)
    g_value = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    g_logdet = torch.randn(x.shape[0], generator=gen, dtype=torch.float64)
    value, logdet = act(x)
    (got,) = torch.autograd.grad((value, logdet), x, (g_value.to(dtype), g_logdet.to(dtype)))
    x64 = x.detach().double().requires_grad_()
    ref_value = alpha * x64 + (1 - alpha) * torch.nn.functional.softplus(x64, threshold=50)
    ref_logdet = torch.log(alpha + (1 - alpha) * torch.sigmoid(x64)).sum(1)
    (want,) = torch.autograd.grad((ref_value, ref_logdet), x64, (g_value, g_logdet))
    assert rel_err(got.double(), want) <= 16 * torch.finfo(dtype).eps
    if dtype == torch.float64:
        small = (6 * torch.randn(3, 5, generator=gen, dtype=dtype)).requires_grad_()
        assert torch.autograd.gradcheck(lambda v: act(v), (small,))


@pytest.mark.parametrize("dtype,width", [(torch.float32, 768), (torch.float64, 512), (torch.float32, 769)])
@pytest.mark.parametrize("rows", [1, 5, 127, 128])
@pytest.mark.parametrize("into_out", [False, True], ids=["new", "out"])
def test_frozen_affine_map_is_the_affine_map_split_or_not(dtype, width, rows, into_out, two_threads, monkeypatch):
    """Below SPLIT_BELOW_ROWS rows a matrix over SPLIT_MIN_BYTES is split by output
    columns (not at a prime width: nothing divides it); every form gives ``h W + b``."""
    from lunet.fast.affine import SPLIT_BELOW_ROWS, FrozenAffine, as_frozen_affine_weight

    split_calls = []
    baddbmm = torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: split_calls.append(1) or baddbmm(*a, **k))
    gen = torch.Generator().manual_seed(rows)
    w64 = torch.randn(width, width, generator=gen, dtype=torch.float64) / width**0.5
    b64 = torch.randn(width, generator=gen, dtype=torch.float64)
    h64 = torch.randn(rows, width, generator=gen, dtype=torch.float64)
    out = torch.full((rows, width), float("nan"), dtype=dtype) if into_out else None
    layer = FrozenAffine(as_frozen_affine_weight(w64, dtype), b64.to(dtype))
    exact = h64.to(dtype).double() @ w64.to(dtype).double() + b64.to(dtype).double()
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    # twice: the second call reuses the views of the split made by the first
    for _ in range(2):
        split_calls.clear()
        with torch.no_grad():
            y = layer(h64.to(dtype), out=out)
        assert bool(split_calls) == (rows < SPLIT_BELOW_ROWS and width % 2 == 0)
        if into_out:
            assert y is out
        assert y.shape == (rows, width) and y.dtype == dtype
        assert (y.double() - exact).abs().max() < tol * exact.abs().max()


def test_frozen_affine_map_follows_the_thread_count(two_threads):
    """The split's views are kept between calls; a new thread count gives new shares
    (768 columns: 2 and 3 threads divide them), and every count the same map."""
    from lunet.fast.affine import FrozenAffine, as_frozen_affine_weight

    gen = torch.Generator().manual_seed(1)
    w64 = torch.randn(768, 768, generator=gen, dtype=torch.float64) / 768**0.5
    b64 = torch.randn(768, generator=gen, dtype=torch.float64)
    h64 = torch.randn(2, 768, generator=gen, dtype=torch.float64)
    layer = FrozenAffine(as_frozen_affine_weight(w64, torch.float32), b64.float())
    exact = h64.float().double() @ w64.float().double() + b64.float().double()
    shares = []
    for threads in (2, 3, 1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            y = layer(h64.float())
        shares.append(layer._split[0])
        assert (y.double() - exact).abs().max() < 1e-5 * exact.abs().max()
    assert shares == [2, 3, 3, 2]  # one thread adds no split and keeps the last views


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


@pytest.mark.parametrize("slope_shape", [(), (4,)], ids=["one-slope", "slope-per-feature"])
def test_the_learned_slope_pass_has_the_definitions_values_and_gradients(slope_shape):
    from lunet.fast.activation import LearnedAlphaForward

    torch.manual_seed(0)
    x = (3 * torch.randn(6, 4, dtype=torch.float64)).requires_grad_()
    a = (0.1 + 0.8 * torch.rand(slope_shape, dtype=torch.float64)).requires_grad_()
    value, logdet = LearnedAlphaForward.apply(x, a)
    torch.testing.assert_close(value, functional.leaky_softplus(x, a))
    torch.testing.assert_close(logdet, functional.leaky_softplus_log_derivative(x, a).sum(dim=1))
    assert torch.autograd.gradcheck(LearnedAlphaForward.apply, (x, a))
