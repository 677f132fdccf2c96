"""Second derivatives and ``torch.func`` transforms of every piece, both directions, against the
same maps written with plain differentiable ops (masked ``L`` and ``U``, softplus, triangular
solves): Hessians, double backward, ``jacrev``, ``jacfwd``, ``vmap``, ``grad``, ``functional_call``,
forward-mode AD, in float32 and float64, for leading shapes ``()``, ``(5,)``, ``(2, 3)``.

The reference inverse of the activation takes four plain Newton steps from the detached root:
each step makes one more order of derivative exact, so its Hessians are exact too.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

from lunet import Inverse, LeakySoftplus, LULinear, LUNet, Sequential, Standardize
from lunet.functional import leaky_softplus_inverse

# torch's forward-mode AD loads its decompositions through torch.jit.script, which warns that it is deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

D = 3
LEADING = [(), (5,), (2, 3)]
DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: 1e-9, torch.float32: 2e-3}


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return module


def _lunet(**kw) -> LUNet:
    torch.manual_seed(0)
    net = LUNet(D, 3, init_scale=0.5, **kw)
    net.standardize(torch.randn(200, D) * 2 + 1)
    return _perturbed(net, 1)


PIECES = {
    "LULinear-raw": lambda: _perturbed(LULinear(D, diag="raw"), 2),
    "LULinear-exp": lambda: _perturbed(LULinear(D, diag="exp"), 3),
    "LeakySoftplus-fixed": lambda: LeakySoftplus(0.1),
    "LeakySoftplus-learned": lambda: _perturbed(LeakySoftplus(0.3, learn_alpha=True), 4),
    "LeakySoftplus-learned-groups": lambda: _perturbed(LeakySoftplus(0.3, learn_alpha=True, groups=D), 5),
    "Standardize": lambda: Standardize(D).fit(torch.randn(100, D) * 3 + 2),
    "Sequential": lambda: Sequential(_perturbed(LULinear(D), 6), LeakySoftplus(0.2), _perturbed(LULinear(D), 7)),
    "LUNet-fixed-exp": _lunet,
    "LUNet-learned-raw": lambda: _lunet(learn_alpha=True, diag="raw"),
    "Inverse-LUNet": lambda: Inverse(_lunet()),
}
PIECE = pytest.mark.parametrize("name", list(PIECES))
WEIGHTED = pytest.mark.parametrize("name", [n for n in PIECES if n not in ("LeakySoftplus-fixed", "Standardize")])
DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
DIRECTION = pytest.mark.parametrize("direction", ["forward", "inverse"])


def make(name: str, dtype: torch.dtype) -> torch.nn.Module:
    return PIECES[name]().to(dtype)


def inputs(leading: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(*leading, D, generator=gen, dtype=torch.float64)).to(dtype)


# -- the plain-op reference ------------------------------------------------------------------
def plain_forward(m, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``m(x)`` by plain differentiable ops."""
    if isinstance(m, LULinear):
        eye = torch.eye(m.features, dtype=x.dtype)
        weight = (m.lu * m.strict_lower_mask + eye) @ (m.lu * m.strict_upper_mask + torch.diag(m.diagonal_u()))
        return x @ weight.t() + m.bias, m.diagonal_u().abs().log().sum().expand(x.shape[:-1])
    if isinstance(m, LeakySoftplus):
        a = _alphas(m, x)
        value = a * x + (1 - a) * torch.nn.functional.softplus(x)
        return value, torch.log(a + (1 - a) * torch.sigmoid(x)).sum(-1)
    if isinstance(m, Standardize):
        return (x - m.mean) / m.std, -m.std.log().sum().expand(x.shape[:-1])
    if isinstance(m, Inverse):
        return plain_inverse(m.transform, x)
    logdet = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for part in m:  # Sequential, LUNet
        x, ld = plain_forward(part, x)
        logdet = logdet + ld
    return x, logdet


def plain_inverse(m, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``m.inverse(y)`` by plain differentiable ops."""
    if isinstance(m, LULinear):
        eye = torch.eye(m.features, dtype=y.dtype)
        lower = m.lu * m.strict_lower_mask + eye
        upper = m.lu * m.strict_upper_mask + torch.diag(m.diagonal_u())
        rows = (y - m.bias).reshape(-1, m.features)  # the solves take matrices
        h = torch.linalg.solve_triangular(lower.t(), rows, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.t(), h, upper=False, left=False).reshape(y.shape)
        return x, -plain_forward(m, y)[1]
    if isinstance(m, LeakySoftplus):
        a = _alphas(m, y)
        x = m.inverse(y)[0].detach()
        for _ in range(4):
            x = x - (a * x + (1 - a) * torch.nn.functional.softplus(x) - y) / (a + (1 - a) * torch.sigmoid(x))
        return x, -plain_forward(m, x)[1]
    if isinstance(m, Standardize):
        return y * m.std + m.mean, m.std.log().sum().expand(y.shape[:-1])
    if isinstance(m, Inverse):
        return plain_forward(m.transform, y)
    logdet = torch.zeros(y.shape[:-1], dtype=y.dtype)
    for part in reversed(list(m)):
        y, ld = plain_inverse(part, y)
        logdet = logdet + ld
    return y, logdet


def _alphas(m: LeakySoftplus, like: torch.Tensor) -> torch.Tensor:
    a = m.alpha.to(like.dtype)
    return a.repeat_interleave(like.shape[-1] // a.numel()) if a.dim() else a


def passes(m, direction: str):
    """The piece's pass in ``direction`` and its plain-op reference."""
    if direction == "forward":
        return m, lambda v: plain_forward(m, v)
    return m.inverse, lambda v: plain_inverse(m, v)


def log_density(pass_):
    """``sum over rows of log N(out; 0, I) + log|det|``, a scalar function of the input."""
    def f(v):
        out, logdet = pass_(v)
        return (-0.5 * out.square().sum(-1) + logdet).sum()
    return f


def start(m, direction: str, leading, dtype) -> torch.Tensor:
    """An input of the pass: data for the data -> latent direction, the image of data for the
    other (draws of a standard normal land far out in the data, where rounding grows)."""
    x = inputs(leading, dtype)
    to_latent = m.inverse if isinstance(m, Inverse) else m
    return x if (direction == "forward") != isinstance(m, Inverse) else to_latent(x)[0].detach()


def close(actual, expected, dtype, scale: float = 1.0) -> None:
    tol = TOL[dtype] * scale
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol)


# -- second derivatives ---------------------------------------------------------------------
def test_the_hessian_of_an_lu_layer_is_minus_a_transpose_a():
    layer = LULinear(2).double()
    x = torch.randn(2, dtype=torch.float64)
    lp = lambda v: -0.5 * layer(v)[0].square().sum() + layer(v)[1]  # noqa: E731
    a = layer.weight().detach()
    torch.testing.assert_close(hessian(lp, x), -a.t() @ a, rtol=1e-12, atol=1e-12)


@PIECE
@DTYPE
@DIRECTION
@pytest.mark.parametrize("leading", LEADING, ids=str)
def test_hessians_match_plain_ops(name, dtype, direction, leading):
    """One row by a double backward per input entry; several rows with ``vectorize=True``, which
    batches the double backward with ``vmap``."""
    m = make(name, dtype)
    pass_, reference = passes(m, direction)
    v = start(m, direction, leading, dtype)
    got = hessian(log_density(pass_), v, vectorize=leading != ())
    close(got, hessian(log_density(reference), v, vectorize=True), dtype, scale=10)


@PIECE
@DTYPE
@DIRECTION
def test_double_backward_reaches_the_input_and_the_weights(name, dtype, direction):
    """A gradient penalty: the gradient of ``|d log p / dx|^2`` to the input and to every weight."""
    m = make(name, dtype)
    pass_, reference = passes(m, direction)
    v = start(m, direction, (4,), dtype).requires_grad_()
    weights = [p for p in m.parameters() if p.requires_grad]

    def penalty_grads(f):
        (g,) = torch.autograd.grad(log_density(f)(v), v, create_graph=True)
        return torch.autograd.grad(g.square().sum(), [v, *weights])

    for got, want in zip(penalty_grads(pass_), penalty_grads(reference)):
        close(got, want, dtype, scale=10)


@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned"])
def test_the_activation_inverse_has_the_implicit_second_derivatives(learned):
    """``(f^{-1})'' = -f''(x) / f'(x)^3`` elementwise, and the mixed derivatives by the slope, by
    torch's gradgradcheck (finite differences of the analytic gradients)."""
    y = torch.linspace(-4.0, 6.0, 7, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.2, dtype=torch.float64, requires_grad=learned)
    x = leaky_softplus_inverse(y, a if learned else 0.2)
    (dx,) = torch.autograd.grad(x.sum(), y, create_graph=True)
    (d2x,) = torch.autograd.grad(dx.sum(), y)
    s = torch.sigmoid(x.detach())
    slope = 0.2 + 0.8 * s
    torch.testing.assert_close(dx.detach(), 1 / slope, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d2x, -0.8 * s * (1 - s) / slope**3, rtol=1e-10, atol=1e-12)
    if learned:
        assert torch.autograd.gradgradcheck(leaky_softplus_inverse, (y.detach().requires_grad_(), a))


# -- torch.func ------------------------------------------------------------------------------
@PIECE
@DTYPE
@DIRECTION
@pytest.mark.parametrize("transform", [jacrev, jacfwd])
def test_jacobians_by_torch_func_match_plain_ops(name, dtype, direction, transform):
    m = make(name, dtype)
    pass_, reference = passes(m, direction)
    v = start(m, direction, (), dtype)
    close(transform(lambda u: pass_(u)[0])(v), jacobian(lambda u: reference(u)[0], v), dtype)
    close(transform(lambda u: pass_(u)[1])(v), jacobian(lambda u: reference(u)[1], v), dtype, scale=10)


@PIECE
@DTYPE
@DIRECTION
@pytest.mark.parametrize("leading", [(5,), (2, 3)], ids=str)
def test_vmap_is_the_batched_call(name, dtype, direction, leading):
    m = make(name, dtype)
    pass_ = m if direction == "forward" else m.inverse
    v = start(m, direction, leading, dtype)
    mapped = pass_
    for _ in leading:
        mapped = vmap(mapped)
    for got, want in zip(mapped(v), pass_(v)):
        close(got, want, dtype)


@PIECE
@DTYPE
def test_torch_func_hessian_and_grad_of_the_log_density(name, dtype):
    m = make(name, dtype)
    x = inputs((), dtype)
    f, reference = log_density(m), log_density(lambda v: plain_forward(m, v))
    close(torch.func.hessian(f)(x), hessian(reference, x), dtype, scale=10)
    close(grad(f)(x), torch.autograd.grad(reference(x.requires_grad_()), x)[0], dtype)


@WEIGHTED
@DTYPE
@DIRECTION
def test_grad_through_functional_call_reaches_every_weight(name, dtype, direction):
    m = make(name, dtype)
    v = start(m, direction, (4,), dtype)
    weights = {k: p.detach() for k, p in m.named_parameters() if p.requires_grad}
    method = "forward" if direction == "forward" else "inverse"

    def loss(params):
        out, logdet = functional_call(m, params, (v,), {}) if method == "forward" else _call(m, params, v)
        return (-0.5 * out.square().sum(-1) + logdet).sum()

    got = grad(loss)(weights)
    reference = log_density(passes(m, direction)[1])(v)
    want = dict(zip(weights, torch.autograd.grad(reference, [dict(m.named_parameters())[k] for k in weights])))
    for k in weights:
        close(got[k], want[k], dtype)


def _call(m, params, v):
    """``m.inverse(v)`` with ``params`` swapped in, as ``functional_call`` does for ``forward``."""
    with torch.nn.utils.stateless._reparametrize_module(m, params):
        return m.inverse(v)


@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned"])
def test_log_prob_sample_and_rsample_under_torch_func(learned):
    flow = _lunet(learn_alpha=learned).double()
    x = inputs((5,), torch.float64)
    torch.testing.assert_close(vmap(flow.log_prob)(x), flow.log_prob(x), rtol=1e-12, atol=1e-12)
    dist = flow.distribution()
    torch.testing.assert_close(vmap(dist.log_prob)(x), flow.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad(lambda v: dist.log_prob(v))(x[0]), grad(flow.log_prob)(x[0]))
    draws = vmap(lambda _: flow.sample(2), randomness="different")(torch.arange(4))
    assert draws.shape == (4, 2, D) and (draws[0] - draws[1]).abs().max() > 0

    class Draws(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flow = flow

        def forward(self, seed: int) -> torch.Tensor:
            return self.flow.rsample(6, generator=torch.Generator().manual_seed(seed))

    draws_module = Draws()
    params = {k: p.detach() for k, p in draws_module.named_parameters()}
    got = grad(lambda p: functional_call(draws_module, p, (3,)).square().sum())(params)
    want = torch.autograd.grad(draws_module(3).square().sum(), list(draws_module.parameters()))
    for g, w in zip(got.values(), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_jacobians_batched_by_autograd_and_forward_mode():
    """``jacobian(vectorize=True)`` runs the written-out backwards under vmap; forward-mode AD
    (dual tensors) runs the passes without torch.func."""
    import torch.autograd.forward_ad as fwad

    flow = _lunet(learn_alpha=True).double()
    x = inputs((), torch.float64)
    want = jacobian(lambda v: plain_forward(flow, v)[0], x)
    torch.testing.assert_close(jacobian(lambda v: flow(v)[0], x, vectorize=True), want)
    tangent = inputs((), torch.float64, seed=1)
    z = flow(x)[0].detach()
    with fwad.dual_level():
        forward_tangent = fwad.unpack_dual(flow(fwad.make_dual(x, tangent))[0]).tangent
        inverse_tangent = fwad.unpack_dual(flow.inverse(fwad.make_dual(z, tangent))[0]).tangent
    torch.testing.assert_close(forward_tangent, want @ tangent)
    torch.testing.assert_close(inverse_tangent, torch.linalg.solve(want, tangent))


def test_a_frozen_flow_maps_under_vmap_and_refuses_derivatives():
    flow = _lunet().double()
    frozen = flow.frozen()
    x = inputs((5,), torch.float64)
    torch.testing.assert_close(vmap(frozen.log_prob)(x), flow.log_prob(x), rtol=1e-10, atol=1e-10)
    z = flow(x)[0].detach()
    torch.testing.assert_close(vmap(lambda v: frozen.inverse(v)[0])(z), x, rtol=1e-10, atol=1e-10)
    for transform in (grad, jacrev, jacfwd):
        with pytest.raises(RuntimeError, match="frozen flow.*without autograd"):
            transform(frozen.log_prob)(x[0])
    seq = make("Sequential", torch.float64)
    frozen_seq = seq.frozen()
    for got, want in zip(vmap(frozen_seq)(x), seq(x)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    with pytest.raises(RuntimeError, match="frozen flow.*without autograd"):
        grad(lambda v: frozen_seq(v)[1])(x[0])


def test_vmap_over_a_batch_of_learned_slopes_is_refused_by_the_inverse():
    """Model ensembling (stacked weights) works for the density; the exact inverse needs one slope's value."""
    flows = [_lunet(learn_alpha=True).double() for _ in range(2)]
    params, buffers = torch.func.stack_module_state(flows)
    x = inputs((4,), torch.float64)
    density = vmap(lambda p, b: functional_call(flows[0], (p, b), (x,))[1])(params, buffers)
    assert density.shape == (2, 4)
    with pytest.raises(ValueError, match="vmap over a batch of learned slopes"):
        vmap(lambda p, b: _call(flows[0], {**p, **b}, x))(params, buffers)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_jit_trace_of_both_directions(direction):
    flow = _lunet().double()
    module = flow if direction == "forward" else Inverse(flow)
    x = inputs((4,), torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python control flow on shapes
        traced = torch.jit.trace(module, x, check_trace=False)
    for got, want in zip(traced(2 * x), module(2 * x)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
